"""Upkeep on the TimescaleDB path: late data into the continuous aggregates, and policy jobs that lag.

TimescaleDB keeps compression, retention and the aggregates current with its own policy jobs, but two
gaps remain, and this module closes them:

- A refresh policy only covers its own window, and real-time aggregation only reads rows above an
  aggregate's watermark: a box's backlog delivered days late would never reach telemetry_1m/_1h. Ingest
  marks the minutes each batch touched (rollup_dirty, as on the plain path); here exactly those windows are
  refreshed, merged into few calls, and the stored hourly VN_AQI (vn_aqi_1h, migration 0080) of those hours
  recomputed (every dirty minute, late or not: the current hour's AQI changes as its data arrives).
- On PostgreSQL 15.20 the background worker commits a job's work and then records it as failed, so failed
  runs back off for minutes. Any policy job whose last success (by the worker or by us) is older than its
  schedule is run here with `CALL run_job`, and the outcome kept in ioc_upkeep_runs for `ioc status`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import psycopg

from cloud.db.upkeep_log import record_run

log = logging.getLogger(__name__)

MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
MERGE_GAP = timedelta(minutes=15)  # refresh neighbouring dirty windows in one call when this close
TAKE_LOCK_TIMEOUT = "500ms"  # as the plain path's (cloud/db/maintenance.py)
MAX_PENDING = 100_000  # minutes taken per pass (about 70 days of one late box)
POLICIES = ("policy_compression", "policy_retention", "policy_refresh_continuous_aggregate")


@dataclass
class TimescaleUpkeep:
    late_minutes: int = 0
    refresh_calls: int = 0
    jobs_run: int = 0
    jobs_failed: int = 0


def windows(buckets: list[datetime], width: timedelta, gap: timedelta = MERGE_GAP) -> list[tuple[datetime, datetime]]:
    """Sorted bucket starts -> [start, end) ranges, merging buckets that lie within `gap` of each other."""
    out: list[tuple[datetime, datetime]] = []
    for b in sorted(set(buckets)):
        if out and b - out[-1][1] <= gap:
            out[-1] = (out[-1][0], b + width)
        else:
            out.append((b, b + width))
    return out


def _refresh(conn: psycopg.Connection, view: str, lo: datetime, hi: datetime) -> None:
    conn.execute(f"CALL refresh_continuous_aggregate('{view}', %s::timestamptz, %s::timestamptz)", (lo, hi))


def refresh_late_aggregates(conn: psycopg.Connection) -> tuple[int, int]:
    """Refresh the 1-minute aggregate over every complete dirty minute, then the 1-hour one over every
    complete hour they fall in (the hour still under way is read in real time), then the hourly VN_AQI of
    all those hours. Returns (minutes, calls)."""
    with conn.transaction():  # short: ingest's marks wait only for this (and a lock wait gives up: next pass)
        conn.execute(f"SET LOCAL lock_timeout = '{TAKE_LOCK_TIMEOUT}'")
        conn.execute("SELECT ioc_take_dirty_rollups()")
    minutes = [r[0] for r in conn.execute(
        "SELECT bucket FROM rollup_pending ORDER BY bucket LIMIT %s", (MAX_PENDING,))]
    if not minutes:
        return 0, 0
    row = conn.execute("SELECT now()").fetchone()
    now: datetime = row[0] if row else datetime.now().astimezone()
    calls = 0
    for lo, hi in windows(minutes, MINUTE):
        _refresh(conn, "telemetry_1m", lo, hi)
        calls += 1
    hours = [m.replace(minute=0, second=0, microsecond=0) for m in minutes]
    for lo, hi in windows([h for h in hours if h + HOUR <= now], HOUR, gap=timedelta(0)):
        _refresh(conn, "telemetry_1h", lo, hi)
        _refresh(conn, "traffic_counts_1h", lo, hi)
        calls += 2
    conn.execute("SELECT ioc_refresh_vn_aqi(%s)", (minutes,))  # after telemetry_1h: it reads the hourly means
    conn.execute("DELETE FROM rollup_pending WHERE bucket = ANY(%s)", (minutes,))
    return len(minutes), calls


def _due_jobs(conn: psycopg.Connection) -> list[tuple[int, str]]:
    """Policy jobs whose last success, by the background worker or by this upkeep, is older than their schedule."""
    return [(int(r[0]), str(r[1])) for r in conn.execute(
        "SELECT j.job_id, j.application_name FROM timescaledb_information.jobs j"
        " LEFT JOIN timescaledb_information.job_stats s ON s.job_id = j.job_id"
        " LEFT JOIN ioc_upkeep_runs u ON u.job = 'timescale:' || j.job_id"
        " WHERE j.proc_name = ANY(%s) AND j.scheduled"
        "   AND GREATEST(COALESCE(s.last_successful_finish, '-infinity'), COALESCE(u.last_ok_at, '-infinity'))"
        "       + j.schedule_interval <= now()"
        " ORDER BY j.job_id", (list(POLICIES),))]


def run_lagging_jobs(conn: psycopg.Connection) -> tuple[int, int]:
    """Run each due policy job once; a failing job is recorded and the others still run. Returns (run, failed)."""
    ran = failed = 0
    for job_id, name in _due_jobs(conn):
        started, error = time.monotonic(), None
        try:
            conn.execute("CALL run_job(%s)", (job_id,))
        except psycopg.errors.LockNotAvailable:  # the background worker runs it right now: not lagging
            continue
        except psycopg.Error as e:
            error = (e.diag.message_primary or str(e)).strip()
            log.warning("timescale job %s failed: %s", name, error)
            failed += 1
        record_run(conn, f"timescale:{job_id}", name, started, error)
        ran += 1
    return ran, failed


def sync_retention(conn: psycopg.Connection) -> int:
    """ioc_settings.retention_days is the one home of retention: every retention policy follows it."""
    changed = conn.execute(
        "SELECT alter_job(j.job_id, config => jsonb_set(j.config, '{drop_after}', to_jsonb(r.days || ' days')))"
        " FROM timescaledb_information.jobs j,"
        "      (SELECT value AS days FROM ioc_settings WHERE key = 'retention_days') r"
        " WHERE j.proc_name = 'policy_retention'"
        "   AND (j.config->>'drop_after')::interval <> make_interval(days => r.days::int)").fetchall()
    if changed:
        log.info("retention policies set to ioc_settings.retention_days (%d changed)", len(changed))
    return len(changed)


def run_timescale_upkeep(conn: psycopg.Connection) -> TimescaleUpkeep:
    """One pass; `conn` in autocommit mode (refresh and run_job refuse to run inside a transaction block)."""
    res = TimescaleUpkeep()
    sync_retention(conn)
    started, error = time.monotonic(), None
    try:
        res.late_minutes, res.refresh_calls = refresh_late_aggregates(conn)
    except psycopg.errors.LockNotAvailable:  # a policy refresh holds the aggregate: the minutes wait a pass
        log.debug("late aggregates: concurrent refresh, retried next pass")
    except psycopg.Error as e:
        error = (e.diag.message_primary or str(e)).strip()
        log.warning("refreshing late aggregates failed: %s", error)
    if res.late_minutes or error:
        record_run(conn, "late-aggregates", "Refresh of late-data windows", started, error)
    res.jobs_run, res.jobs_failed = run_lagging_jobs(conn)
    return res
