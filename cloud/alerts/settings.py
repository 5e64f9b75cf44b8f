"""Evaluator settings: every field has a default and an IOC_ALERTS_ environment variable."""

from __future__ import annotations

import socket
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_RULES = Path(__file__).resolve().parent / "rules"


class AlertSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IOC_ALERTS_", extra="forbid")

    dsn: str = Field(description="PostgreSQL/TimescaleDB connection string")
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    mqtt_username: str | None = None
    mqtt_password: SecretStr | None = None
    instance: str = Field(default_factory=lambda: f"alerts-{socket.gethostname()}",
                          description="MQTT client id and row in alert_evaluators; unique per process")
    rules_dir: Path = Field(default=DEFAULT_RULES, description="folder of rule *.yaml files, reloaded on change")
    interval_s: float = Field(default=1.0, gt=0, description="pause between evaluation cycles")
    standby_poll_s: float = Field(default=1.0, gt=0, description="how often a standby tries to take the lock")
    lock_id: int = Field(default=0x10C_A1A2, description="PostgreSQL advisory lock: one active evaluator")
    webhooks: list[str] = Field(default_factory=list, description="URLs every transition is POSTed to (JSON list)")
    webhook_secret: SecretStr | None = Field(default=None, description="HMAC-SHA256 key for X-IOC-Signature")
    webhook_timeout_s: float = Field(default=5.0, gt=0)
    webhook_attempts: int = Field(default=6, ge=1, description="tries per delivery before giving up")
    webhook_backoff_s: float = Field(default=0.5, gt=0, description="first retry delay, doubled each time")
    webhook_backoff_max_s: float = Field(default=30.0, gt=0)
