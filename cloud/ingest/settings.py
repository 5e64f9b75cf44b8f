"""Ingest settings: every field has a default and an IOC_INGEST_ environment variable."""

from __future__ import annotations

import socket

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_instance() -> str:
    """Stable across restarts (the broker keeps our queued messages under it); give every process on
    one host its own --instance."""
    return f"ingest-{socket.gethostname()}"


class IngestSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IOC_INGEST_", extra="forbid")

    dsn: str = Field(description="PostgreSQL/TimescaleDB connection string")
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    mqtt_username: str | None = None
    mqtt_password: str | None = Field(default=None, repr=False)
    instance: str = Field(
        default_factory=_default_instance,
        description="MQTT client id and stats key. Keep it stable across restarts: the broker keeps the "
        "persistent session (and the unacknowledged messages) under this id.",
    )
    share_group: str = Field(
        default="",
        description="MQTT 5 $share group so several ingest processes split the load. Empty (the default): a "
        "plain subscription for one process. Mosquitto 2.0 does not restore $share subscriptions after a "
        "broker restart, so messages sent before ingest reconnects are lost there: use a group only on a broker "
        "that keeps them (EMQX, HiveMQ), see docs/operations.md.",
    )
    session_expiry_s: int = Field(default=7 * 24 * 3600, description="how long the broker queues for us while away")
    receive_maximum: int = Field(default=20000, ge=1, le=65535,
                                 description="unacknowledged messages in flight, as asked of the broker")
    max_in_flight: int | None = Field(default=None, ge=1, description="ingest stops reading the socket at this "
                                      "many unacknowledged messages (brokers may ignore Receive Maximum); "
                                      "None: receive_maximum")
    keepalive_s: int = Field(
        default=30, ge=5, le=3600,
        description="MQTT keepalive; a PINGRESP later than this drops the connection (all in flight is sent again). "
        "Mosquitto before 2.0.13 queues a session's whole backlog ahead of its replies: where ingest may fall "
        "more than this behind on such a broker, raise it (docs/operations.md)",
    )
    writers: int = Field(default=2, ge=1, le=16,
                         description="database connections committing batches in parallel; acks stay in order")
    batch_max_messages: int = Field(default=4000, ge=1, description="flush a batch at this many messages")
    batch_max_delay_s: float = Field(default=0.2, gt=0, description="...or when the oldest waited this long")
    max_payload_bytes: int = Field(default=256 * 1024, description="larger payloads go to dead letters")
    max_future_s: float = Field(default=300, description="samples further ahead than this are a clock fault")
    max_age_days: float = Field(default=90, description="samples older than retention are rejected")
    watermark: bool = Field(default=True, description="publish each device's committed (boot_id, seq) on ack/v1/{id}, "
                            "so devices forget a reading only once the database has it")
    watermark_interval_s: float = Field(default=1.0, gt=0, description="at most one watermark per device this often")
    watermark_max_rate: float = Field(
        default=2000.0, gt=0,
        description="watermark publishes a second at most, all devices together: with more devices waiting than "
        "this allows, each one's interval stretches to waiting/rate seconds (oldest first), which must stay well "
        "under the devices' outbox.resend_after_s (15 s): 10,000 busy devices wait about 5 s at the default",
    )
    silent_after_heartbeats: int = Field(default=3, ge=1, description="an online device heard of for this many "
                                         "heartbeat periods is marked silent (device_status.silent_since)")
    stats_interval_s: float = Field(default=5.0, gt=0)
    maintenance_interval_s: float = Field(default=15.0, gt=0)
    retry_max_delay_s: float = Field(default=10.0, gt=0)
