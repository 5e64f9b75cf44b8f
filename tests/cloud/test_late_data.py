"""A backlog delivered days late reaches the 1-minute and 1-hour aggregates (and the hourly VN_AQI computed from
them) within a minute, on both backends.

On TimescaleDB a refresh policy covers only its own window and real-time aggregation only reads rows above an
aggregate's watermark, so without the project's upkeep these rows would never show in telemetry_1m/_1h."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from support import wait_until

from cloud.db.devices import register_devices
from cloud.ingest.service import IngestService
from contract.messages import now_ms
from ioc.stack import Stack
from simulators.fleet import Fleet, FleetSpec
from simulators.publisher import FleetPublisher
from simulators.runner import SimRunner

DAY_MS = 86_400_000


def _aggregate(db: psycopg.Connection, view: str, ids: list[str]) -> dict[tuple[object, str, str], tuple[int, float]]:
    rows = db.execute(f"SELECT bucket, device_id, metric, n, round(total::numeric, 6) FROM {view}"
                      " WHERE device_id = ANY(%s)", (ids,)).fetchall()
    return {(b, d, m): (int(n), float(t)) for b, d, m, n, t in rows}


def _from_raw(db: psycopg.Connection, unit: str, ids: list[str]) -> dict[tuple[object, str, str], tuple[int, float]]:
    rows = db.execute(f"SELECT date_trunc('{unit}', ts, 'UTC'), device_id, metric, count(*),"
                      " round(sum(value)::numeric, 6) FROM telemetry WHERE device_id = ANY(%s) GROUP BY 1, 2, 3",
                      (ids,)).fetchall()
    return {(b, d, m): (int(n), float(t)) for b, d, m, n, t in rows}


def _refresh(db: psycopg.Connection, view: str, end: str) -> None:
    """Retried while ingest's upkeep refreshes the same aggregate."""
    def attempt() -> bool:
        try:
            db.execute(f"CALL refresh_continuous_aggregate('{view}', NULL, {end})")
            return True
        except psycopg.errors.LockNotAvailable:
            return False
    wait_until(attempt, what=f"a refresh of {view}")


def test_a_backlog_three_days_late_shows_in_both_aggregates_within_a_minute(
    stack: Stack, ingest: IngestService, db: psycopg.Connection, backend: str
) -> None:
    fleet = Fleet(FleetSpec(prefix=f"late{uuid.uuid4().hex[:6]}", gateways=3, cameras=0, interval_s=600,
                            samples_per_message=10, fault_rate=0.0, seed=7))
    ids = [d.device_id for d in fleet.devices]
    with psycopg.connect(stack.dsn) as conn:
        register_devices(conn, fleet.registrations())
    if backend == "timescale":  # the aggregates are materialised up to an hour ago: the backlog lies far below
        _refresh(db, "telemetry_1m", "now() - interval '1 hour'")
        _refresh(db, "telemetry_1h", "date_trunc('hour', now()) - interval '1 hour'")
    with FleetPublisher(fleet, stack.mqtt_host, stack.mqtt_port, login=stack.credentials("simulator")) as pub:
        SimRunner(fleet, pub).burst(now_ms() - 3 * DAY_MS, rounds=12)  # 2 hours of readings, three days old
        assert pub.drain(60)
    expected_points = len(pub.sent.points())
    assert expected_points > 3 * 120
    wait_until(lambda: db.execute("SELECT count(*) FROM telemetry WHERE device_id = ANY(%s)", (ids,)).fetchone()
               == (expected_points,), what="the backlog stored")
    minutes, hours = _from_raw(db, "minute", ids), _from_raw(db, "hour", ids)
    assert len(hours) >= 2 * len(ids)  # the backlog spans more than one hour per metric
    wait_until(lambda: _aggregate(db, "telemetry_1m", ids) == minutes, timeout=60, what="1-minute aggregate")
    wait_until(lambda: _aggregate(db, "telemetry_1h", ids) == hours, timeout=60, what="1-hour aggregate")
    # The dashboards' stored hourly VN_AQI (migration 0080) follows: what the function computes from those means.
    since = min(k[0] for k in hours)
    computed = _vn_aqi(db, "SELECT hour, device_id, aqi, pm25_nowcast FROM ioc_vn_aqi_hourly(%s, now())"
                       " WHERE device_id = ANY(%s) AND aqi IS NOT NULL", (since, ids))
    assert {k[1] for k in computed[0]} == set(ids)
    assert len(computed[0]) >= 2 * len(ids)
    wait_until(lambda: _same(_vn_aqi(db, "SELECT hour, device_id, aqi, pm25_nowcast FROM vn_aqi_1h"
                                         " WHERE device_id = ANY(%s) AND hour >= %s AND hour <= now()", (ids, since)),
                             computed), timeout=60, what="hourly VN_AQI")


