"""The device twin on the wire: the remotely steerable settings, desired and reported config (the command
reply model lives in contract.messages and is re-exported here).

Moved here from `edge/` so the cloud (registry API) validates a desired config with exactly the code the
device runs (`parse_desired`, `check_settings`) without importing the edge package.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from contract.messages import CommandReply, DeviceId, EpochMs, SchemaVersion
from contract.profiles import DeviceProfile

__all__ = ["CommandReply"]  # re-exported: callers import the twin's models from one place

HEALTH_STREAM = "health"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DrainSettings(_Strict):
    """How a backlog leaves after an outage; live rows always go first."""

    messages_per_s: float = Field(default=20.0, gt=0, le=10_000, description="backlog messages per second")
    batch_size: int = Field(default=500, ge=1, le=5000, description="rows (samples) per backlog message")
    order: Literal["oldest", "newest"] = Field(default="oldest", description="which end of the backlog first")


class MetricSettings(_Strict):
    enabled: bool = True
    interval_s: float | None = Field(
        default=None,
        ge=0.05,
        le=86400,
        description="reporting interval; None = the profile's",
    )
    reads_per_interval: int = Field(
        default=1, ge=1, le=600, description="sensor reads aggregated per interval"
    )
    aggregate: Literal["mean", "min", "max", "last"] = Field(
        default="mean",
        description="which window statistic is published",
    )
    high: float | None = Field(default=None, description="raise an event at once when a reading exceeds this")
    low: float | None = Field(
        default=None, description="raise an event at once when a reading falls below this"
    )
    severity: Literal["info", "warning", "critical"] = "warning"

    @model_validator(mode="after")
    def _limits_are_ordered(self) -> MetricSettings:
        if self.high is not None and self.low is not None and self.low >= self.high:
            raise ValueError(f"low {self.low} must be below high {self.high}")
        return self


class Settings(_Strict):
    """The remotely steerable part; a desired config replaces it as a whole."""

    heartbeat_s: float = Field(default=30.0, ge=0.05, le=3600, description="heartbeat (health) period")
    metrics: dict[str, MetricSettings] = Field(default_factory=dict, description="per-metric overrides")
    drain: DrainSettings = Field(default_factory=DrainSettings)


class ConfigError(ValueError):
    """A configuration that does not fit the device profile; the message says what and where."""


def check_settings(settings: Settings, profile: DeviceProfile) -> None:
    """Refuse settings that name unknown metrics or thresholds outside the profile's range."""
    for name, ms in settings.metrics.items():
        spec = profile.metrics.get(name)
        if spec is None:
            raise ConfigError(f"metrics.{name}: not in profile {profile.profile!r}")
        if spec.stream == HEALTH_STREAM:
            raise ConfigError(f"metrics.{name}: health metrics follow heartbeat_s")
        for label, limit in (("high", ms.high), ("low", ms.low)):
            if limit is not None and not spec.min <= limit <= spec.max:
                raise ConfigError(
                    f"metrics.{name}.{label}={limit:g} outside [{spec.min:g}, {spec.max:g}] {spec.unit}"
                )


class DesiredConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=0, description="monotonic; the device refuses anything older than it runs")
    settings: Settings


class ReportedConfig(BaseModel):
    """Retained on cfg/v1/{device_id}/reported; ingest validates it strictly (`strict=True`)."""

    v: SchemaVersion = 1
    device_id: DeviceId
    boot_id: str = Field(min_length=1, max_length=64)
    ts: EpochMs
    status: Literal["applied", "rejected", "override"]
    version: int = Field(ge=0, lt=2**31, description="the version the device runs now")
    desired_version: int | None = Field(default=None, ge=0, lt=2**31, description="the version that was offered")
    error: str | None = Field(default=None, max_length=4096)
    settings: Settings


class SetInterval(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    metric: str
    interval_s: float = Field(ge=0.05, le=86400)


MAX_DESIRED_BYTES = 256 * 1024  # a desired config is a few KB; anything near this is junk or an attack


def parse_desired(payload: bytes | bytearray | str, profile: DeviceProfile) -> DesiredConfig:
    """Decode and validate a desired config; raises ConfigError with a readable reason. Strict: "30" is
    not a number of seconds, true is not a version."""
    if len(payload) > MAX_DESIRED_BYTES:
        raise ConfigError(f"desired config of {len(payload)} bytes is over the limit of {MAX_DESIRED_BYTES}")
    try:
        desired = DesiredConfig.model_validate_json(payload, strict=True)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        raise ConfigError(problems) from None
    check_settings(desired.settings, profile)
    return desired
