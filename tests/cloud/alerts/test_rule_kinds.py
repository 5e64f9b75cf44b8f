"""Each rule kind's set-based query on the real database: rows written as ingest writes them, one evaluator
cycle, and only the devices in condition are alarmed (one query per rule, every device at once)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import yaml
from alerts_support import refresh_aggregates
from typer.testing import CliRunner

from cloud.alerts.evaluator import Evaluator
from cloud.alerts.rules import RuleFile
from cloud.db.devices import register_devices
from ioc.cli import app
from ioc.stack import Stack


@pytest.fixture
def conn(stack: Stack) -> Iterator[psycopg.Connection]:
    with psycopg.connect(stack.dsn) as c:
        yield c


def _devices(conn: psycopg.Connection, n: int, profile: str = "env-gateway") -> tuple[str, list[str]]:
    site = f"ksite-{uuid.uuid4().hex[:6]}"
    ids = [f"kdev-{uuid.uuid4().hex[:8]}" for _ in range(n)]
    register_devices(conn, [(d, site, profile) for d in ids])
    return site, ids


def _rule(**fields: object):
    return RuleFile.model_validate({"rules": [{"name": f"k-{uuid.uuid4().hex[:6]}", "severity": "minor",
                                               **fields}]}).rules[0]


def _alarmed(conn: psycopg.Connection, rule: str) -> set[str]:
    rows = conn.execute("SELECT device_id FROM alarms WHERE rule = %s AND cleared_at IS NULL", (rule,)).fetchall()
    conn.commit()
    return {r[0] for r in rows}


def _tlm(conn: psycopg.Connection, rows: list[tuple[datetime, str, str, float]]) -> None:
    conn.cursor().executemany("INSERT INTO telemetry (ts, device_id, metric, value) VALUES (%s, %s, %s, %s)", rows)
    conn.commit()


def test_rate_of_change_alarms_only_the_fast_riser(conn: psycopg.Connection) -> None:
    site, (fast, slow, falling) = _devices(conn, 3)
    now = datetime.now(UTC)
    rows = []
    for i in range(10):
        ts = now - timedelta(minutes=9 - i)
        rows += [(ts, fast, "water_level", 1.0 + 0.03 * i), (ts, slow, "water_level", 1.0 + 0.005 * i),
                 (ts, falling, "water_level", 2.0 - 0.05 * i)]
    _tlm(conn, rows)
    rule = _rule(kind="rate_of_change", select={"sites": [site]}, metric="water_level", change=0.10, window="10m")
    Evaluator("test").cycle(conn, [rule])
    assert _alarmed(conn, rule.name) == {fast}
    fall = _rule(kind="rate_of_change", select={"sites": [site]}, metric="water_level", change=-0.3, window="10m")
    Evaluator("test").cycle(conn, [fall])
    assert _alarmed(conn, fall.name) == {falling}


def _dead(conn: psycopg.Connection, device: str, reasons: list[str]) -> None:
    conn.cursor().executemany(
        "INSERT INTO dead_letters (topic, device_id, reason, payload, payload_size) VALUES (%s, %s, %s, %s, 1)",
        [(f"tlm/v1/x/{device}/env", device, r, uuid.uuid4().bytes) for r in reasons])
    conn.commit()


def test_out_of_range_and_dead_letter_rules_count_per_device(conn: psycopg.Connection) -> None:
    site, (spiky, noisy, fine) = _devices(conn, 3)
    _dead(conn, spiky, ["pm25=2500 outside [0, 1000] µg/m³"] * 3)
    _dead(conn, noisy, ["malformed JSON: expecting value"] * 6)
    _dead(conn, fine, ["pm25=2500 outside [0, 1000] µg/m³"])
    rng = _rule(kind="out_of_range", select={"sites": [site]}, metric="pm25", window="10m", min_count=2)
    burst = _rule(kind="dead_letters", select={"sites": [site]}, window="10m", max_count=5)
    Evaluator("test").cycle(conn, [rng, burst])
    assert _alarmed(conn, rng.name) == {spiky}
    assert _alarmed(conn, burst.name) == {noisy}


def test_selectors_by_profile_and_tag(conn: psycopg.Connection) -> None:
    site, (tagged, untagged) = _devices(conn, 2)
    _, (cam,) = _devices(conn, 1, profile="traffic-camera")
    conn.execute("UPDATE devices SET metadata = '{\"tags\": [\"river-gauge\"]}' WHERE device_id = %s", (tagged,))
    now = datetime.now(UTC)
    _tlm(conn, [(now, d, "water_level", 5.0) for d in (tagged, untagged)] + [(now, cam, "congestion", 4.0)])
    by_tag = _rule(kind="threshold", select={"tags": ["river-gauge"], "sites": [site]}, metric="water_level",
                   op=">", value=3)
    by_profile = _rule(kind="threshold", select={"profiles": ["traffic-camera"], "devices": [cam, tagged]},
                       metric="congestion", op=">=", value=3)
    Evaluator("test").cycle(conn, [by_tag, by_profile])
    assert _alarmed(conn, by_tag.name) == {tagged}
    assert _alarmed(conn, by_profile.name) == {cam}


def test_aqi_band_rule_reads_the_hourly_vn_aqi(stack: Stack, conn: psycopg.Connection) -> None:
    site, (smoky, clean) = _devices(conn, 2)
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    rows = []
    for h in range(3):
        ts = hour - timedelta(hours=h) + timedelta(minutes=1)
        rows += [(ts, smoky, "pm25", 120.0), (ts, clean, "pm25", 12.0)]
    _tlm(conn, rows)
    refresh_aggregates(stack.dsn, [r[0] for r in rows])
    rule = _rule(kind="aqi_band", select={"sites": [site]}, band="bad")  # PM2.5 NowCast 120 → AQI 179
    Evaluator("test").cycle(conn, [rule])
    assert _alarmed(conn, rule.name) == {smoky}
    value = conn.execute("SELECT value FROM alarms WHERE rule = %s", (rule.name,)).fetchone()
    assert value == (179.0,)


def test_threshold_rules_read_incrementally_see_only_the_latest_reading_and_clear_past_hysteresis(
        conn: psycopg.Connection) -> None:
    """Cycle after cycle (the incremental read, not the first full one): a device whose hot reading is
    followed by a normal one stays quiet, a device that goes hot alarms, a falling rule works the other way,
    and the alarmed device clears only once past the hysteresis."""
    site, (spike, hot, low) = _devices(conn, 3)
    now = datetime.now(UTC)
    _tlm(conn, [(now - timedelta(seconds=5), d, "pm25", 20.0) for d in (spike, hot)]
         + [(now - timedelta(seconds=5), low, "humidity", 60.0)])
    high = _rule(kind="threshold", select={"sites": [site]}, metric="pm25", op=">", value=50, hysteresis=10)
    dry = _rule(kind="threshold", select={"sites": [site]}, metric="humidity", op="<", value=30, hysteresis=5)
    ev = Evaluator("test")
    ev.cycle(conn, [high, dry])
    assert ev.thresholds.last_full
    assert _alarmed(conn, high.name) == set()
    now = datetime.now(UTC)
    _tlm(conn, [(now - timedelta(seconds=2), spike, "pm25", 90.0), (now - timedelta(seconds=1), spike, "pm25", 25.0),
                (now - timedelta(seconds=1), hot, "pm25", 80.0), (now - timedelta(seconds=1), low, "humidity", 20.0)])
    ev.cycle(conn, [high, dry])
    assert not ev.thresholds.last_full
    assert _alarmed(conn, high.name) == {hot}
    assert _alarmed(conn, dry.name) == {low}
    _tlm(conn, [(datetime.now(UTC), hot, "pm25", 45.0), (datetime.now(UTC), low, "humidity", 33.0)])
    ev.cycle(conn, [high, dry])  # inside the hysteresis band: still alarmed
    assert _alarmed(conn, high.name) == {hot}
    assert _alarmed(conn, dry.name) == {low}
    _tlm(conn, [(datetime.now(UTC), hot, "pm25", 39.0), (datetime.now(UTC), low, "humidity", 36.0)])
    ev.cycle(conn, [high, dry])
    assert not ev.thresholds.last_full
    assert _alarmed(conn, high.name) == set()
    assert _alarmed(conn, dry.name) == set()


def test_alerts_test_db_shows_the_devices_each_rule_matches_now(
        stack: Stack, conn: psycopg.Connection, tmp_path: Path) -> None:
    site, (hot, cool) = _devices(conn, 2)
    now = datetime.now(UTC)
    _tlm(conn, [(now, hot, "pm25", 80.0), (now, cool, "pm25", 20.0)])
    rule = {"name": f"k-{uuid.uuid4().hex[:6]}", "kind": "threshold", "severity": "major", "metric": "pm25",
            "op": ">", "value": 50, "select": {"sites": [site]}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({"rules": [rule]}))
    res = CliRunner().invoke(app, ["alerts", "test", "--rules", str(tmp_path), "--db", "--dsn", stack.dsn],
                             env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    assert f"1: {hot}" in res.output
    assert cool not in res.output
