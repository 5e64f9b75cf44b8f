"""Read back what the database holds for a set of devices, keyed like the simulator's SentLog."""

from __future__ import annotations

import psycopg


def stored_points(conn: psycopg.Connection, device_ids: list[str]) -> dict[tuple[str, str, int], float]:
    rows = conn.execute(
        "SELECT device_id, metric, (extract(epoch FROM ts) * 1000)::bigint, value FROM telemetry"
        " WHERE device_id = ANY(%s)", (device_ids,)).fetchall()
    return {(d, m, int(t)): v for d, m, t, v in rows}


def stored_counts(conn: psycopg.Connection, device_ids: list[str]) -> dict[tuple[str, str, str, str, int], int]:
    rows = conn.execute(
        "SELECT device_id, line, cls, direction, (extract(epoch FROM ts) * 1000)::bigint, sum(count)::int"
        " FROM traffic_counts WHERE device_id = ANY(%s) GROUP BY 1, 2, 3, 4, 5", (device_ids,)).fetchall()
    return {(d, ln, c, dr, int(t)): n for d, ln, c, dr, t, n in rows}


def total_rows(conn: psycopg.Connection, device_ids: list[str]) -> int:
    row = conn.execute("SELECT count(*) FROM telemetry WHERE device_id = ANY(%s)", (device_ids,)).fetchone()
    return int(row[0]) if row else 0
