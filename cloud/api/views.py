"""Rows to public models, and the cursor format of paged lists."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any

from fastapi import HTTPException, status

from cloud.api.models import DevicePublic, DeviceStatus, LiveStatus, Location


def device_public(r: dict[str, Any]) -> DevicePublic:
    state: DeviceStatus
    if r["retired_at"] is not None:
        state = "retired"
    elif not r["seen"]:
        state = "never_seen"
    else:
        state = "online" if r["online"] else "offline"
    live = LiveStatus(status=state, online=bool(r["online"]) and state == "online", last_seen=r["last_seen"],
                      boot_id=r["boot_id"], reported_firmware=r["reported_firmware"],
                      config_version=r["config_version"], outbox_backlog=r["outbox_backlog"],
                      outbox_dropped=r["outbox_dropped"], offline_reason=r["offline_reason"],
                      last_error=r["last_error"], last_error_at=r["last_error_at"])
    loc = Location(lat=r["lat"], lon=r["lon"]) if r["lat"] is not None and r["lon"] is not None else None
    return DevicePublic(device_id=r["device_id"], site=r["site"], profile=r["profile"], name=r["name"],
                        location=loc, tags=list(r["tags"] or []), installed_at=r["installed_at"],
                        firmware=r["firmware"], created_at=r["created_at"], updated_at=r["updated_at"],
                        retired_at=r["retired_at"], live=live)


def encode_cursor(kind: str, value: Any, last_id: str | int) -> str:
    if isinstance(value, datetime):
        value = value.isoformat()
    raw = json.dumps([kind, value, last_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, kind: str) -> tuple[Any, Any]:
    """The (sort value, last id) a cursor holds; 400 if it is not one of ours or was made for another sort."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        got_kind, value, last_id = json.loads(raw)
    except (binascii.Error, ValueError, TypeError):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "cursor is not one this API handed out") from None
    if got_kind != kind:
        raise HTTPException(status.HTTP_400_BAD_REQUEST,
                            f"cursor was made for sort {got_kind!r}, not {kind!r}: start again without it")
    return value, last_id
