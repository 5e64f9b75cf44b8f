"""Device config and desired-config validation against the profile."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from contract.profiles import get_profile
from contract.twin import parse_desired
from edge.config import ConfigError, DeviceConfig, load_config, validate_for_profile

SAMPLE = Path(__file__).resolve().parents[2] / "edge" / "sample-device.yaml"
PROFILE = get_profile("env-gateway")


def _base(**extra: object) -> dict:
    return {"device_id": "env-1", "site": "s1", "profile": "env-gateway", **extra}


def test_sample_config_is_valid() -> None:
    cfg = load_config(SAMPLE)
    validate_for_profile(cfg, PROFILE)
    assert cfg.outbox.path.is_absolute()
    assert cfg.broker.password is None or "change" not in repr(cfg.broker)


def test_unknown_keys_and_bad_ids_are_refused() -> None:
    with pytest.raises(ValidationError):
        DeviceConfig.model_validate(_base(brokr={}))
    with pytest.raises(ValidationError):
        DeviceConfig.model_validate(_base(site="a/b"))


def test_password_never_shows_in_repr() -> None:
    cfg = DeviceConfig.model_validate(_base(broker={"password": "hunter2"}))
    assert "hunter2" not in repr(cfg)
    assert "hunter2" not in cfg.model_dump_json()


@pytest.mark.parametrize(
    ("settings", "why"),
    [
        ({"metrics": {"nope": {}}}, "not in profile"),
        ({"metrics": {"uptime_s": {"interval_s": 5}}}, "health metrics"),
        ({"metrics": {"pm25": {"high": 5000}}}, "outside"),
    ],
)
def test_settings_checked_against_profile(settings: dict, why: str) -> None:
    cfg = DeviceConfig.model_validate(_base(settings=settings))
    with pytest.raises(ConfigError, match=why):
        validate_for_profile(cfg, PROFILE)


def test_sensor_metric_provided_twice_is_refused() -> None:
    cfg = DeviceConfig.model_validate(
        _base(
            sensors=[
                {"type": "simulated", "metrics": ["pm25"]},
                {
                    "type": "modbus",
                    "transport": "tcp",
                    "host": "h",
                    "registers": [{"metric": "pm25", "address": 0}],
                },
            ]
        )
    )
    with pytest.raises(ConfigError, match="already provided"):
        validate_for_profile(cfg, PROFILE)


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        json.dumps({"settings": {}}).encode(),  # no version
        json.dumps({"version": 2, "settings": {"metrics": {"pm25": {"interval_s": -1}}}}).encode(),
        json.dumps({"version": 2, "settings": {"metrics": {"pm25": {"low": 9, "high": 3}}}}).encode(),
        json.dumps({"version": 2, "settings": {"heartbeat_s": 10, "colour": "red"}}).encode(),
    ],
)
def test_invalid_desired_config_is_a_config_error(payload: bytes) -> None:
    with pytest.raises(ConfigError):
        parse_desired(payload, PROFILE)


def test_valid_desired_config() -> None:
    d = parse_desired(
        b'{"version": 3, "settings": {"metrics": {"co2": {"interval_s": 2, "high": 1500}}}}', PROFILE
    )
    assert d.version == 3
    assert d.settings.metrics["co2"].interval_s == 2
