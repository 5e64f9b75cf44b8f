"""Schema, migrations and upkeep on the real servers: a TimescaleDB one and a plain PostgreSQL one."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from support import scratch_database

from cloud.db.maintenance import run_maintenance
from cloud.db.migrate import available_migrations, migrate
from cloud.ingest.writer import mark_dirty
from ioc.stack import Stack


@pytest.fixture
def fresh_db(stack: Stack) -> Iterator[str]:
    """An empty database on the test server, dropped afterwards."""
    with scratch_database(stack) as dsn:
        yield dsn


def test_migrations_are_idempotent_and_record_the_backend(fresh_db: str, backend: str) -> None:
    chosen, applied = migrate(fresh_db)
    assert chosen == backend  # auto picks TimescaleDB exactly where the server preloads it
    assert applied == sorted({m.version for m in available_migrations() if m.backend in (None, chosen)})
    assert migrate(fresh_db) == (chosen, [])
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("SELECT value FROM ioc_settings WHERE key = 'timeseries_backend'").fetchone() == (chosen,)


@pytest.mark.backend_only("postgres")
def test_asking_for_timescale_where_the_server_cannot_load_it_fails_with_what_to_do(fresh_db: str) -> None:
    """Installed but not preloaded (this server), or not installed at all: one line that says what to change,
    never a FATAL that closes the migrator's connection."""
    with pytest.raises(RuntimeError, match=r"shared_preload_libraries|timescaledb extension is not installed"):
        migrate(fresh_db, "timescale")
    assert migrate(fresh_db)[0] == "postgres"  # and auto falls back on the same database, which still works


@pytest.mark.backend_only("timescale")
def test_a_database_never_switches_backend_under_its_data(fresh_db: str) -> None:
    migrate(fresh_db)
    with pytest.raises(RuntimeError, match="migrated for the timescale backend"):
        migrate(fresh_db, "postgres")


@pytest.mark.backend_only("postgres")
def test_late_backlog_lands_in_a_partition_made_for_it(fresh_db: str) -> None:
    migrate(fresh_db)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("INSERT INTO telemetry VALUES (now() - interval '30 days', 'd1', 'pm25', 10)")
        assert conn.execute("SELECT tableoid::regclass::text FROM telemetry").fetchone() == ("telemetry_default",)
        res = run_maintenance(conn)
        assert res.ran
        assert res.partitions_created >= 1
        (part,) = conn.execute("SELECT tableoid::regclass::text FROM telemetry").fetchone()  # type: ignore[misc]
        assert part.startswith("telemetry_p")
        assert conn.execute("SELECT count(*) FROM telemetry_default").fetchone() == (0,)
        # ...and partitions exist ahead of time for the coming week.
        ahead = conn.execute("SELECT count(*) FROM pg_inherits WHERE inhparent = 'telemetry'::regclass"
                             " AND inhrelid::regclass::text > 'telemetry_p' || to_char(now(), 'YYYYMMDD')").fetchone()
        assert ahead is not None
        assert ahead[0] >= 7


@pytest.mark.backend_only("postgres")
def test_retention_drops_whole_old_partitions(fresh_db: str) -> None:
    migrate(fresh_db)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("SELECT ioc_ensure_partitions('telemetry', (now() - interval '200 days')::date,"
                     " (now() - interval '200 days')::date)")
        conn.execute("INSERT INTO telemetry VALUES (now() - interval '200 days', 'd1', 'pm25', 1),"
                     " (now(), 'd1', 'pm25', 2)")
        dropped = conn.execute("SELECT ioc_drop_partitions('telemetry', now() - interval '90 days')").fetchone()
        assert dropped == (1,)
        assert conn.execute("SELECT value FROM telemetry").fetchall() == [(2.0,)]


@pytest.mark.backend_only("postgres")
def test_rollups_recompute_touched_minutes_without_double_counting(fresh_db: str) -> None:
    migrate(fresh_db)
    minute = "date_bin('1 minute', now() - interval '2 hours', timestamptz '2000-01-01')"
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        for value, offset in ((10, 1), (20, 2), (30, 3)):
            conn.execute(f"INSERT INTO telemetry VALUES ({minute} + interval '{offset} seconds',"
                         f" 'd1', 'pm25', {value})")
        conn.execute(f"INSERT INTO rollup_dirty VALUES ('i1', {minute})")
        run_maintenance(conn)
        row = conn.execute(f"SELECT n, total, min, max, mean FROM telemetry_1m WHERE bucket = {minute}").fetchone()
        assert row == (3, 60.0, 10.0, 30.0, 20.0)
        # A late reading for the same minute, marked dirty twice (two ingest instances): recomputed, not added.
        conn.execute(f"INSERT INTO telemetry VALUES ({minute} + interval '50 seconds', 'd1', 'pm25', 40)")
        conn.execute(f"INSERT INTO rollup_dirty VALUES ('i1', {minute}), ('i2', {minute})")
        run_maintenance(conn)
        row = conn.execute(f"SELECT n, total, max FROM telemetry_1m WHERE bucket = {minute}").fetchone()
        assert row == (4, 100.0, 40.0)
        hour = conn.execute(f"SELECT n, mean FROM telemetry_1h WHERE bucket = date_trunc('hour', {minute}, 'UTC')"
                            ).fetchone()
        assert hour == (4, 25.0)
        assert conn.execute("SELECT count(*) FROM rollup_dirty").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM rollup_pending").fetchone() == (0,)
        # The minute still under way waits until it is complete: aggregated once, not at every pass.
        now_minute = "date_bin('1 minute', now(), timestamptz '2000-01-01')"
        conn.execute("INSERT INTO telemetry VALUES (now(), 'd1', 'pm25', 5)")
        conn.execute(f"INSERT INTO rollup_dirty VALUES ('i1', {now_minute})")
        run_maintenance(conn)
        assert conn.execute(f"SELECT count(*) FROM telemetry_1m WHERE bucket = {now_minute}").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM rollup_dirty").fetchone() == (1,)


