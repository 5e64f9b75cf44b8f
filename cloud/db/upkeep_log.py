"""The outcome of each upkeep step, kept in ioc_upkeep_runs so `ioc status` can show what ran, when, and lag."""

from __future__ import annotations

import time

import psycopg


def record_run(conn: psycopg.Connection, job: str, name: str, started: float, error: str | None) -> None:
    conn.execute(
        "INSERT INTO ioc_upkeep_runs AS u (job, name, last_run_at, last_ok_at, outcome, error, duration_ms)"
        " VALUES (%s, %s, now(), CASE WHEN %s::text IS NULL THEN now() END, %s, %s, %s)"
        " ON CONFLICT (job) DO UPDATE SET name = EXCLUDED.name, last_run_at = EXCLUDED.last_run_at,"
        "   last_ok_at = COALESCE(EXCLUDED.last_ok_at, u.last_ok_at), outcome = EXCLUDED.outcome,"
        "   error = EXCLUDED.error, duration_ms = EXCLUDED.duration_ms",
        (job, name, error, "failed" if error else "ok", error, (time.monotonic() - started) * 1000))
