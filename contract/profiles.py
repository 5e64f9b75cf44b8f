"""Device profiles from firmware-config/: the one source of truth for metrics, units and ranges."""

from __future__ import annotations

import math
import os
from functools import cache, cached_property
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator


def config_dir() -> Path:
    """firmware-config/ beside the packages, or $IOC_FIRMWARE_CONFIG (container images)."""
    env = os.environ.get("IOC_FIRMWARE_CONFIG")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "firmware-config"


class MetricSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    stream: str = Field(description="topic stream the metric is published on")
    unit: str
    min: float
    max: float
    interval_s: float = Field(gt=0, description="default sampling interval")
    label: str = ""

    @model_validator(mode="after")
    def _range_is_ordered(self) -> MetricSpec:
        if self.min >= self.max:
            raise ValueError(f"min {self.min} must be below max {self.max}")
        return self

    def check(self, name: str, value: float) -> str | None:
        """None when the value is acceptable, else the reason."""
        if not math.isfinite(value):
            return f"{name}={value} is not a finite number"
        if value < self.min or value > self.max:
            return f"{name}={value} outside [{self.min:g}, {self.max:g}] {self.unit}"
        return None


class CountsSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    classes: list[str]
    directions: list[str]
    max_per_interval: int = 100_000


class DeviceProfile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    profile: str
    version: int
    description: str = ""
    metrics: dict[str, MetricSpec]
    counts: CountsSpec | None = None

    def streams(self) -> frozenset[str]:
        """Topic streams this profile publishes on (ingest checks each telemetry topic against them)."""
        return self._streams

    @cached_property
    def _streams(self) -> frozenset[str]:
        return frozenset(m.stream for m in self.metrics.values())


def _read_yaml(path: Path) -> dict:
    with path.open(encoding="utf-8") as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping")
    return data


@cache
def load_profiles(directory: Path | None = None) -> dict[str, DeviceProfile]:
    """All profiles, each with the common health metrics merged in."""
    root = directory or config_dir()
    health = _read_yaml(root / "health.yaml")["metrics"]
    profiles: dict[str, DeviceProfile] = {}
    for path in sorted((root / "profiles").glob("*.yaml")):
        data = _read_yaml(path)
        clash = set(health) & set(data.get("metrics", {}))
        if clash:
            raise ValueError(f"{path}: metrics {sorted(clash)} clash with health.yaml")
        data["metrics"] = {**data.get("metrics", {}), **health}
        prof = DeviceProfile.model_validate(data)
        profiles[prof.profile] = prof
    if not profiles:
        raise FileNotFoundError(f"no device profiles under {root / 'profiles'}")
    return profiles


def get_profile(name: str) -> DeviceProfile:
    try:
        return load_profiles()[name]
    except KeyError:
        raise KeyError(f"unknown device profile {name!r}; known: {sorted(load_profiles())}") from None
