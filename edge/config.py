"""Device configuration: the local YAML file every box boots from, checked once at the boundary.

Two layers, because only one of them may change at run time:

* `DeviceConfig` (the file, `edge/sample-device.yaml`): identity, broker, credentials, outbox bounds,
  sensor wiring. Changing it needs a restart.
* `Settings` (`DeviceConfig.settings`): what the cloud may steer remotely through the retained
  `cfg/v1/{device_id}/desired` topic -- per-metric intervals, aggregation and thresholds, heartbeat
  period, backlog drain rate and order. A desired config replaces `Settings` as a whole, so what the
  device reports is exactly what it runs.

Everything is validated against the device profile from `firmware-config/` (`check_settings`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from contract.messages import DeviceId
from contract.profiles import DeviceProfile
from contract.topics import check_segment
from contract.twin import (  # the settings models live in the contract; re-exported for edge code
    HEALTH_STREAM,
    ConfigError,
    DrainSettings,
    MetricSettings,
    Settings,
    check_settings,
)
from edge.sensors.config import SensorConfig

__all__ = ["HEALTH_STREAM", "ConfigError", "DeviceConfig", "DrainSettings", "MetricSettings", "Settings",
           "check_settings", "load_config", "validate_for_profile"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TlsConfig(_Strict):
    ca_file: Path | None = Field(default=None, description="CA bundle; None = system trust store")
    cert_file: Path | None = Field(default=None, description="client certificate (mutual TLS)")
    key_file: Path | None = Field(default=None, description="client private key (mutual TLS)")
    insecure: bool = Field(default=False, description="skip hostname check; lab use only")


class BrokerConfig(_Strict):
    host: str = Field(default="127.0.0.1", description="MQTT broker host")
    port: int = Field(default=1883, ge=1, le=65535)
    tls: TlsConfig | None = Field(default=None, description="TLS when set (usually port 8883)")
    username: str | None = Field(default=None, description="defaults to the device id when a password is set")
    password: SecretStr | None = Field(default=None, description="never logged")
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    backoff_min_s: float = Field(default=0.5, gt=0, description="first reconnect delay")
    backoff_max_s: float = Field(default=30.0, gt=0, description="cap of the jittered exponential backoff")
    inflight_window: int = Field(
        default=16,
        ge=1,
        le=1000,
        description="unacknowledged QoS 1 messages handed to paho at once; the outbox is the queue",
    )

    @model_validator(mode="after")
    def _backoff_is_ordered(self) -> BrokerConfig:
        if self.backoff_min_s > self.backoff_max_s:
            raise ValueError("backoff_min_s must not exceed backoff_max_s")
        return self


class OutboxConfig(_Strict):
    path: Path = Field(default=Path("outbox.sqlite3"), description="SQLite file (WAL mode)")
    max_bytes: int = Field(default=256 * 1024 * 1024, ge=1024, description="bound on stored payload bytes")
    max_age_s: float = Field(default=30 * 86400, gt=0, description="rows older than this are dropped")
    sync: Literal["full", "normal"] = Field(
        default="full",
        description="full survives power loss; normal only a process crash",
    )
    forget_on: Literal["watermark", "puback"] = Field(
        default="watermark",
        description="watermark: keep a row until ingest's ack/v1 watermark says the database has it (survives "
        "a broker crash); puback: forget it on the broker's PUBACK (a broker without watermarking ingest)",
    )
    resend_after_s: float = Field(
        default=15.0, gt=0,
        description="rows the broker acknowledged but no watermark covered are sent again after this",
    )
    resend_max_s: float = Field(
        default=600.0, gt=0,
        description="the longest wait between probes of rows above every covered seq while no watermark makes "
        "progress (the wait doubles from resend_after_s)",
    )


class DeviceConfig(_Strict):
    device_id: DeviceId
    site: str = Field(description="site id, a topic segment")
    profile: str = Field(description="device profile name from firmware-config/profiles")
    firmware: str = Field(default="edge-0.1.0", description="reported in the birth message")
    broker: BrokerConfig = Field(default_factory=BrokerConfig)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    sensors: list[SensorConfig] = Field(default_factory=list, description="drivers feeding the sampler")
    settings: Settings = Field(default_factory=Settings)
    config_version: int = Field(default=0, ge=0, description="version of `settings` in this file")

    @model_validator(mode="after")
    def _ids_are_topic_safe(self) -> DeviceConfig:
        check_segment(self.device_id, "device_id")
        check_segment(self.site, "site")
        return self


def check_sensors(config: DeviceConfig, profile: DeviceProfile) -> None:
    """Every metric a sensor provides must exist in the profile and be provided only once."""
    seen: dict[str, int] = {}
    for i, sensor in enumerate(config.sensors):
        for metric in sensor.provided_metrics(profile):
            spec = profile.metrics.get(metric)
            if spec is None or spec.stream == HEALTH_STREAM:
                raise ConfigError(f"sensors[{i}]: metric {metric!r} is not a sensor metric of the profile")
            if metric in seen:
                raise ConfigError(
                    f"sensors[{i}]: metric {metric!r} already provided by sensors[{seen[metric]}]"
                )
            seen[metric] = i


def validate_for_profile(config: DeviceConfig, profile: DeviceProfile) -> DeviceConfig:
    if config.profile != profile.profile:
        raise ConfigError(f"config names profile {config.profile!r}, got {profile.profile!r}")
    check_settings(config.settings, profile)
    check_sensors(config, profile)
    return config


DeviceConfigT = TypeVar("DeviceConfigT", bound=DeviceConfig)


def load_config(path: Path, model: type[DeviceConfigT] = DeviceConfig) -> DeviceConfigT:  # type: ignore[assignment]
    """Read and validate a device YAML file; relative outbox paths resolve beside the file.

    `model` is a `DeviceConfig` subclass for boxes with more to configure (the camera box's
    `edge.camera.box.CameraBoxConfig`)."""
    with path.open(encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    config = model.model_validate(data)
    if not config.outbox.path.is_absolute():
        outbox = config.outbox.model_copy(update={"path": path.parent / config.outbox.path})
        config = config.model_copy(update={"outbox": outbox})
    return config


Version = Annotated[int, Field(ge=0)]
