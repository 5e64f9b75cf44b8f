"""Remote commands: validate, store, publish with MQTT 5 request/response, track to a final status.

Status: pending (stored; the device was offline when sent, or the broker was not told yet) ->
delivered (the broker took it while the device was online) -> ok / failed (the device's reply) or
timed_out (delivered, no reply within `timeout_s`) or expired (never reached an online device before
its message expiry: the broker drops it, so a box back after a day never runs yesterday's reboot).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import uuid
from datetime import datetime
from typing import Any, Literal

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contract import topics
from contract.profiles import DeviceProfile
from contract.twin import CommandReply, SetInterval

log = logging.getLogger(__name__)

CommandName = Literal["ping", "reboot", "set-interval", "flush", "snapshot"]
CommandStatus = Literal["pending", "delivered", "ok", "failed", "timed_out", "expired"]
FINAL = ("ok", "failed", "timed_out", "expired")


class CommandRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"command": "ping"}, {"command": "set-interval", "args": {"metric": "pm25", "interval_s": 5}},
        {"command": "snapshot", "args": {"quality": 80}, "timeout_s": 20}]})

    command: CommandName
    args: dict[str, Any] = Field(default_factory=dict, description="the command's JSON arguments")
    timeout_s: float = Field(default=30.0, ge=0.5, le=3600, description="wait this long for the reply once delivered")
    expiry_s: int = Field(default=300, ge=1, le=7 * 86400,
                          description="MQTT message expiry: not run at all if it reaches the device later")


class CommandPublic(BaseModel):
    command_id: uuid.UUID
    device_id: str
    command: str
    args: dict[str, Any]
    status: CommandStatus
    idempotency_key: str | None = None
    actor: str
    created_at: datetime
    sent_at: datetime | None = None
    completed_at: datetime | None = None
    timeout_s: float
    expires_at: datetime
    result: dict[str, Any] | None = None
    error: str | None = None
    has_image: bool = Field(default=False, description="a snapshot JPEG is at .../image")


class _Snapshot(BaseModel):
    model_config = ConfigDict(extra="forbid")

    quality: int = Field(default=85, ge=10, le=100)


class _NoArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CommandArgsError(ValueError):
    """Arguments the device would refuse; the message says why."""


def check_args(req: CommandRequest, profile: DeviceProfile) -> None:
    """Refuse at the API what the device would refuse, so a technician learns it at once."""
    if req.timeout_s > req.expiry_s:
        raise CommandArgsError(f"timeout_s {req.timeout_s:g} exceeds expiry_s {req.expiry_s}")
    try:
        if req.command == "set-interval":
            si = SetInterval.model_validate(req.args)
            spec = profile.metrics.get(si.metric)
            if spec is None or spec.stream == "health":
                raise CommandArgsError(f"set-interval: {si.metric!r} is not a sensor metric of {profile.profile}")
        elif req.command == "snapshot":
            if profile.counts is None:
                raise CommandArgsError(f"snapshot: profile {profile.profile} has no camera")
            _Snapshot.model_validate(req.args)
        else:
            _NoArgs.model_validate(req.args)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'args'}: {e['msg']}" for e in exc.errors()[:3])
        raise CommandArgsError(f"{req.command}: {problems}") from None


_SELECT = """SELECT command_id, device_id, command, args, status, idempotency_key, actor, created_at, sent_at,
       completed_at, timeout_s, expires_at, result, error, image IS NOT NULL AS has_image FROM device_commands"""


async def get_command(conn: AsyncConnection, device_id: str, command_id: uuid.UUID) -> CommandPublic | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_SELECT + " WHERE device_id = %s AND command_id = %s", (device_id, command_id))
        row = await cur.fetchone()
    return CommandPublic.model_validate(row) if row else None


async def find_idempotent(conn: AsyncConnection, device_id: str, key: str) -> CommandPublic | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_SELECT + " WHERE device_id = %s AND idempotency_key = %s", (device_id, key))
        row = await cur.fetchone()
    return CommandPublic.model_validate(row) if row else None


async def list_commands(conn: AsyncConnection, device_id: str, limit: int) -> list[CommandPublic]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_SELECT + " WHERE device_id = %s ORDER BY created_at DESC LIMIT %s", (device_id, limit))
        return [CommandPublic.model_validate(r) for r in await cur.fetchall()]


async def insert_command(conn: AsyncConnection, device_id: str, req: CommandRequest, key: str | None,
                         actor: str) -> uuid.UUID | None:
    """None when another request with the same idempotency key won the race."""
    command_id = uuid.uuid4()
    cur = await conn.execute(
        "INSERT INTO device_commands (command_id, device_id, command, args, status, idempotency_key, actor,"
        " timeout_s, expires_at) VALUES (%s, %s, %s, %s, 'pending', %s, %s, %s, now() + %s * interval '1 second')"
        " ON CONFLICT (device_id, idempotency_key) DO NOTHING",
        (command_id, device_id, req.command, Jsonb(req.args), key, actor, req.timeout_s, req.expiry_s))
    return command_id if cur.rowcount == 1 else None


async def mark_sent(conn: AsyncConnection, command_id: uuid.UUID, device_online: bool) -> None:
    await conn.execute(
        "UPDATE device_commands SET sent_at = now(), status = CASE WHEN %s THEN 'delivered' ELSE status END"
        " WHERE command_id = %s AND status = 'pending'", (device_online, command_id))


async def mark_failed(conn: AsyncConnection, command_id: uuid.UUID, error: str) -> None:
    await conn.execute("UPDATE device_commands SET status = 'failed', error = %s, completed_at = now()"
                       " WHERE command_id = %s AND status IN ('pending', 'delivered')", (error, command_id))


def command_topic(device_id: str, command: str) -> str:
    return topics.command(device_id, command)


async def handle_reply(pool: AsyncConnectionPool, device_id: str, correlation: bytes | None, payload: bytes) -> None:
    """Store a device's reply; a snapshot's JPEG is kept as bytes, not as base64 inside the result."""
    try:
        command_id = uuid.UUID(bytes=correlation) if correlation and len(correlation) == 16 else None
    except ValueError:
        command_id = None
    if command_id is None:
        log.warning("reply from %s without a usable correlation id; ignored", device_id)
        return
    error: str | None = None
    reply: CommandReply | None = None
    try:
        reply = CommandReply.model_validate_json(payload)
    except ValidationError as exc:
        error = f"unreadable reply: {exc.errors()[0]['msg']}"
    image = None
    result: dict[str, Any] | None = None
    if reply is not None:
        error = reply.error
        result = dict(reply.result)
        b64 = result.pop("jpeg_b64", None)
        if isinstance(b64, str):
            try:
                image = base64.b64decode(b64, validate=True)
            except (binascii.Error, ValueError):
                error = "snapshot reply carried invalid base64"
    status = "ok" if reply is not None and reply.ok and error is None else "failed"
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE device_commands SET status = %s, result = %s, error = %s, image = %s, completed_at = now()"
            " WHERE command_id = %s AND device_id = %s AND status IN ('pending', 'delivered')",
            (status, None if result is None else Jsonb(json.loads(json.dumps(result))), error, image,
             command_id, device_id))


SWEEP_LOCK_ID = 0x10C_0090  # advisory lock: with several API processes, one sweeps each round


async def sweep(pool: AsyncConnectionPool) -> int:
    """Give commands that will not be answered their final status. Every API process runs this; the one
    that gets the lock sweeps, the others skip the round (the same UPDATE twice would only wait on row locks).
    One statement, so one round trip: the lock is the statement's transaction's."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "WITH lock AS (SELECT pg_try_advisory_xact_lock(%s) AS got)"
            " UPDATE device_commands SET completed_at = now(), status = CASE"
            "   WHEN status = 'delivered' THEN 'timed_out' ELSE 'expired' END,"
            " error = CASE WHEN status = 'delivered' THEN 'no reply within ' || timeout_s || ' s'"
            "   ELSE 'the device was not online before the command expired' END"
            " FROM lock WHERE lock.got AND status IN ('pending', 'delivered') AND ("
            "   (status = 'delivered' AND sent_at + timeout_s * interval '1 second' < now())"
            "   OR expires_at < now())", (SWEEP_LOCK_ID,))
        return cur.rowcount
