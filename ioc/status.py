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
    dead_letter_bytes: int = 0  # on disk, table and indexes: bounded by retention and the payload budget


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
        telemetry_rows=_rows(conn, "telemetry", exact),
        count_rows=_rows(conn, "traffic_counts", exact),
        dead_letters=one("SELECT count(*) FROM dead_letters"),
        instances=instances,
        recent_dead=[(t, r) for t, r in recent],
        dead_letter_bytes=one("SELECT pg_total_relation_size('dead_letters')"),
    )
