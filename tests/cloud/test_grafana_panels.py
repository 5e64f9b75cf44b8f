"""Every Grafana panel and variable query, expanded as Grafana would expand it, executed against the real
test database as the read-only role Grafana uses; key panels must return the rows seeded here.

Both datasource modes are covered: TimescaleDB off (floor(extract(epoch ...)) grouping) always, and
TimescaleDB on (time_bucket grouping) where the extension is installed, skipped otherwise.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from grafana_macros import MacroError, Variable, expand_macros, format_interval, interpolate, resolve_variables
from support import wait_until

from cloud.alerts.aqi import band_for, hourly_aqi
from cloud.db.devices import register_devices
from cloud.db.maintenance import run_maintenance
from cloud.db.migrate import MIGRATION_LOCK_ID, current_backend
from cloud.grafana.build import build, render
from contract.profiles import load_profiles
from ioc.stack import Stack

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "cloud" / "grafana"
DASHBOARD_FILES = sorted((GRAFANA / "dashboards").glob("*.json"))
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "ioc.yaml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "ioc.yaml"
ROLE_MIGRATION = REPO / "cloud" / "db" / "migrations" / "0004_grafana_role.sql"


# -- the dashboards as data ---------------------------------------------------------------------------
@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    ptype: str
    fmt: str
    sql: str
    path: Path = field(compare=False, default=Path())

    @property
    def name(self) -> str:
        return f"{self.dashboard} / {self.panel}"


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in panels:
        yield p
        yield from _panels(p.get("panels", []))  # collapsed rows keep their panels inside


def panel_queries() -> list[PanelQuery]:
    out = []
    for path in DASHBOARD_FILES:
        dash = _load(path)
        for p in _panels(dash["panels"]):
            for t in p.get("targets", []):
                out.append(PanelQuery(dash["title"], p["title"], p["type"], t.get("format", "time_series"),
                                      t["rawSql"], path))
    return out


QUERIES = panel_queries()


# -- seeded data ----------------------------------------------------------------------------------------
@dataclass
class Seed:
    site: str
    env: str
    cam: str
    reason_token: str
    instance: str
    pm25: list[float] = field(default_factory=list)
    pm25_hourly: dict[datetime, list[float]] = field(default_factory=dict)  # every PM2.5 reading by hour
    alarm_id: int = 0
    class_totals: dict[str, int] = field(default_factory=dict)
    direction_totals: dict[str, int] = field(default_factory=dict)
    refreshed_at: datetime | None = None  # the database's clock at our upkeep pass (it stored vn_aqi_1h)


def _letters(n: int = 10) -> str:
    """A token the dead-letter reason grouping keeps intact (it masks digits and quoted strings)."""
    return "".join(chr(ord("a") + int(c, 16) % 26) for c in uuid.uuid4().hex[:n])


_SEED = {
    "telemetry": "INSERT INTO telemetry (ts, device_id, metric, value) VALUES (%s, %s, %s, %s)",
    "traffic_counts": "INSERT INTO traffic_counts (ts, device_id, line, cls, direction, interval_s, count)"
                      " VALUES (%s, %s, %s, %s, %s, %s, %s)",
    "device_status": "INSERT INTO device_status (device_id, online, boot_id, firmware, config_version,"
                     " status_ts, status_changed_at, last_seen, reason) VALUES"
                     " (%s, true, %s, '1.2.3', 3, now(), now(), now(), NULL),"
                     " (%s, false, %s, '0.9.0', 1, now(), now(), now() - interval '1 hour', 'last will')",
    "device_config_reported": "INSERT INTO device_config_reported (device_id, version, config)"
                              " VALUES (%s, 3, '{}')",
    "events": "INSERT INTO events (ts, device_id, kind, severity, details)"
              " VALUES (%s, %s, 'door_open', 'warning', '{\"cabinet\": 1}')",
    "dead_letters": "INSERT INTO dead_letters (topic, device_id, reason, payload, payload_size)"
                    " VALUES (%s, %s, %s, %s, 3)",
    "ingest_instances": "INSERT INTO ingest_instances (instance, host, started_at, updated_at, messages,"
                        " points, msg_rate, point_rate, latency_p50_ms, latency_p99_ms, lag_ms, in_flight)"
                        " VALUES (%s, 'test-host', now() - interval '1 hour', now(), 1000, 5000, 123.0,"
                        " 615.0, 12.0, 80.0, 5.0, 7)",
}


@pytest.fixture(scope="module")
def seed(stack: Stack) -> Iterator[Seed]:
    tag = uuid.uuid4().hex[:8]
    s = Seed(site=f"gsite-{tag}", env=f"genv-{tag}", cam=f"gcam-{tag}", reason_token=_letters(),
             instance=f"grafana-test-{tag}")
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    stamps = [now - timedelta(minutes=10 - i, seconds=-10) for i in range(5)]
    tlm: list[tuple[datetime, str, str, float]] = []
    for i, ts in enumerate(stamps):
        s.pm25.append(10.0 + i)
        tlm += [(ts, s.env, "pm25", 10.0 + i), (ts, s.env, "pm10", 20.0 + i), (ts, s.env, "noise", 60.0),
                (ts, s.env, "water_level", 1.5 + 0.1 * i), (ts, s.env, "cpu_pct", 25.0),
                (ts, s.env, "mem_rss_mb", 80.0 + i), (ts, s.env, "outbox_depth", float(i)),
                (ts, s.env, "outbox_dropped", 0.0), (ts, s.env, "link_up", 0.0 if i == 2 else 1.0),
                (ts, s.cam, "speed_mean", 40.0), (ts, s.cam, "congestion", float(1 + i % 2)),
                (ts, s.cam, "cpu_pct", 50.0)]
    # Two earlier hours of PM2.5 so the VN_AQI NowCast has 2 of its last 3 hours (older than the 15 minutes
    # the PM2.5 panel check looks at).
    history = [now.replace(minute=0) - timedelta(hours=h, minutes=-20) for h in (1, 2)]
    tlm += [(history[0], s.env, "pm25", 60.0), (history[1], s.env, "pm25", 80.0)]
    for ts, _dev, metric, value in tlm:
        if metric == "pm25":
            s.pm25_hourly.setdefault(ts.replace(minute=0, second=0, microsecond=0), []).append(value)
    counts = []
    for i, ts in enumerate(stamps):
        for cls, direction, n in (("car", "in", 10 + i), ("car", "out", 8), ("bus", "in", 1),
                                  ("bus", "out", 2)):
            counts.append((ts, s.cam, "north", cls, direction, 60, n))
            s.class_totals[cls] = s.class_totals.get(cls, 0) + n
            s.direction_totals[direction] = s.direction_totals.get(direction, 0) + n
    boots = (uuid.uuid4().hex, uuid.uuid4().hex)
    reason = f"grafana panel test {s.reason_token}: synthetic"
    with psycopg.connect(stack.dsn, autocommit=True) as conn:
        register_devices(conn, [(s.env, s.site, "env-gateway"), (s.cam, s.site, "traffic-camera")])
        with conn.cursor() as cur:
            cur.executemany(_SEED["telemetry"], tlm)
            cur.executemany(_SEED["traffic_counts"], counts)
            cur.execute(_SEED["device_status"], (s.env, boots[0], s.cam, boots[1]))
            cur.execute(_SEED["device_config_reported"], (s.env,))
            cur.execute(_SEED["events"], (stamps[-1], s.env))
            cur.execute(_SEED["dead_letters"], (f"tlm/v1/{s.site}/{s.env}/env", s.env, reason, b"{x}"))
            cur.execute(_SEED["ingest_instances"], (s.instance,))
            cur.execute("UPDATE devices SET lat = 21.03, lon = 105.85 WHERE device_id = %s", (s.env,))
            cur.execute("UPDATE devices SET firmware = '1.2.3' WHERE device_id = %s", (s.cam,))  # it reports 0.9.0
            cur.execute("INSERT INTO broker_credentials (username, device_id, role, password_hash, created_at)"
                        " VALUES (%s, %s, 'device', 'not-a-hash', now() - interval '100 days')", (s.env, s.env))
            cur.execute("INSERT INTO sites (site, name, lat, lon, noise_zone, water_warning_m, water_alarm_m,"
                        " water_danger_m) VALUES (%s, 'Seeded site', 21.02, 105.84, 'special', 2.0, 2.5, 3.0)",
                        (s.site,))
            row = cur.execute("INSERT INTO alarms (rule, device_id, site, kind, severity, message, value,"
                              " condition_since, raised_at, acked_at, acked_by) VALUES ('grafana-test', %s, %s,"
                              " 'threshold', 'critical', 'seeded alarm', 99, now() - interval '10 minutes',"
                              " now() - interval '9 minutes', now() - interval '8 minutes', 'tester') RETURNING id",
                              (s.env, s.site)).fetchone()
            assert row is not None
            s.alarm_id = row[0]
            cur.execute("INSERT INTO alarm_history (alarm_id, action, actor, value) VALUES (%s, 'raised', 'test', 99)",
                        (s.alarm_id,))
        # Mark the minutes dirty, as ingest does, and run upkeep: rollup tables are recomputed (PostgreSQL),
        # continuous aggregates refreshed where the rows lie below their watermark (TimescaleDB).
        minutes = sorted({ts.replace(second=0, microsecond=0) for ts in stamps + history})
        conn.cursor().executemany("INSERT INTO rollup_dirty (instance, bucket) VALUES (%s, %s)"
                                  " ON CONFLICT DO NOTHING", [(s.instance, m) for m in minutes])
        wait_until(lambda: run_maintenance(conn).ran, what="an upkeep pass of our own")
        row = conn.execute("SELECT now()").fetchone()
        s.refreshed_at = row[0] if row else None
    yield s
    with psycopg.connect(stack.dsn, autocommit=True) as conn:
        devs = [s.env, s.cam]
        for table in ("telemetry", "traffic_counts", "events", "dead_letters", "vn_aqi_1h"):
            conn.execute(f"DELETE FROM {table} WHERE device_id = ANY(%s)", (devs,))
        if current_backend(conn) == "postgres":
            for table in ("telemetry_1m", "telemetry_1h", "traffic_counts_1h"):
                conn.execute(f"DELETE FROM {table} WHERE device_id = ANY(%s)", (devs,))
        conn.execute("DELETE FROM ingest_instances WHERE instance = %s", (s.instance,))
        conn.execute("DELETE FROM alarms WHERE id = %s", (s.alarm_id,))
        conn.execute("DELETE FROM sites WHERE site = %s", (s.site,))
        conn.execute("DELETE FROM devices WHERE device_id = ANY(%s)", (devs,))


@pytest.fixture(scope="module")
def grafana_dsn(stack: Stack) -> str:
    """Re-apply migration 0004 (idempotent) with a password in the session setting it reads, exactly as the
    compose migrate service passes it through PGOPTIONS; then log in as that role."""
    password = uuid.uuid4().hex
    with psycopg.connect(stack.dsn, autocommit=True, options=f"-c ioc.grafana_password={password}") as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_ID,))  # as a migration does: upkeep waits
        conn.execute(ROLE_MIGRATION.read_text(encoding="utf-8"))
    return psycopg.conninfo.make_conninfo(stack.dsn, user="ioc_grafana", password=password)


@pytest.fixture(scope="module")
def grafana_conn(grafana_dsn: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(grafana_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="module")
def has_timescaledb(stack: Stack) -> bool:
    with psycopg.connect(stack.dsn) as conn:
        return conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone() is not None


# -- scenarios: datasource mode x time range x interval x variable selection ---------------------------
@dataclass(frozen=True)
class Scenario:
    name: str
    timescaledb: bool
    range_: timedelta
    interval: timedelta
    selection: str  # "seeded" (the seeded site), "all" (every site, as All), "none" (nothing selected)
    check: bool = False  # assert the seeded rows come back


SCENARIOS = [
    Scenario("pg-6h-1m", False, timedelta(hours=6), timedelta(minutes=1), "seeded", check=True),
    Scenario("pg-6h-5m", False, timedelta(hours=6), timedelta(minutes=5), "seeded"),
    Scenario("pg-7d-10m", False, timedelta(days=7), timedelta(minutes=10), "seeded"),
    Scenario("pg-6h-all", False, timedelta(hours=6), timedelta(minutes=1), "all"),
    Scenario("pg-6h-none", False, timedelta(hours=6), timedelta(minutes=1), "none"),
    Scenario("ts-6h-1m", True, timedelta(hours=6), timedelta(minutes=1), "seeded", check=True),
    Scenario("ts-7d-10m", True, timedelta(days=7), timedelta(minutes=10), "seeded"),
]


@dataclass
class Result:
    columns: list[str]
    rows: list[tuple[Any, ...]]

    def col(self, name: str) -> list[Any]:
        i = self.columns.index(name)
        return [r[i] for r in self.rows]

    def series(self, metric: str) -> list[float]:
        """Values of one series of a long time-series frame (time, metric, value)."""
        return [float(r[2]) for r in self.rows if r[1] == metric]


def _variables(conn: psycopg.Connection, sc: Scenario, s: Seed, path: Path, frm: datetime,
               to: datetime) -> dict[str, Variable]:
    names = [v["name"] for v in _load(path)["templating"]["list"]]
    if sc.selection == "none":
        return {name: Variable([], multi=True, include_all=True) for name in names}
    pinned = {} if sc.selection == "all" else {"site": [s.site]}
    return resolve_variables(conn, _load(path), frm, to, sc.interval, sc.timescaledb, pinned)


def run(conn: psycopg.Connection, q: PanelQuery, sc: Scenario, s: Seed) -> Result:
    to = datetime.now(UTC)
    frm = to - sc.range_
    variables = _variables(conn, sc, s, q.path, frm, to)
    sql = interpolate(q.sql, frm=frm, to=to, interval=sc.interval, timescaledb=sc.timescaledb,
                      variables=variables)
    try:
        cur = conn.execute(sql)
    except psycopg.Error as e:
        pytest.fail(f"{q.name} [{sc.name}]: {type(e).__name__}: {e}\n--- SQL sent ---\n{sql}", pytrace=False)
    columns = [d.name for d in cur.description or []]
    result = Result(columns, cur.fetchall())
    if q.fmt == "time_series":  # Grafana refuses a time-series frame without a time column
        assert "time" in columns, f"{q.name} [{sc.name}]: time_series query has no 'time' column: {columns}"
    return result


# -- what the key panels must show for the seeded data ----------------------------------------------------
Check = Callable[[Result, Seed], None]


def _devices(r: Result, s: Seed) -> None:
    assert r.rows == [(2, 1, 0, 1)], r


def _dead_count(r: Result, s: Seed) -> None:
    assert r.rows[0][0] >= 1, r


def _series(metric: Callable[[Seed], str], expected: Callable[[Seed], list[float]]) -> Check:
    def check(r: Result, s: Seed) -> None:
        assert r.series(metric(s)) == pytest.approx(expected(s)), r

    return check


def _totals(attr: str) -> Check:
    def check(r: Result, s: Seed) -> None:
        totals: dict[str, float] = {}
        for _, name, value in r.rows:
            totals[name] = totals.get(name, 0) + float(value)
        assert totals == getattr(s, attr), r  # every device of the seeded site is ours

    return check


def _contains(column: str, value: Callable[[Seed], object]) -> Check:
    def check(r: Result, s: Seed) -> None:
        want = value(s)
        found = any(want == v or (isinstance(v, str) and isinstance(want, str) and want in v)
                    for v in r.col(column))
        assert found, f"{want!r} not in column {column!r}: {r}"

    return check


def _status(r: Result, s: Seed) -> None:
    rows = {row[0]: dict(zip(r.columns, row, strict=True)) for row in r.rows}
    assert set(rows) == {s.env, s.cam}, r
    assert r.rows[0][0] == s.cam, "offline devices come first"
    assert rows[s.env]["online"] is True
    assert rows[s.env]["firmware"] == "1.2.3"
    assert rows[s.env]["config (reported)"] == 3
    assert rows[s.cam]["online"] is False
    assert rows[s.cam]["status reason"] == "last will"


def _link(r: Result, s: Seed) -> None:
    assert set(r.series(s.env)) == {0.0, 1.0}, r


def _dead_reason(r: Result, s: Seed) -> None:
    mine = [row for row in r.rows if s.reason_token in row[0]]
    assert [row[1] for row in mine] == [1], r


def _tail(check: Check, n: int) -> Check:
    """The same check on the newest n rows (older seeded hours feed the VN_AQI NowCast)."""
    def tail(r: Result, s: Seed) -> None:
        check(Result(r.columns, r.rows[-n:]), s)

    return tail


def expected_aqi(s: Seed) -> dict[datetime, int]:
    """VN_AQI per hour up to the one the seed's upkeep pass ran in, computed by the Python implementation from
    the seeded readings.

    An hour without readings of its own still has a NowCast when 2 of its last 3 hours have some (the current
    hour, in its first minutes, before the seeded readings reach it)."""
    means = {h: sum(v) / len(v) for h, v in s.pm25_hourly.items()}
    now = s.refreshed_at or datetime.now(UTC)  # not the clock now: a check after the top of the hour saw one more
    hours = [min(means) + timedelta(hours=i)
             for i in range(int((max(means) - min(means)) / timedelta(hours=1)) + 12)]
    out = {}
    for h in (h for h in hours if h <= now):
        got = hourly_aqi({"pm25": [means.get(h - timedelta(hours=i)) for i in range(12)]})
        if got is not None:
            out[h] = got.aqi
    return out


def _aqi_series(r: Result, s: Seed) -> None:
    want = expected_aqi(s)
    assert len(want) >= 2
    assert [(row[0], row[2]) for row in r.rows if row[1] == s.site] == sorted(want.items()), r


def _aqi_now(r: Result, s: Seed) -> None:
    want = expected_aqi(s)[max(expected_aqi(s))]
    rows = [dict(zip(r.columns, row, strict=True)) for row in r.rows]
    ((mine),) = [x for x in rows if x.get("station", x.get("site")) in (s.env, s.site)]
    assert mine["VN_AQI"] == want, r
    if "band" in mine:
        assert mine["band"] == band_for(want).key
        assert mine["dominant parameter"] == "pm25"


def _map(r: Result, s: Seed) -> None:
    rows = {row[0]: dict(zip(r.columns, row, strict=True)) for row in r.rows}
    assert set(rows) == {s.env, s.cam}, r
    assert (rows[s.env]["latitude"], rows[s.env]["online"]) == (21.03, 1)
    assert rows[s.env]["VN_AQI"] == expected_aqi(s)[max(expected_aqi(s))]
    assert (rows[s.cam]["latitude"], rows[s.cam]["longitude"], rows[s.cam]["status"]) == (21.02, 105.84, "offline")
    assert rows[s.cam]["VN_AQI"] is None


def _one_critical(r: Result, s: Seed) -> None:
    assert r.columns == ["critical", "major", "minor", "warning"]
    assert r.rows == [(1, 0, 0, 0)], r


def _time_to_ack(r: Result, s: Seed) -> None:
    ((median, p90, unacked),) = r.rows
    assert (median, p90, unacked) == (pytest.approx(60.0), pytest.approx(60.0), 0), r


def _firmware(r: Result, s: Seed) -> None:
    assert sorted(r.rows) == [("0.9.0", "traffic-camera", 1, 0, 1), ("1.2.3", "env-gateway", 1, 1, 0)], r


def _credential_age(r: Result, s: Seed) -> None:
    rows = [dict(zip(r.columns, row, strict=True)) for row in r.rows if row[1] == s.env]
    assert [(c["kind"], c["device"], c["age (days)"], c["days to rotation"]) for c in rows] == [
        ("broker", s.env, 100, -10)], r
    assert r.rows[0][-1] <= -10, "the most overdue credentials come first"
    assert "password_hash" not in r.columns


def _class_totals(r: Result, s: Seed) -> None:
    assert dict(r.rows) == s.class_totals, r


def _heat_total(r: Result, s: Seed) -> None:
    assert sum(v or 0 for row in r.rows for v in row[1:]) == sum(s.class_totals.values()), r


EXPECT: dict[str, Check] = {
    "City overview / Devices on the map: status and latest VN_AQI": _map,
    "City overview / VN_AQI now per district": _aqi_now,
    "City overview / Active alarms by severity": _one_critical,
    "Environment / Hourly VN_AQI per site": _aqi_series,
    "Environment / VN_AQI now per station": _aqi_now,
    "Alarms / Active alarms by severity": _one_critical,
    "Alarms / Active alarms": _contains("id", lambda s: s.alarm_id),
    "Alarms / Time to acknowledge (alarms raised in range)": _time_to_ack,
    "Alarms / Transitions (history)": _contains("alarm_id", lambda s: s.alarm_id),
    "Traffic / Vehicles per class (range total)": _class_totals,
    "Traffic / Vehicles by day x hour (heat map, Vietnam time)": _heat_total,
    "City overview / Devices online vs registered": _devices,
    "City overview / Dead letters (last hour)": _dead_count,
    "City overview / PM2.5 by site (µg/m³)": _tail(_series(lambda s: s.site, lambda s: s.pm25), 5),
    "City overview / PM10 by site (µg/m³)": _series(lambda s: s.site, lambda s: [v + 10 for v in s.pm25]),
    "City overview / Noise by site (dB(A))": _series(lambda s: s.site, lambda s: [60.0] * 5),
    "City overview / Water level (m)": _series(lambda s: f"{s.site} / {s.env}",
                                               lambda s: [1.5 + 0.1 * i for i in range(5)]),
    "City overview / Traffic counts per class": _totals("class_totals"),
    "City overview / Traffic counts per direction": _totals("direction_totals"),
    "City overview / Mean speed by site (km/h)": _series(lambda s: s.site, lambda s: [40.0] * 5),
    "City overview / Congestion level by site (0 free .. 4 jammed)": _series(
        lambda s: s.site, lambda s: [float(1 + i % 2) for i in range(5)]),
    "City overview / Dead letters by reason (last hour)": _dead_reason,
    "City overview / Latest dead letters (last hour)": _contains("reason", lambda s: s.reason_token),
    "Fleet health / Devices online vs registered": _devices,
    "Fleet health / Device status": _status,
    "Fleet health / CPU (%) per device": _series(lambda s: s.cam, lambda s: [50.0] * 5),
    "Fleet health / Agent memory (RSS) (MB) per device": _series(lambda s: s.env,
                                                                 lambda s: [80.0 + i for i in range(5)]),
    "Fleet health / Outbox depth (rows) per device": _series(lambda s: s.env,
                                                             lambda s: [float(i) for i in range(5)]),
    "Fleet health / Outbox rows dropped (total) (rows) per device": _series(lambda s: s.env,
                                                                            lambda s: [0.0] * 5),
    "Fleet health / Broker link per device": _link,
    "Fleet health / Ingest throughput": _contains("instance", lambda s: s.instance),
    "Fleet health / Ingest latency": _contains("instance", lambda s: s.instance),
    "Fleet health / Ingest instances": _contains("instance", lambda s: s.instance),
    "Fleet health / Device events": _contains("kind", lambda s: "door_open"),
    "Fleet health / Firmware versions": _firmware,
    "Fleet health / Credentials by age (rotation due after 90 days)": _credential_age,
}


# -- tests --------------------------------------------------------------------------------------------------
def test_dashboards_exist_and_every_key_panel_is_checked() -> None:
    assert {p.name for p in DASHBOARD_FILES} >= {"city-overview.json", "fleet-health.json", "environment.json",
                                                 "traffic.json", "alarms.json"}
    names = {q.name for q in QUERIES}
    assert not set(EXPECT) - names, f"checks for panels that no longer exist: {sorted(set(EXPECT) - names)}"


@pytest.mark.parametrize("sc", SCENARIOS, ids=lambda sc: sc.name)
@pytest.mark.parametrize("q", QUERIES, ids=lambda q: q.name)
def test_panel_query_runs(q: PanelQuery, sc: Scenario, seed: Seed, grafana_conn: psycopg.Connection,
                          has_timescaledb: bool) -> None:
    if sc.timescaledb and not has_timescaledb:
        pytest.skip("timescaledb extension not installed in the test database: the time_bucket() form "
                    "of $__timeGroup cannot run here (its text is checked in "
                    "test_macro_expansion_matches_grafana)")
    result = run(grafana_conn, q, sc, seed)
    if sc.check and q.name in EXPECT:
        EXPECT[q.name](result, seed)
    elif sc.selection == "all" and q.name in EXPECT and "site" in q.sql:
        assert result.rows, f"{q.name} [{sc.name}]: no rows with every site selected"


COUNT_TOTALS = {"City overview / Traffic counts per class": _totals("class_totals"),
                "City overview / Traffic counts per direction": _totals("direction_totals"),
                "Traffic / Vehicles per class (range total)": _class_totals,
                "Traffic / Vehicles by day x hour (heat map, Vietnam time)": _heat_total}


@pytest.mark.parametrize("timescaledb", [False, True], ids=["pg-macros", "ts-macros"])
def test_count_panels_over_30_days_read_the_hourly_counts_and_miss_nothing(
        timescaledb: bool, seed: Seed, grafana_conn: psycopg.Connection, has_timescaledb: bool) -> None:
    """Beyond two days the traffic panels read traffic_counts_1h, not raw rows: the same totals must come back."""
    if timescaledb and not has_timescaledb:
        pytest.skip("timescaledb extension not installed in the test database: time_bucket() cannot run here")
    sc = Scenario("30d-1h", timescaledb, timedelta(days=30), timedelta(hours=1), "seeded", check=True)
    for name, check in COUNT_TOTALS.items():
        q = next(q for q in QUERIES if q.name == name)
        assert "traffic_counts_1h" in q.sql, name
        check(run(grafana_conn, q, sc, seed), seed)


def test_committed_dashboards_are_what_build_py_makes() -> None:
    for name, dash in build().items():
        assert (GRAFANA / "dashboards" / name).read_text(encoding="utf-8") == render(dash), (
            f"{name} differs from cloud/grafana/build.py: run `python -m cloud.grafana.build`")


def test_a_dashboard_naming_a_missing_column_fails(seed: Seed, grafana_conn: psycopg.Connection) -> None:
    q = next(q for q in QUERIES if q.name == "Environment / VN_AQI now per station")
    broken = replace(q, sql=q.sql.replace("a.dominant", "a.no_such_column"))
    with pytest.raises(pytest.fail.Exception, match="no_such_column"):
        run(grafana_conn, broken, SCENARIOS[0], seed)


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_variable_queries_run(path: Path, seed: Seed, grafana_conn: psycopg.Connection) -> None:
    now = datetime.now(UTC)
    sites = [r[0] for r in grafana_conn.execute(
        interpolate(_load(path)["templating"]["list"][0]["query"], frm=now - timedelta(hours=6), to=now,
                    interval=timedelta(minutes=1), timescaledb=False)).fetchall()]
    assert seed.site in sites
    variables = resolve_variables(grafana_conn, _load(path), now - timedelta(hours=6), now, timedelta(minutes=1), False,
                                  {"site": [seed.site]})
    for name, var in variables.items():
        assert var.value, f"{path.name}: variable {name} returned nothing"
    assert sorted(variables["device"].value) == sorted([seed.env, seed.cam])
    if "profile" in variables:
        assert {"env-gateway", "traffic-camera"} <= set(variables["profile"].value)


def test_grafana_role_is_read_only(grafana_conn: psycopg.Connection, seed: Seed) -> None:
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        grafana_conn.execute("DELETE FROM dead_letters WHERE device_id = %s", (seed.env,))
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        grafana_conn.execute("SELECT * FROM ioc_settings")


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_dashboard_shape(path: Path) -> None:
    dash = _load(path)
    uid = yaml.safe_load(DATASOURCES.read_text())["datasources"][0]["uid"]
    ids = [p["id"] for p in _panels(dash["panels"])]
    assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
    known_metrics = {m for p in load_profiles().values() for m in p.metrics}
    for p in _panels(dash["panels"]):
        if p["type"] == "row":
            continue
        where = f"{dash['title']} / {p['title']}"
        assert p["datasource"]["uid"] == uid, where
        for t in p["targets"]:
            assert t["datasource"]["uid"] == uid, where
            assert t.get("rawQuery"), where
            assert t["format"] in ("table", "time_series"), where
            sql = t["rawSql"]
            assert "time_bucket" not in sql, f"{where}: write time grouping as $__timeGroup (both backends)"
            assert "--" not in sql, f"{where}: keep comments out of the SQL (Grafana 12 strips them)"
            assert "/*" not in sql, f"{where}: keep comments out of the SQL (Grafana 12 strips them)"
            used = set(re.findall(r"metric (?:=|IN \() ?'([a-z0-9_]+)'", sql))
            assert used <= known_metrics, f"{where}: metrics {used - known_metrics} are in no device profile"
    for var in dash["templating"]["list"]:
        assert var["datasource"]["uid"] == uid


def test_dashboard_uids_unique() -> None:
    uids = [_load(p)["uid"] for p in DASHBOARD_FILES]
    assert len(uids) == len(set(uids))


def test_provisioning_files_parse_and_point_at_the_dashboards() -> None:
    ds = yaml.safe_load(DATASOURCES.read_text())
    assert ds["apiVersion"] == 1
    (source,) = ds["datasources"]
    assert source["type"] in ("postgres", "grafana-postgresql-datasource")
    assert source["user"] == "ioc_grafana"
    assert source["jsonData"]["timescaledb"] == "${IOC_GRAFANA_TIMESCALEDB}"  # one file for both backends
    assert "password" in source["secureJsonData"]
    assert "password" not in source.get("jsonData", {})
    providers = yaml.safe_load(PROVIDERS.read_text())
    assert providers["apiVersion"] == 1
    (prov,) = providers["providers"]
    assert prov["type"] == "file"
    # The provider path is a container path: find the compose mount that serves it, check it is this folder.
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    mounts = {}
    for vol in compose["services"]["grafana"]["volumes"]:
        src, dst = vol.split(":")[:2]
        if src.startswith("."):
            mounts[dst] = (REPO / src).resolve()
    assert mounts.get(prov["options"]["path"]) == (GRAFANA / "dashboards").resolve()
    assert mounts.get("/etc/grafana/provisioning/datasources") == DATASOURCES.parent.resolve()
    assert mounts.get("/etc/grafana/provisioning/dashboards") == PROVIDERS.parent.resolve()
    # Every ${VAR} the datasource file needs is set for the grafana service.
    needed = set(re.findall(r"\$\{(\w+)\}", json.dumps(ds)))
    assert needed <= set(compose["services"]["grafana"]["environment"]), needed


# -- the helper mirrors Grafana (expected strings from Grafana's own macros_test.go) ------------------------
_FROM = datetime(2018, 4, 12, 18, 0, tzinfo=UTC)
_TO = _FROM + timedelta(minutes=5)


@pytest.mark.parametrize(("sql", "timescaledb", "expected"), [
    ("select $__time(time_column)", False, 'select time_column AS "time"'),
    ("WHERE $__timeFilter(time_column)", False,
     "WHERE time_column BETWEEN '2018-04-12T18:00:00Z' AND '2018-04-12T18:05:00Z'"),
    ("select $__timeFrom()", False, "select '2018-04-12T18:00:00Z'"),
    ("select $__timeTo()", False, "select '2018-04-12T18:05:00Z'"),
    ("SELECT $__timeGroup(time_column,'5m'), value", False,
     'SELECT floor(extract(epoch from time_column)/300)*300 AS "time", value'),
    ("SELECT $__timeGroup(time_column,'5m') as time, value", False,
     "SELECT floor(extract(epoch from time_column)/300)*300 as time, value"),
    ("$__timeGroupAlias(time_column , '5m')", False,
     'floor(extract(epoch from time_column)/300)*300 AS "time"'),
    ("GROUP BY $__timeGroup(time_column,'5m')", True, "GROUP BY time_bucket('300.000s',time_column)"),
    ("GROUP BY $__timeGroup(time_column , '12d')", True, "GROUP BY time_bucket('1036800.000s',time_column)"),
    ("GROUP BY $__timeGroup(time_column , '20ms')", True, "GROUP BY time_bucket('0.020s',time_column)"),
    ("GROUP BY $__timeGroup(ts, 12d)", False, "GROUP BY floor(extract(epoch from ts)/1.0368e+06)*1.0368e+06"),
])
def test_macro_expansion_matches_grafana(sql: str, timescaledb: bool, expected: str) -> None:
    assert expand_macros(sql, _FROM, _TO, timescaledb) == expected


def test_variables_and_interval_like_grafana() -> None:
    v = {"site": Variable(["a", "o'k"], multi=True, include_all=True), "one": Variable("x'y")}
    sql = "IN ($site) ${site:sqlstring} ${site:csv} [[one]] $__interval $__interval_ms $__unknown"
    assert interpolate(sql, frm=_FROM, to=_TO, interval=timedelta(seconds=90), timescaledb=False,
                       variables=v) == "IN ('a','o''k') 'a','o''k' a,o'k x''y 1m 90000 $__unknown"
    assert format_interval(timedelta(hours=25)) == "1d"
    with pytest.raises(MacroError):
        expand_macros("$__nope(x)", _FROM, _TO, False)
