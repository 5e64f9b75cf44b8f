"""Periodic upkeep: dead-letter retention on both backends; on the plain-PostgreSQL path partitions ahead,
retention and rollups; on TimescaleDB (whose policies do those) late data into the aggregates and policy
jobs that lag (cloud/db/timescale_upkeep.py).

Any number of ingest processes may call it; an advisory lock lets one do the work. Partition DDL waits
for a lock at most LOCK_TIMEOUT, less than PostgreSQL's deadlock_timeout (1 s): behind a writer's
transaction upkeep gives up and tries again next pass, so a writer never meets it in a deadlock.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import psycopg

from cloud.db.migrate import MIGRATION_LOCK_ID, current_backend
from cloud.db.timescale_upkeep import TimescaleUpkeep, run_timescale_upkeep
from cloud.db.upkeep_log import record_run

log = logging.getLogger(__name__)

_LOCK_ID = 0x10C_0002
PARTITIONED = ("telemetry", "traffic_counts")
LOCK_TIMEOUT = "500ms"
_TRIM_BATCH = 10_000  # dead letters deleted per statement, so one pass never holds a long lock


@dataclass
class MaintenanceResult:
    ran: bool
    partitions_created: int = 0
    partitions_dropped: int = 0
    rollup_minutes: int = 0
    timescale: TimescaleUpkeep | None = None
    dead_letters_deleted: int = 0
    skipped: str | None = None  # a step that gave up waiting for a lock (done next pass)


COMMITS_KEPT_S = 900  # telemetry_commits: the alarm evaluator looks back a few minutes at most


def settings(conn: psycopg.Connection) -> dict[str, str]:
    return dict(conn.execute("SELECT key, value FROM ioc_settings").fetchall())


def _try_lock(conn: psycopg.Connection, sql: str, lock_id: int) -> bool:
    row = conn.execute(sql, (lock_id,)).fetchone()
    return bool(row and row[0])


def run_maintenance(conn: psycopg.Connection) -> MaintenanceResult:
    """One pass; `conn` must be in autocommit mode. Never beside a migration (shared migration lock):
    its GRANTs racing TimescaleDB's chunk updates fail with "tuple concurrently updated"."""
    backend = current_backend(conn)
    if backend is None or not _try_lock(conn, "SELECT pg_try_advisory_lock(%s)", _LOCK_ID):
        return MaintenanceResult(ran=False)
    try:
        if not _try_lock(conn, "SELECT pg_try_advisory_lock_shared(%s)", MIGRATION_LOCK_ID):
            return MaintenanceResult(ran=False)
        try:
            deleted = trim_dead_letters(conn, int(settings(conn).get("dead_letter_retention_days", "14")))
            if deleted:
                log.info("maintenance: %d dead letters past retention deleted", deleted)
            conn.execute("DELETE FROM telemetry_commits WHERE committed_at < now() - %s * interval '1 second'",
                         (COMMITS_KEPT_S,))
            if backend == "timescale":
                return MaintenanceResult(ran=True, timescale=run_timescale_upkeep(conn), dead_letters_deleted=deleted)
            started = time.monotonic()
            try:
                res = _plain_upkeep(conn)
            except psycopg.errors.LockNotAvailable as e:
                res = MaintenanceResult(ran=True, skipped=f"waited over {LOCK_TIMEOUT} for a lock "
                                                          f"({e.diag.message_primary}); next pass")
                log.info("maintenance: %s", res.skipped)
            except psycopg.Error as e:
                record_run(conn, "postgres-upkeep", "Partitions, retention and rollups", started, str(e).strip())
                raise
            record_run(conn, "postgres-upkeep", "Partitions, retention and rollups", started, None)  # skip: ok
            res.dead_letters_deleted = deleted
            return res
        finally:
            conn.execute("SELECT pg_advisory_unlock_shared(%s)", (MIGRATION_LOCK_ID,))
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_ID,))


def trim_dead_letters(conn: psycopg.Connection, retention_days: int) -> int:
    """Delete dead letters older than the retention, a batch at a time; returns how many."""
    deleted = 0
    while True:
        cur = conn.execute(
            "DELETE FROM dead_letters WHERE id IN (SELECT id FROM dead_letters"
            " WHERE received_at < now() - make_interval(days => %s) ORDER BY received_at LIMIT %s)",
            (retention_days, _TRIM_BATCH))
        deleted += cur.rowcount
        if cur.rowcount < _TRIM_BATCH:
            return deleted


def _plain_upkeep(conn: psycopg.Connection) -> MaintenanceResult:
    cfg = settings(conn)
    ahead = int(cfg.get("partition_days_ahead", "7"))
    retention = int(cfg.get("retention_days", "90"))
    res = MaintenanceResult(ran=True)
    for table in PARTITIONED:
        with conn.transaction():
            conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            # Cover today..ahead, plus any older day the default partition holds (late backlog).
            row = conn.execute(
                f"SELECT ioc_ensure_partitions(%s,"
                f" (LEAST((SELECT min(ts) FROM {table}_default), now()) AT TIME ZONE 'UTC')::date,"
                " ((now() + make_interval(days => %s)) AT TIME ZONE 'UTC')::date)",
                (table, ahead),
            ).fetchone()
            res.partitions_created += row[0] if row else 0
            row = conn.execute("SELECT ioc_drop_partitions(%s, now() - make_interval(days => %s))",
                               (table, retention)).fetchone()
            res.partitions_dropped += row[0] if row else 0
    with conn.transaction():
        conn.execute("DELETE FROM events WHERE ts < now() - make_interval(days => %s)", (retention,))
    with conn.transaction():  # short: ingest's inserts into rollup_dirty wait only for this
        conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        conn.execute("SELECT ioc_take_dirty_rollups()")
    with conn.transaction():
        row = conn.execute("SELECT ioc_refresh_rollups()").fetchone()
        res.rollup_minutes = row[0] if row else 0
    if res.partitions_created or res.partitions_dropped or res.rollup_minutes:
        log.info("maintenance: %d partitions created, %d dropped, %d rollup minutes recomputed",
                 res.partitions_created, res.partitions_dropped, res.rollup_minutes)
    return res