VnAqi = tuple[dict[tuple[object, str], int], dict[tuple[object, str], float]]


def _vn_aqi(db: psycopg.Connection, sql: str, args: tuple[object, ...]) -> VnAqi:
    """(station, hour) -> AQI, and -> PM2.5 NowCast."""
    rows = db.execute(sql, args).fetchall()
    return {(r[0], r[1]): int(r[2]) for r in rows}, {(r[0], r[1]): float(r[3]) for r in rows}


def _same(stored: VnAqi, computed: VnAqi) -> bool:
    """The same AQI; the same NowCast to the last bits (TimescaleDB re-materialising an hour may sum its
    minutes in another order)."""
    return stored[0] == computed[0] and stored[1] == pytest.approx(computed[1], rel=1e-12)


def _counts_by_hour(db: psycopg.Connection, source: str, ids: list[str]) -> dict[tuple[object, ...], int]:
    ts = "bucket" if source == "traffic_counts_1h" else "date_trunc('hour', ts, 'UTC')"
    rows = db.execute(f"SELECT {ts}, device_id, line, cls, direction, sum(count) FROM {source}"
                      " WHERE device_id = ANY(%s) GROUP BY 1, 2, 3, 4, 5", (ids,)).fetchall()
    return {tuple(r[:5]): int(r[5]) for r in rows}


def test_late_traffic_counts_show_in_the_hourly_counts_within_a_minute(
    stack: Stack, ingest: IngestService, db: psycopg.Connection, backend: str
) -> None:
    """The traffic dashboards read hourly counts beyond two days: a camera's backlog must reach them too."""
    fleet = Fleet(FleetSpec(prefix=f"latecam{uuid.uuid4().hex[:6]}", gateways=0, cameras=2, interval_s=600,
                            samples_per_message=10, fault_rate=0.0, seed=11))
    ids = [d.device_id for d in fleet.devices]
    with psycopg.connect(stack.dsn) as conn:
        register_devices(conn, fleet.registrations())
    if backend == "timescale":  # materialised up to an hour ago: the backlog lies far below the watermark
        _refresh(db, "traffic_counts_1h", "date_trunc('hour', now()) - interval '1 hour'")
    with FleetPublisher(fleet, stack.mqtt_host, stack.mqtt_port, login=stack.credentials("simulator")) as pub:
        SimRunner(fleet, pub).burst(now_ms() - 3 * DAY_MS, rounds=12)
        assert pub.drain(60)
    wait_until(lambda: db.execute("SELECT count(*) FROM traffic_counts WHERE device_id = ANY(%s)", (ids,)).fetchone()
               == (len(pub.sent.counts()),), what="the counts stored")
    raw = _counts_by_hour(db, "traffic_counts", ids)
    assert len({k[0] for k in raw}) >= 2  # more than one hour
    assert sum(raw.values()) > 0
    wait_until(lambda: _counts_by_hour(db, "traffic_counts_1h", ids) == raw, timeout=60, what="hourly counts")
