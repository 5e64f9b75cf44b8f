"""Commands to one device, their status and result (a snapshot's JPEG as image/jpeg)."""

from __future__ import annotations

import json
import uuid
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, Response, status

from cloud.api import audit
from cloud.api import commands as cmds
from cloud.api.broker import BrokerUnavailableError
from cloud.api.deps import BrokerDep, Conn, Technician, Viewer
from cloud.api.routes.devices import load_active_device, load_device
from contract.profiles import load_profiles

router = APIRouter(prefix="/devices/{device_id}/commands", tags=["commands"])

IdempotencyKey = Annotated[str | None, Header(
    alias="Idempotency-Key", min_length=1, max_length=200,
    description="a retried POST with the same key returns the first command instead of sending it again")]


@router.post("", response_model=cmds.CommandPublic, status_code=status.HTTP_202_ACCEPTED,
)
async def send_command(conn: Conn, broker: BrokerDep, who: Technician, device_id: str,
                       body: cmds.CommandRequest, response: Response,
                       idempotency_key: IdempotencyKey = None) -> cmds.CommandPublic:
    """Publish with MQTT 5 response topic, correlation data and message expiry; poll the result at
    GET .../commands/{command_id}."""
    device = await load_active_device(conn, device_id)
    if idempotency_key is not None:
        first = await cmds.find_idempotent(conn, device_id, idempotency_key)
        if first is not None:
            return _same_or_conflict(first, body, response)
    try:
        cmds.check_args(body, load_profiles()[device["profile"]])
    except cmds.CommandArgsError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    async with conn.transaction():
        command_id = await cmds.insert_command(conn, device_id, body, idempotency_key, who.actor)
        if command_id is not None:
            await audit.record(conn, who, "command.send", device_id, None,
                               {"command_id": str(command_id), **body.model_dump(mode="json")})
    if command_id is None:  # a concurrent retry with the same key got there first
        first = await cmds.find_idempotent(conn, device_id, idempotency_key or "")
        assert first is not None
        return _same_or_conflict(first, body, response)
    try:
        await broker.publish(cmds.command_topic(device_id, body.command), json.dumps(body.args),
                             expiry_s=body.expiry_s, response_topic=broker.response_topic(device_id),
                             correlation=command_id.bytes)
    except BrokerUnavailableError as exc:
        await cmds.mark_failed(conn, command_id, f"not sent: {exc}")
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from None
    fresh = await load_device(conn, device_id)
    await cmds.mark_sent(conn, command_id, bool(fresh["online"]))
    got = await cmds.get_command(conn, device_id, command_id)
    assert got is not None
    return got


def _same_or_conflict(first: cmds.CommandPublic, body: cmds.CommandRequest, response: Response) -> cmds.CommandPublic:
    if first.command != body.command or first.args != body.args:
        raise HTTPException(status.HTTP_409_CONFLICT,
                            f"Idempotency-Key already used for command {first.command_id} ({first.command})")
    response.status_code = status.HTTP_200_OK
    return first


@router.get("", response_model=list[cmds.CommandPublic])
async def list_commands(conn: Conn, who: Viewer, device_id: str,
                        limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[cmds.CommandPublic]:
    await load_device(conn, device_id)
    return await cmds.list_commands(conn, device_id, limit)


@router.get("/{command_id}", response_model=cmds.CommandPublic)
async def get_command(conn: Conn, who: Viewer, device_id: str, command_id: uuid.UUID) -> cmds.CommandPublic:
    got = await cmds.get_command(conn, device_id, command_id)
    if got is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no command {command_id} for device {device_id!r}")
    return got


@router.get("/{command_id}/image", response_class=Response,
            responses={200: {"content": {"image/jpeg": {}}, "description": "the snapshot"}})
async def command_image(conn: Conn, who: Viewer, device_id: str, command_id: uuid.UUID) -> Response:
    cur = await conn.execute("SELECT image FROM device_commands WHERE device_id = %s AND command_id = %s",
                             (device_id, command_id))
    row = await cur.fetchone()
    if row is None or row[0] is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"command {command_id} has no image")
    return Response(content=bytes(row[0]), media_type="image/jpeg")
