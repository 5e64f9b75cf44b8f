"""Devices: create (one or many), list, get, update, retire."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Query, status

from cloud.api import audit
from cloud.api.deps import BrokerAuthDep, Conn, Pool, Technician, Viewer
from cloud.api.models import (
    CredentialsIssued,
    DeviceCreate,
    DevicePage,
    DevicePublic,
    DevicesCreated,
    DeviceUpdate,
    check_not_service_login,
)
from cloud.api.views import decode_cursor, device_public, encode_cursor
from cloud.db import devices as db
from contract.profiles import load_profiles

router = APIRouter(prefix="/devices", tags=["devices"])


def _check_profile(profile: str) -> None:
    known = load_profiles()
    if profile not in known:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            f"unknown profile {profile!r}; known profiles: {', '.join(sorted(known))}")


async def load_device(conn: Conn, device_id: str) -> dict[str, Any]:
    row = await db.get_device(conn, device_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no device {device_id!r}")
    return row


async def lock_device(conn: Conn, device_id: str) -> None:
    """Hold the device's row until the caller's transaction ends: signing, rotating and retiring one device
    then run one after another, so each sees what the one before committed (two concurrent signs would
    otherwise each miss the other's new certificate, and a sign racing retire would outlive the retire)."""
    await conn.execute("SELECT 1 FROM devices WHERE device_id = %s FOR UPDATE", (device_id,))


def refuse_service_login(device_id: str) -> None:
    """422 for a device (made before such ids were refused) whose id is a stack service's broker login:
    a credential for it would take that service's login away."""
    try:
        check_not_service_login(device_id)
    except ValueError as e:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(e)) from None


async def load_active_device(conn: Conn, device_id: str, *, for_update: bool = False) -> dict[str, Any]:
    """load_device, refusing a retired device (409): it takes no config, command or credential.
    for_update: lock the row first (lock_device), in the caller's transaction."""
    if for_update:
        await lock_device(conn, device_id)
    device = await load_device(conn, device_id)
    if device["retired_at"] is not None:
        raise HTTPException(status.HTTP_409_CONFLICT, f"device {device_id!r} is retired")
    return device


def _audit_view(d: DevicePublic) -> dict[str, Any]:
    return d.model_dump(mode="json", exclude={"live", "updated_at", "created_at"})


@router.post("", status_code=status.HTTP_201_CREATED, response_model=DevicesCreated)
async def create_devices(conn: Conn, who: Technician, pool: Pool, broker_auth: BrokerAuthDep,
                         body: Annotated[DeviceCreate | list[DeviceCreate], Body(
                             description="one device, or a list to provision many in one transaction")],
                         ) -> DevicesCreated:
    """Provision devices. All or nothing: one bad or existing id and none is created."""
    items = body if isinstance(body, list) else [body]
    if not items or len(items) > 10_000:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "send 1 to 10000 devices")
    ids = [d.device_id for d in items]
    if len(set(ids)) != len(ids):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "the same device id appears twice")
    for d in items:
        _check_profile(d.profile)
    rows = [{**d.model_dump(exclude={"location"}), "lat": d.location.lat if d.location else None,
             "lon": d.location.lon if d.location else None} for d in items]
    async with conn.transaction():
        existing = await db.insert_devices(conn, rows)
        if existing:
            raise HTTPException(status.HTTP_409_CONFLICT, f"already registered: {', '.join(sorted(existing)[:20])}")
        created = [device_public(r) for r in await db.get_devices(conn, ids)]
        await audit.record_many(conn, who, "device.create", [(d.device_id, None, _audit_view(d)) for d in created])
        passwords = await broker_auth.issue(conn, ids) if broker_auth else None
    if broker_auth is not None:
        await broker_auth.apply(pool)
    return DevicesCreated(created=created, credentials=passwords)


