"""Periodic upkeep for the plain-PostgreSQL path: partitions ahead, retention, rollups.

TimescaleDB does all three with its own policies, so there this is a no-op. Any number of ingest
processes may call it; an advisory lock lets one do the work.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psycopg

from cloud.db.migrate import current_backend

log = logging.getLogger(__name__)

_LOCK_ID = 0x10C_0002
PARTITIONED = ("telemetry", "traffic_counts")


@dataclass
class MaintenanceResult:
    ran: bool
    partitions_created: int = 0
    partitions_dropped: int = 0
    rollup_minutes: int = 0


def settings(conn: psycopg.Connection) -> dict[str, str]:
    return dict(conn.execute("SELECT key, value FROM ioc_settings").fetchall())


def run_maintenance(conn: psycopg.Connection) -> MaintenanceResult:
    """One pass; `conn` must be in autocommit mode."""
    if current_backend(conn) != "postgres":
        return MaintenanceResult(ran=False)
    locked = conn.execute("SELECT pg_try_advisory_lock(%s)", (_LOCK_ID,)).fetchone()
    if not locked or not locked[0]:
        return MaintenanceResult(ran=False)
    try:
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
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_ID,))
