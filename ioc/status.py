"""What the system is doing right now, read from the database: for `ioc status` and the demo."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg


@dataclass
class SystemStatus:
    devices: int
    online: int
    telemetry_rows: int
    count_rows: int
    dead_letters: int
    instances: list[dict[str, object]]
    recent_dead: list[tuple[str, str]]
    jobs: list[dict[str, object]]
    dead_letter_bytes: int = 0  # on disk, table and indexes: bounded by retention and the payload budget
    silent: int = 0  # online by their last status, but nothing heard for several heartbeats (no will came)


def _estimate(conn: psycopg.Connection, table: str) -> int:
    """Exact counts of a big table are slow; sum the planner's per-partition estimates instead."""
    row = conn.execute(
        "SELECT COALESCE(sum(GREATEST(c.reltuples, 0)), 0)::bigint FROM pg_class c"
        " WHERE c.oid = %s::regclass OR c.oid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = %s::regclass)",
        (table, table),
    ).fetchone()
    return int(row[0]) if row else 0


def _rows(conn: psycopg.Connection, table: str, exact: bool) -> int:
    """Exact below a few million rows (cheap enough), the planner's estimate above."""
    estimate = _estimate(conn, table)
    if exact or estimate < 3_000_000:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        return int(row[0]) if row else 0
    return estimate


_TIMESCALE_JOBS = """
SELECT j.application_name AS job, j.schedule_interval AS every,
       GREATEST(NULLIF(s.last_successful_finish, '-infinity'), u.last_ok_at) AS last_ok,
       CASE WHEN u.last_run_at >= COALESCE(NULLIF(s.last_run_started_at, '-infinity'), '-infinity')
            THEN 'upkeep: ' || u.outcome
            ELSE 'worker: ' || lower(COALESCE(s.last_run_status, 'never run')) END AS outcome,
       CASE WHEN u.last_run_at >= COALESCE(NULLIF(s.last_run_started_at, '-infinity'), '-infinity')
            THEN u.error END AS error,
       GREATEST(now() - GREATEST(NULLIF(s.last_successful_finish, '-infinity'), u.last_ok_at, j.initial_start)
                - j.schedule_interval, interval '0') AS lag
FROM timescaledb_information.jobs j
LEFT JOIN timescaledb_information.job_stats s ON s.job_id = j.job_id
LEFT JOIN ioc_upkeep_runs u ON u.job = 'timescale:' || j.job_id
WHERE j.proc_name IN ('policy_compression', 'policy_retention', 'policy_refresh_continuous_aggregate')
ORDER BY j.job_id"""
_UPKEEP_STEPS = """
SELECT name AS job, NULL::interval AS every, last_ok_at AS last_ok, 'upkeep: ' || outcome AS outcome, error,
       now() - last_ok_at AS lag
FROM ioc_upkeep_runs WHERE job NOT LIKE 'timescale:%' ORDER BY job"""


def read_jobs(conn: psycopg.Connection) -> list[dict[str, object]]:
    """Each background job: when it last succeeded, the last outcome (the worker's or our upkeep's), its lag."""
    if conn.execute("SELECT to_regclass('ioc_upkeep_runs')").fetchone() == (None,):
        return []
    queries = [_UPKEEP_STEPS]
    if conn.execute("SELECT to_regclass('timescaledb_information.jobs')").fetchone() != (None,):
        queries.insert(0, _TIMESCALE_JOBS)
    out = []
    for q in queries:
        cur = conn.execute(q)
        cols = [d.name for d in cur.description or []]
        out += [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
    return out


def read_status(conn: psycopg.Connection, exact: bool = False) -> SystemStatus:
    def one(q: str) -> int:
        row = conn.execute(q).fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    cur = conn.execute(
        "SELECT instance, updated_at, messages, points, dead_letters, msg_rate, point_rate, latency_p50_ms,"
        " latency_p99_ms, lag_ms, in_flight, db_ok, now() - updated_at < interval '30 seconds' AS alive"
        " FROM ingest_instances ORDER BY instance"
    )
    cols = [d.name for d in cur.description or []]
    instances = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
    recent = conn.execute("SELECT topic, reason FROM dead_letters ORDER BY id DESC LIMIT 5").fetchall()
    return SystemStatus(
        devices=one("SELECT count(*) FROM devices"),
        online=one("SELECT count(*) FROM device_status WHERE online"),
        silent=one("SELECT count(*) FROM device_status WHERE online AND silent_since IS NOT NULL"),
        telemetry_rows=_rows(conn, "telemetry", exact),
        count_rows=_rows(conn, "traffic_counts", exact),
        dead_letters=one("SELECT count(*) FROM dead_letters"),
        instances=instances,
        recent_dead=[(t, r) for t, r in recent],
        jobs=read_jobs(conn),
        dead_letter_bytes=one("SELECT pg_total_relation_size('dead_letters')"),
    )