@router.get("", response_model=DevicePage)
async def list_devices(conn: Conn, who: Viewer,
                       site: str | None = None, profile: str | None = None,
                       status_: Annotated[db.StatusFilter | None, Query(alias="status")] = None,
                       tag: str | None = None,
                       q: Annotated[str | None, Query(max_length=100, description="text in id, name or site")] = None,
                       include_retired: bool = False,
                       sort: db.SortKey = "device_id",
                       cursor: Annotated[str | None, Query(max_length=500)] = None,
                       limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> DevicePage:
    """Filtered, sorted, cursor-paginated. Retired devices only with `include_retired` or `status=retired`."""
    after = decode_cursor(cursor, sort) if cursor else None
    if after is not None and not (isinstance(after[0], str) and isinstance(after[1], str)):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "cursor is not one this API handed out")
    query = db.DeviceQuery(site=site, profile=profile, status=status_, tag=tag, text=q,
                           include_retired=include_retired, sort=sort, after=after, limit=limit + 1)
    rows = await db.list_devices(conn, query)
    page = [device_public(r) for r in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = encode_cursor(sort, last[sort.lstrip("-")], last["device_id"])
    return DevicePage(items=page, next_cursor=next_cursor)


@router.get("/{device_id}", response_model=DevicePublic)
async def get_device(pool: Pool, who: Viewer, device_id: str) -> DevicePublic:
    """The hottest route: it takes its connection itself, without the cost of a `yield` dependency."""
    async with pool.connection() as conn:
        return device_public(await load_device(conn, device_id))


@router.patch("/{device_id}", response_model=DevicePublic)
async def update_device(conn: Conn, who: Technician, device_id: str, body: DeviceUpdate) -> DevicePublic:
    """Change only the fields sent; `location: null` clears the location."""
    changes = body.model_dump(exclude_unset=True)
    for key in ("site", "profile"):
        if key in changes and changes[key] is None:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"{key} cannot be cleared")
    if "profile" in changes:
        _check_profile(changes["profile"])
    if "location" in changes:
        loc = changes.pop("location")
        changes["lat"], changes["lon"] = (loc["lat"], loc["lon"]) if loc else (None, None)
    if "tags" in changes and changes["tags"] is None:
        changes["tags"] = []
    async with conn.transaction():
        before = device_public(await load_device(conn, device_id))
        if before.retired_at is not None:
            raise HTTPException(status.HTTP_409_CONFLICT, f"device {device_id!r} is retired")
        await db.update_device(conn, device_id, changes)
        after = device_public(await load_device(conn, device_id))
        await audit.record(conn, who, "device.update", device_id, _audit_view(before), _audit_view(after))
    return after


@router.delete("/{device_id}", response_model=DevicePublic)
async def retire_device(conn: Conn, who: Technician, pool: Pool, broker_auth: BrokerAuthDep,
                        device_id: str) -> DevicePublic:
    """Retire: the device leaves lists, its broker password and certificates are revoked, its data stays.
    The broker drops a password-login connection at once; a certificate connection stays until its next
    handshake (the CRL is read at handshakes only). Retiring twice is harmless."""
    async with conn.transaction():
        await lock_device(conn, device_id)
        before = device_public(await load_device(conn, device_id))
        if before.retired_at is None:
            await db.retire_device(conn, device_id)
            if broker_auth is not None:
                await broker_auth.revoke(conn, who, device_id)
        after = device_public(await load_device(conn, device_id))
        if before.retired_at is None:
            await audit.record(conn, who, "device.retire", device_id, _audit_view(before), _audit_view(after))
    if broker_auth is not None:
        await broker_auth.apply_committed(pool)
    return after


@router.post("/{device_id}/credentials", response_model=CredentialsIssued, status_code=status.HTTP_201_CREATED)
async def rotate_credentials(conn: Conn, who: Technician, pool: Pool, broker_auth: BrokerAuthDep,
                             device_id: str) -> CredentialsIssued:
    """A new broker password for the device (shown once); the old one stops working at once: Mosquitto 2.0
    keeps one password per username, so there is no grace period (docs/security.md). For rotation without
    cutting the box off, use mutual TLS: `POST /devices/{device_id}/certificate` has a grace period."""
    if broker_auth is None:
        raise HTTPException(status.HTTP_409_CONFLICT, "this registry does not issue broker credentials")
    refuse_service_login(device_id)
    async with conn.transaction():
        await load_active_device(conn, device_id, for_update=True)
        passwords = await broker_auth.issue(conn, [device_id])
        await audit.record(conn, who, "credentials.rotate", device_id, None, {"username": device_id})
    await broker_auth.apply_committed(pool)
    return CredentialsIssued(username=device_id, password=passwords[device_id])
