"""Alarms in PostgreSQL: raise, clear, acknowledge, list, each transition with its history row (which is
also the notification outbox). Used by the evaluator and by `ioc alerts`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row


class AlarmError(ValueError):
    """An operator action that cannot apply (unknown alarm, already cleared, already acknowledged)."""


@dataclass(frozen=True)
class Raise:
    rule: str
    device_id: str
    site: str
    kind: str
    severity: str
    message: str
    value: float | None
    since: datetime


def raise_alarms(cur: psycopg.Cursor[Any], items: list[Raise], actor: str) -> list[int]:
    """Insert new active alarms, skipping any (rule, device) already active (the unique partial index decides,
    so two evaluators or a retried cycle never raise twice); one 'raised' history row per new alarm."""
    ids: list[int] = []
    for it in items:
        row = cur.execute(
            "INSERT INTO alarms (rule, device_id, site, kind, severity, message, value, condition_since)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (rule, device_id) WHERE cleared_at IS NULL DO NOTHING RETURNING id",
            (it.rule, it.device_id, it.site, it.kind, it.severity, it.message, it.value, it.since)).fetchone()
        if row is None:
            continue
        cur.execute("INSERT INTO alarm_history (alarm_id, action, actor, value) VALUES (%s, 'raised', %s, %s)",
                    (row[0], actor, it.value))
        ids.append(row[0])
    return ids


def clear_alarm(cur: psycopg.Cursor[Any], alarm_id: int, actor: str, value: float | None = None,
                comment: str | None = None) -> bool:
    row = cur.execute("UPDATE alarms SET cleared_at = now(), cleared_by = %s, clear_comment = %s"
                      " WHERE id = %s AND cleared_at IS NULL RETURNING id", (actor, comment, alarm_id)).fetchone()
    if row is None:
        return False
    cur.execute("INSERT INTO alarm_history (alarm_id, action, actor, comment, value)"
                " VALUES (%s, 'cleared', %s, %s, %s)", (alarm_id, actor, comment, value))
    return True


def acknowledge(conn: psycopg.Connection, alarm_id: int, who: str, comment: str | None) -> None:
    """An operator takes the alarm: who, when and why are kept; active or cleared, once."""
    if not who.strip():
        raise AlarmError("say who acknowledges (--by)")
    with conn.transaction(), conn.cursor() as cur:
        row = cur.execute("SELECT acked_at FROM alarms WHERE id = %s FOR UPDATE", (alarm_id,)).fetchone()
        if row is None:
            raise AlarmError(f"no alarm {alarm_id}")
        if row[0] is not None:
            raise AlarmError(f"alarm {alarm_id} was already acknowledged at {row[0]:%Y-%m-%d %H:%M:%S %Z}")
        cur.execute("UPDATE alarms SET acked_at = now(), acked_by = %s, ack_comment = %s WHERE id = %s",
                    (who, comment, alarm_id))
        cur.execute("INSERT INTO alarm_history (alarm_id, action, actor, comment)"
                    " VALUES (%s, 'acknowledged', %s, %s)", (alarm_id, who, comment))


def operator_clear(conn: psycopg.Connection, alarm_id: int, who: str, comment: str | None) -> None:
    """Clear by hand (the condition may still hold: the evaluator then raises a new alarm after the rule's
    duration)."""
    if not who.strip():
        raise AlarmError("say who clears (--by)")
    with conn.transaction(), conn.cursor() as cur:
        if cur.execute("SELECT 1 FROM alarms WHERE id = %s", (alarm_id,)).fetchone() is None:
            raise AlarmError(f"no alarm {alarm_id}")
        if not clear_alarm(cur, alarm_id, who, comment=comment):
            raise AlarmError(f"alarm {alarm_id} is already cleared")


def list_alarms(conn: psycopg.Connection, *, include_cleared: bool = False, limit: int = 100) -> list[dict[str, Any]]:
    where = "" if include_cleared else "WHERE a.cleared_at IS NULL"
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT a.id, a.rule, a.device_id, a.site, a.severity, a.message, a.value, a.raised_at, a.cleared_at,"
            " a.cleared_by, a.acked_at, a.acked_by, a.ack_comment FROM alarms a"
            f" {where} ORDER BY a.cleared_at IS NULL DESC, CASE a.severity WHEN 'critical' THEN 0"
            " WHEN 'major' THEN 1 WHEN 'minor' THEN 2 ELSE 3 END, a.raised_at DESC LIMIT %s", (limit,)).fetchall()


def history(conn: psycopg.Connection, alarm_id: int) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT id, at, action, actor, comment, value FROM alarm_history WHERE alarm_id = %s"
                           " ORDER BY id", (alarm_id,)).fetchall()


def webhook_problems(conn: psycopg.Connection) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT url, last_error_at, last_error, failed_in_a_row, given_up, last_ok_at"
                           " FROM alert_webhook_status WHERE failed_in_a_row > 0 OR given_up > 0"
                           " ORDER BY url").fetchall()