def test_a_minute_ingest_still_writes_to_is_recomputed_once_batches_stop_reaching_it(fresh_db: str,
                                                                                     backend: str) -> None:
    """Ingest running behind keeps writing minutes long past: each is aggregated once it settles, not at every
    upkeep pass (a whole minute of every device each time); a steady trickle still gets in after 5 minutes."""
    migrate(fresh_db)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        row = conn.execute("SELECT date_bin('1 minute', now() - interval '2 hours', timestamptz '2000-01-01')"
                           ).fetchone()
        assert row is not None
        minute = row[0]
        epoch_minute = int(minute.timestamp()) // 60

        def ingest_writes(value: float) -> None:
            conn.execute("INSERT INTO telemetry VALUES (%s + %s * interval '1 second', 'd1', 'pm25', %s)",
                         (minute, value, value))
            mark_dirty(conn, "i1", [epoch_minute])

        def stored() -> tuple[int, float] | None:
            got = conn.execute("SELECT n, total FROM telemetry_1m WHERE device_id = 'd1' AND bucket = %s",
                               (minute,)).fetchone()
            return None if got is None else (int(got[0]), float(got[1]))

        ingest_writes(10)
        run_maintenance(conn)
        assert conn.execute("SELECT count(*) FROM rollup_dirty").fetchone() == (1,)  # marked a moment ago: waits
        if backend == "postgres":  # (TimescaleDB reads rows above the aggregate's watermark in real time)
            assert stored() is None
        conn.execute("UPDATE rollup_dirty SET marked_at = now() - interval '11 seconds'")  # no batch since
        run_maintenance(conn)
        assert conn.execute("SELECT count(*) FROM rollup_dirty").fetchone() == (0,)
        assert stored() == (1, 10.0)
        ingest_writes(20)  # still marked a moment ago, but the minute has been waiting for 6 minutes
        conn.execute("UPDATE rollup_dirty SET first_marked_at = now() - interval '6 minutes'")
        run_maintenance(conn)
        assert conn.execute("SELECT count(*) FROM rollup_dirty").fetchone() == (0,)
        assert stored() == (2, 30.0)
        # Two ingest processes: the minute waits for the one still writing to it.
        ingest_writes(30)
        mark_dirty(conn, "i2", [epoch_minute])
        conn.execute("UPDATE rollup_dirty SET marked_at = now() - interval '11 seconds' WHERE instance = 'i1'")
        run_maintenance(conn)
        assert conn.execute("SELECT count(*) FROM rollup_dirty").fetchone() == (2,)
        conn.execute("UPDATE rollup_dirty SET marked_at = now() - interval '11 seconds'")
        run_maintenance(conn)
        assert conn.execute("SELECT count(*) FROM rollup_dirty").fetchone() == (0,)
        assert stored() == (3, 60.0)


@pytest.mark.backend_only("timescale")
def test_timescale_path_creates_hypertables_compression_retention_and_aggregates(fresh_db: str) -> None:
    backend, _ = migrate(fresh_db, "timescale")
    assert backend == "timescale"
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        hypertables = {r[0] for r in conn.execute("SELECT hypertable_name FROM timescaledb_information.hypertables")}
        assert {"telemetry", "traffic_counts", "events"} <= hypertables
        jobs = {(r[0], r[1]) for r in conn.execute(
            "SELECT proc_name, hypertable_name FROM timescaledb_information.jobs WHERE hypertable_name IS NOT NULL")}
        assert ("policy_compression", "telemetry") in jobs
        assert ("policy_retention", "telemetry") in jobs
        caggs = {r[0] for r in conn.execute("SELECT view_name FROM timescaledb_information.continuous_aggregates")}
        assert {"telemetry_1m", "telemetry_1h"} <= caggs
        conn.execute("INSERT INTO telemetry VALUES (now() - interval '5 minutes', 'd1', 'pm25', 10),"
                     " (now() - interval '5 minutes', 'd1', 'pm25', 10) ON CONFLICT DO NOTHING")
        # Real-time aggregation: the same query the dashboards run sees the fresh row.
        assert conn.execute("SELECT sum(n) FROM telemetry_1m WHERE device_id = 'd1'").fetchone() == (1,)
