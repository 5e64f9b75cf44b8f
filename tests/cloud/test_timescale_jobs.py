"""TimescaleDB's policies really run on this machine, and data stays exactly-once inside compressed chunks.

On PostgreSQL 15.20 the background worker commits a job's work and then records it as failed; the project's
upkeep runs any job that lags, so compression and retention happen on schedule either way."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest
from support import scratch_database, wait_until

from cloud.db.maintenance import run_maintenance
from cloud.db.migrate import migrate
from cloud.ingest.decode import Decoded, copy_timestamp
from cloud.ingest.writer import BatchWriter
from ioc.stack import Stack
from ioc.status import read_jobs

pytestmark = pytest.mark.backend_only("timescale")
DAY_MS = 86_400_000


@pytest.fixture
def fresh_dsn(stack: Stack) -> Iterator[str]:
    """A database of its own, so no other test's ingest runs upkeep on it meanwhile."""
    with scratch_database(stack, "tj") as dsn:
        migrate(dsn, "timescale")
        yield dsn


def _batch(device: str, stamps: list[int], value: float) -> list[Decoded]:
    lines = [f"{copy_timestamp(ts)}\t{device}\tpm25\t{value}\n" for ts in stamps]
    return [Decoded("tlm/v1/s/d/env", b"", device, telemetry=lines, minutes={ts // 60_000 for ts in stamps})]


def _chunks(conn: psycopg.Connection) -> list[tuple[str, bool]]:
    return [(str(r[0]), bool(r[1])) for r in conn.execute(
        "SELECT chunk_name, is_compressed FROM timescaledb_information.chunks WHERE hypertable_name = 'telemetry'"
        " ORDER BY range_start")]


def test_compression_and_retention_run_on_schedule_and_status_shows_them(fresh_dsn: str) -> None:
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO devices VALUES ('d1', 's', 'env-gateway')")
        conn.execute("INSERT INTO telemetry VALUES (now() - interval '120 days', 'd1', 'pm25', 1),"
                     " (now() - interval '10 days', 'd1', 'pm25', 2), (now(), 'd1', 'pm25', 3)")
        conn.execute("UPDATE ioc_settings SET value = '100' WHERE key = 'retention_days'")

        def done() -> bool:
            run_maintenance(conn)
            chunks = _chunks(conn)
            return len(chunks) == 2 and chunks[0][1] and not chunks[1][1]

        wait_until(done, timeout=60, interval=1, what="the 120-day chunk dropped, the 10-day one compressed")
        assert [r[0] for r in conn.execute("SELECT value FROM telemetry ORDER BY ts")] == [2.0, 3.0]
        drops = {r[0] for r in conn.execute("SELECT config->>'drop_after' FROM timescaledb_information.jobs"
                                            " WHERE proc_name = 'policy_retention'")}
        assert drops == {"100 days"}  # ioc_settings.retention_days is the one home of retention

        def policies_succeeded() -> list[dict[str, object]]:
            """Each policy job has a success on record, the worker's or upkeep's (a job the worker held at one
            pass is run at the next)."""
            run_maintenance(conn)
            policies = [j for j in read_jobs(conn) if "Policy" in str(j["job"])]
            return policies if all(j["last_ok"] is not None for j in policies) else []

        policies = wait_until(policies_succeeded, timeout=60, interval=1, what="every policy job run once")
        assert len(policies) >= 7  # compression x2, retention x3, aggregate refresh x2


def test_redelivery_into_a_compressed_chunk_stays_exactly_once(fresh_dsn: str) -> None:
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO devices VALUES ('d2', 's', 'env-gateway')")
    now = time.time_ns() // 1_000_000
    stamps = [now - 10 * DAY_MS + i * 60_000 for i in range(50)]
    writer = BatchWriter(fresh_dsn, "test-compressed", mark_rollups=True)
    try:
        writer.write(_batch("d2", stamps, 7.0))
        with psycopg.connect(fresh_dsn, autocommit=True) as conn:
            conn.execute("SELECT compress_chunk(c, if_not_compressed => true)"
                         " FROM show_chunks('telemetry', older_than => interval '7 days') c")
            assert all(compressed for _, compressed in _chunks(conn))
        # The same batch again (ingest crashed between commit and ack), then one with new rows beside old ones.
        writer.write(_batch("d2", stamps, 7.0))
        writer.write(_batch("d2", stamps[-10:] + [stamps[-1] + 60_000 * k for k in range(1, 6)], 7.0))
        with psycopg.connect(fresh_dsn, autocommit=True) as conn:
            row = conn.execute("SELECT count(*), count(DISTINCT ts) FROM telemetry WHERE device_id = 'd2'").fetchone()
            assert row == (55, 55)
            conn.execute("UPDATE rollup_dirty SET marked_at = NULL")  # settled: no batch will follow
            wait_until(lambda: run_maintenance(conn).ran, what="an upkeep pass")
            assert conn.execute("SELECT count(*) FROM rollup_dirty").fetchone() == (0,)
            agg = conn.execute("SELECT sum(n) FROM telemetry_1m WHERE device_id = 'd2'").fetchone()
            assert agg == (55,)  # the aggregate counts each reading once too
    finally:
        writer.close()
