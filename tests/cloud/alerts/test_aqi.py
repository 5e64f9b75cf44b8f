"""VN_AQI against the worked examples of Decision 1459/QĐ-TCMT (section 2.3), and the SQL functions of
migration 0031 against the Python ones on the same data in the real database."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from alerts_support import refresh_aggregates

from cloud.alerts.aqi import BANDS, band_for, daily_aqi, hourly_aqi, nowcast, round_half_up, sub_index
from cloud.db.devices import register_devices
from cloud.db.migrate import current_backend
from ioc.stack import Stack

# Section 2.3 a: PM2.5 hourly means from 09:00 to 20:00; c1 is 20:00, the newest.
EXAMPLE_PM25 = [26.9, 24.7, 20.5, 23.5, 19.5, 16.5, 19.0, 16.5, 20.3, 22.4, 19.6, 20.6]


def test_nowcast_matches_the_decisions_worked_example() -> None:
    assert nowcast(list(reversed(EXAMPLE_PM25))) == pytest.approx(20.3, abs=0.05)


def test_hourly_and_daily_sub_indices_match_the_worked_examples() -> None:
    assert round_half_up(sub_index("pm25", 20.3)) == 41        # 2.3 b: AQI(PM2.5) = 41
    assert daily_aqi({"pm25": 55.7}) == 110                    # 2.3 c: AQI(PM2.5) = 110
    got = hourly_aqi({"pm25": list(reversed(EXAMPLE_PM25))})
    assert got is not None
    assert (got.aqi, got.dominant, got.band.key) == (41, "pm25", "good")


@pytest.mark.parametrize(("metric", "c", "aqi"), [
    ("pm25", 0, 0), ("pm25", 25, 50), ("pm25", 50, 100), ("pm25", 80, 150), ("pm25", 150, 200),
    ("pm25", 250, 300), ("pm25", 350, 400), ("pm25", 500, 500), ("pm25", 900, 500),
    ("pm10", 50, 50), ("pm10", 150, 100), ("pm10", 420, 300), ("pm10", 600, 500), ("pm10", 100, 75),
])
def test_breakpoints_of_table_2(metric: str, c: float, aqi: int) -> None:
    assert round_half_up(sub_index(metric, c)) == aqi


def test_nowcast_needs_two_of_the_last_three_hours_and_weights_missing_hours_zero() -> None:
    assert nowcast([None, None, 30.0, 30.0]) is None
    assert nowcast([30.0, None, None]) is None
    assert nowcast([30.0, None, 30.0]) == pytest.approx(30.0)
    # w floors at 1/2: a sudden rise counts the current hour at half the weight of... the rest geometric.
    assert nowcast([100.0, 10.0]) == pytest.approx((100 + 0.5 * 10) / 1.5)


def test_bands_and_official_colours_of_table_1() -> None:
    assert [(b.low, b.high, b.hex) for b in BANDS] == [
        (0, 50, "#00E400"), (51, 100, "#FFFF00"), (101, 150, "#FF7E00"), (151, 200, "#FF0000"),
        (201, 300, "#8F3F97"), (301, 500, "#7E0023")]
    assert band_for(50.4).key == "good"
    assert band_for(50.5).key == "moderate"
    assert band_for(700).key == "hazardous"


def test_pm10_dominates_when_its_index_is_higher() -> None:
    got = hourly_aqi({"pm25": [20.0, 20.0], "pm10": [300.0, 300.0]})
    assert got is not None
    assert (got.aqi, got.dominant) == (175, "pm10")


# -- the SQL computation agrees with the Python one ----------------------------------------------------------
def test_sql_vn_aqi_agrees_with_python_on_the_same_data(stack: Stack) -> None:
    rng = random.Random(7)
    dev, site = f"aqi-{uuid.uuid4().hex[:8]}", f"aqisite-{uuid.uuid4().hex[:6]}"
    top = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    hours = [top - timedelta(hours=h) for h in range(30)]  # newest first
    missing = {3, 4, 10, 17, 18}  # gaps, including two in a row
    rows, means = [], {"pm25": {}, "pm10": {}}
    for i, h in enumerate(hours):
        if i in missing:
            continue
        level = 20 + 150 * (i % 7 == 0) + rng.uniform(0, 60)  # episodes make w drop below 1/2
        for metric, scale in (("pm25", 1.0), ("pm10", 1.8)):
            values = [level * scale + rng.uniform(-5, 5) for _ in range(4)]
            rows += [(h + timedelta(minutes=5 + 12 * k), dev, metric, max(v, 0.0)) for k, v in enumerate(values)]
            means[metric][h] = sum(max(v, 0.0) for v in values) / 4
    if rng.random() < 2:  # pm10 absent in one hour where pm25 exists: only pm25 counts there
        rows = [r for r in rows if not (r[0] - timedelta(minutes=r[0].minute) == hours[6] and r[2] == "pm10")]
        means["pm10"].pop(hours[6], None)
    with psycopg.connect(stack.dsn, autocommit=True) as conn:
        register_devices(conn, [(dev, site, "env-gateway")])
        conn.cursor().executemany("INSERT INTO telemetry (ts, device_id, metric, value) VALUES (%s, %s, %s, %s)",
                                  rows)
        refresh_aggregates(stack.dsn, [r[0] for r in rows])
        got = {r[0]: (r[1], r[2], r[3], r[4]) for r in conn.execute(
            "SELECT hour, pm25_nowcast, pm10_nowcast, aqi, dominant FROM ioc_vn_aqi_hourly(%s, %s)"
            " WHERE device_id = %s", (hours[17], hours[0], dev)).fetchall()}
        try:
            assert sorted(got) == sorted(hours[:18])
            computed = 0
            for i, h in enumerate(hours[:18]):
                series = {m: [means[m].get(hours[j]) if j < len(hours) else None for j in range(i, i + 12)]
                          for m in ("pm25", "pm10")}
                want = hourly_aqi(series)
                n25, n10, aqi, dominant = got[h]
                if want is None:
                    assert aqi is None, h
                    continue
                computed += 1
                assert aqi == want.aqi, (h, got[h], want)
                assert dominant == want.dominant
                assert n25 == pytest.approx(want.nowcasts.get("pm25"), rel=1e-9) if n25 else "pm25" not in want.nowcasts
                assert n10 == pytest.approx(want.nowcasts.get("pm10"), rel=1e-9) if n10 else "pm10" not in want.nowcasts
            assert computed >= 14  # the data is not trivially empty
            bands = conn.execute("SELECT ioc_vn_aqi_band(a) FROM unnest(ARRAY[0, 50, 51, 150, 151, 301]) a").fetchall()
            assert [b[0] for b in bands] == ["good", "good", "moderate", "poor", "bad", "hazardous"]
        finally:
            for table in ("telemetry",) + (("telemetry_1m", "telemetry_1h") if current_backend(conn) == "postgres"
                                           else ()):
                conn.execute(f"DELETE FROM {table} WHERE device_id = %s", (dev,))
            conn.execute("DELETE FROM devices WHERE device_id = %s", (dev,))


def _stored_and_computed(conn: psycopg.Connection, dev: str, since: datetime) -> tuple[list[tuple], list[tuple]]:
    cols = "hour, pm25_nowcast, pm10_nowcast, aqi, dominant"
    stored = conn.execute(f"SELECT {cols} FROM vn_aqi_1h WHERE device_id = %s AND hour <= now() ORDER BY hour",
                          (dev,)).fetchall()
    computed = conn.execute(f"SELECT {cols} FROM ioc_vn_aqi_hourly(%s, now()) WHERE device_id = %s"
                            " AND aqi IS NOT NULL ORDER BY hour", (since, dev)).fetchall()
    return stored, computed


def _assert_same(stored: list[tuple], computed: list[tuple]) -> None:
    """Hours, AQI and dominant parameter exactly; NowCasts to the last bits (TimescaleDB re-materialising an
    hour may sum its minutes in another order)."""
    assert [(r[0], r[3], r[4]) for r in stored] == [(r[0], r[3], r[4]) for r in computed]
    for s, c in zip(stored, computed, strict=True):
        assert s[1:3] == pytest.approx(c[1:3], rel=1e-12), s[0]


def test_stored_hourly_vn_aqi_is_the_functions_and_follows_a_late_hour(stack: Stack) -> None:
    """The dashboards read vn_aqi_1h (migration 0080): after upkeep it holds exactly what ioc_vn_aqi_hourly()
    computes, the current hour included, and a late hour changes the NowCast of the hours after it."""
    dev, site = f"aqis-{uuid.uuid4().hex[:8]}", f"aqisite-{uuid.uuid4().hex[:6]}"
    now = datetime.now(UTC)
    top = now.replace(minute=0, second=0, microsecond=0)
    hours = [top - timedelta(hours=h) for h in range(1, 21)]  # newest first, complete hours
    gap = hours[12]  # missing at first, delivered late

    def readings(h: datetime, level: float) -> list[tuple[datetime, str, str, float]]:
        return [(h + timedelta(minutes=10 * k + 3), dev, metric, level * scale + k)
                for k in range(3) for metric, scale in (("pm25", 1.0), ("pm10", 1.7))]

    first = [r for i, h in enumerate(hours) if h != gap for r in readings(h, 30 + 7 * (i % 5))]
    first += [(now - timedelta(minutes=1), dev, "pm25", 55.0)]  # the hour under way
    late = readings(gap, 400.0)  # an episode: w drops, the following hours' NowCast rises
    insert = "INSERT INTO telemetry (ts, device_id, metric, value) VALUES (%s, %s, %s, %s)"
    with psycopg.connect(stack.dsn, autocommit=True) as conn:
        register_devices(conn, [(dev, site, "env-gateway")])
        try:
            conn.cursor().executemany(insert, first)
            refresh_aggregates(stack.dsn, [r[0] for r in first])
            before, computed = _stored_and_computed(conn, dev, hours[-1])
            _assert_same(before, computed)
            assert len(before) >= 18  # not trivially empty
            assert before[-1][0] == top  # the hour under way is there

            conn.cursor().executemany(insert, late)
            refresh_aggregates(stack.dsn, [r[0] for r in late])
            after, computed = _stored_and_computed(conn, dev, hours[-1])
            _assert_same(after, computed)
            was = {r[0]: r for r in before}
            changed = {r[0] for r in after if was.get(r[0]) != r}
            assert gap in changed
            assert gap + timedelta(hours=11) in changed  # the 11 hours after it read it too
        finally:
            for table in ("telemetry", "vn_aqi_1h") + (("telemetry_1m", "telemetry_1h")
                                                       if current_backend(conn) == "postgres" else ()):
                conn.execute(f"DELETE FROM {table} WHERE device_id = %s", (dev,))
            conn.execute("DELETE FROM devices WHERE device_id = %s", (dev,))
