"""Edge runtime for field boxes: sensors or video analytics -> SQLite outbox -> one MQTT 5 session.

Start at `edge.agent` (the runtime and the Source plugin API), `edge.config` (the device file) and
`edge/sample-device.yaml`. Nothing here imports `cloud`.
"""
