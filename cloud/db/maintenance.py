"""Periodic upkeep: on the plain-PostgreSQL path partitions ahead, retention and rollups; on TimescaleDB
(whose policies do those) late data into the aggregates and policy jobs that lag (cloud/db/timescale_upkeep.py).

Any number of ingest processes may call it; an advisory lock lets one do the work.
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


@dataclass
class MaintenanceResult:
    ran: bool
    partitions_created: int = 0
    partitions_dropped: int = 0
    rollup_minutes: int = 0
    timescale: TimescaleUpkeep | None = None


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
            if backend == "timescale":
                return MaintenanceResult(ran=True, timescale=run_timescale_upkeep(conn))
            started = time.monotonic()
            try:
                res = _plain_upkeep(conn)
            except psycopg.Error as e:
                record_run(conn, "postgres-upkeep", "Partitions, retention and rollups", started, str(e).strip())
                raise
            record_run(conn, "postgres-upkeep", "Partitions, retention and rollups", started, None)
            return res
        finally:
            conn.execute("SELECT pg_advisory_unlock_shared(%s)", (MIGRATION_LOCK_ID,))
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_ID,))


def _plain_upkeep(conn: psycopg.Connection) -> MaintenanceResult:
    cfg = settings(conn)
    ahead = int(cfg.get("partition_days_ahead", "7"))
    retention = int(cfg.get("retention_days", "90"))
    res = MaintenanceResult(ran=True)
    for table in PARTITIONED:
        with conn.transaction():
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
        conn.execute("SELECT ioc_take_dirty_rollups()")
    with conn.transaction():
        row = conn.execute("SELECT ioc_refresh_rollups()").fetchone()
        res.rollup_minutes = row[0] if row else 0
    if res.partitions_created or res.partitions_dropped or res.rollup_minutes:
        log.info("maintenance: %d partitions created, %d dropped, %d rollup minutes recomputed",
                 res.partitions_created, res.partitions_dropped, res.rollup_minutes)
    return res
