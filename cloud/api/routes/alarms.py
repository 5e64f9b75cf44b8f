"""Alarms (cloud/alerts/): list, read with history, acknowledge, clear. Viewers read; technicians act.

An acknowledgement or a clear is the same transition `ioc alerts ack|clear` makes (a row of alarm_history,
which the active evaluator's notifier publishes on MQTT and to webhooks) plus an audit entry, in one
transaction. The actor is the token's holder, never a name the caller types.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, status
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from pydantic import BaseModel, ConfigDict, Field

from cloud.api import audit
from cloud.api.deps import Conn, Technician, Viewer
from cloud.api.views import decode_cursor, encode_cursor

router = APIRouter(prefix="/alarms", tags=["alarms"])

Severity = Literal["critical", "major", "minor", "warning"]
_COLUMNS = ("id, rule, device_id, site, kind, severity, message, value, condition_since, raised_at, cleared_at,"
            " cleared_by, clear_comment, acked_at, acked_by, ack_comment")


class AlarmPublic(BaseModel):
    id: int
    rule: str
    device_id: str
    site: str
    kind: str
    severity: Severity
    message: str
    value: float | None
    condition_since: datetime
    raised_at: datetime
    active: bool = Field(description="not cleared yet")
    cleared_at: datetime | None
    cleared_by: str | None
    clear_comment: str | None
    acked_at: datetime | None
    acked_by: str | None
    ack_comment: str | None


class AlarmEvent(BaseModel):
    id: int
    at: datetime
    action: Literal["raised", "acknowledged", "cleared"]
    actor: str
    comment: str | None
    value: float | None


class AlarmDetail(AlarmPublic):
    history: list[AlarmEvent]


class AlarmPage(BaseModel):
    items: list[AlarmPublic]
    next_cursor: str | None = Field(default=None, description="pass as `cursor` for the next page; null at the end")


class AlarmAction(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    comment: str | None = Field(default=None, max_length=1000, description="why; kept in the alarm's history")


def _public(row: dict[str, Any]) -> AlarmPublic:
    return AlarmPublic.model_validate({**row, "active": row["cleared_at"] is None})


def _audit_view(a: AlarmPublic) -> dict[str, Any]:
    return a.model_dump(mode="json", include={"rule", "device_id", "active", "acked_by", "ack_comment",
                                              "cleared_by", "clear_comment"})


async def _load(conn: AsyncConnection, alarm_id: int, lock: bool = False) -> AlarmPublic:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(f"SELECT {_COLUMNS} FROM alarms WHERE id = %s" + (" FOR UPDATE" if lock else ""),
                          (alarm_id,))
        row = await cur.fetchone()
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no alarm {alarm_id}")
    return _public(row)


@router.get("", response_model=AlarmPage)
async def list_alarms(conn: Conn, who: Viewer,
                      active: Annotated[bool | None, Query(description="true: not cleared; false: cleared")] = None,
                      severity: Severity | None = None,
                      site: Annotated[str | None, Query(max_length=200)] = None,
                      device: Annotated[str | None, Query(max_length=200, description="a device id")] = None,
                      cursor: Annotated[str | None, Query(max_length=500)] = None,
                      limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> AlarmPage:
    """Newest first (by id), cursor-paginated."""
    where: list[str] = []
    args: list[object] = []
    if active is not None:
        where.append("cleared_at IS NULL" if active else "cleared_at IS NOT NULL")
    for col, val in (("severity", severity), ("site", site), ("device_id", device)):
        if val is not None:
            where.append(f"{col} = %s")
            args.append(val)
    if cursor:
        _, last_id = decode_cursor(cursor, "alarms")
        if not isinstance(last_id, int):
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "cursor is not one this API handed out")
        where.append("id < %s")
        args.append(last_id)
    sql = (f"SELECT {_COLUMNS} FROM alarms" + (" WHERE " + " AND ".join(where) if where else "")
           + " ORDER BY id DESC LIMIT %s")
    args.append(limit + 1)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, args)
        rows = await cur.fetchall()
    items = [_public(r) for r in rows[:limit]]
    next_cursor = encode_cursor("alarms", None, items[-1].id) if len(rows) > limit else None
    return AlarmPage(items=items, next_cursor=next_cursor)


@router.get("/{alarm_id}", response_model=AlarmDetail)
async def get_alarm(conn: Conn, who: Viewer, alarm_id: int) -> AlarmDetail:
    """The alarm and every transition of it, oldest first."""
    alarm = await _load(conn, alarm_id)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT id, at, action, actor, comment, value FROM alarm_history WHERE alarm_id = %s"
                          " ORDER BY id", (alarm_id,))
        history = [AlarmEvent.model_validate(r) for r in await cur.fetchall()]
    return AlarmDetail(**alarm.model_dump(), history=history)


@router.post("/{alarm_id}/ack", response_model=AlarmPublic)
async def acknowledge(conn: Conn, who: Technician, alarm_id: int, body: AlarmAction) -> AlarmPublic:
    """Take the alarm (active or cleared), once; who and when come from the token and the clock."""
    async with conn.transaction():
        before = await _load(conn, alarm_id, lock=True)
        if before.acked_at is not None:
            raise HTTPException(status.HTTP_409_CONFLICT,
                                f"alarm {alarm_id} was already acknowledged by {before.acked_by} at "
                                f"{before.acked_at.isoformat()}")
        await conn.execute("UPDATE alarms SET acked_at = now(), acked_by = %s, ack_comment = %s WHERE id = %s",
                           (who.actor, body.comment, alarm_id))
        await conn.execute("INSERT INTO alarm_history (alarm_id, action, actor, comment)"
                           " VALUES (%s, 'acknowledged', %s, %s)", (alarm_id, who.actor, body.comment))
        after = await _load(conn, alarm_id)
        await audit.record(conn, who, "alarm.ack", f"alarm:{alarm_id}", _audit_view(before), _audit_view(after))
    return after


@router.post("/{alarm_id}/clear", response_model=AlarmPublic)
async def clear(conn: Conn, who: Technician, alarm_id: int, body: AlarmAction) -> AlarmPublic:
    """Clear by hand; if the rule's condition still holds, the evaluator raises a new alarm after its duration."""
    async with conn.transaction():
        before = await _load(conn, alarm_id, lock=True)
        if not before.active:
            raise HTTPException(status.HTTP_409_CONFLICT, f"alarm {alarm_id} is already cleared")
        await conn.execute("UPDATE alarms SET cleared_at = now(), cleared_by = %s, clear_comment = %s"
                           " WHERE id = %s", (who.actor, body.comment, alarm_id))
        await conn.execute("INSERT INTO alarm_history (alarm_id, action, actor, comment)"
                           " VALUES (%s, 'cleared', %s, %s)", (alarm_id, who.actor, body.comment))
        after = await _load(conn, alarm_id)
        await audit.record(conn, who, "alarm.clear", f"alarm:{alarm_id}", _audit_view(before), _audit_view(after))
    return after
