from pathlib import Path

import pytest

from contract.profiles import MetricSpec, load_profiles


def test_shipped_profiles_cover_the_sensors_of_a_city_station_and_a_camera_box() -> None:
    profiles = load_profiles()
    env = profiles["env-gateway"]
    for metric in ("pm25", "pm10", "co2", "noise", "temperature", "humidity", "rain", "water_level"):
        assert metric in env.metrics
    assert env.metrics["noise"].unit == "dB(A)"
    cam = profiles["traffic-camera"]
    assert cam.counts is not None
    assert {"car", "motorbike", "bus", "truck", "bicycle", "person"} <= set(cam.counts.classes)
    assert {"speed_mean", "occupancy"} <= set(cam.metrics)
    # Heartbeat metrics are merged into every profile.
    assert all("outbox_depth" in p.metrics for p in profiles.values())


def test_range_check_gives_a_reason_naming_value_range_and_unit() -> None:
    spec = MetricSpec(stream="env", unit="ppm", min=250, max=10000, interval_s=10)
    assert spec.check("co2", 420) is None
    assert spec.check("co2", 20000) == "co2=20000 outside [250, 10000] ppm"
    assert "not a finite number" in (spec.check("co2", float("nan")) or "")


def test_a_profile_with_an_inverted_range_is_refused(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "health.yaml").write_text("metrics: {}\n")
    (tmp_path / "profiles" / "bad.yaml").write_text(
        "profile: bad\nversion: 1\nmetrics:\n  x: {stream: env, unit: m, min: 5, max: 1, interval_s: 1}\n")
    with pytest.raises(ValueError, match="must be below"):
        load_profiles(tmp_path)
