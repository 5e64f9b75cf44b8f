"""Alarms: rules as YAML, a set-based evaluator with one active process, MQTT and webhook notifications."""
