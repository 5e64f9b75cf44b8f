"""The device twin: desired config versions (validated with the device's own code), what the device
reported, the difference between them, and whether they agree.

A desired config is a new version each time: one above everything the device or the registry has
seen, because the device refuses a version older than the one it runs.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb
from pydantic import BaseModel, ConfigDict, Field

from contract.profiles import DeviceProfile
from contract.twin import DesiredConfig, ReportedConfig, Settings, parse_desired

TwinState = Literal["in_sync", "pending", "rejected", "override", "unmanaged"]


class DesiredRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"settings": {"heartbeat_s": 30, "metrics": {"pm25": {"interval_s": 5, "high": 50}}}}]})

    settings: Settings = Field(description="replaces the device's steerable settings as a whole")


class BulkDesiredRequest(DesiredRequest):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"site": "district-01", "settings": {"heartbeat_s": 60}}]})

    site: str | None = Field(default=None, min_length=1, max_length=64)
    tag: str | None = Field(default=None, min_length=1, max_length=64)


class DesiredPublic(BaseModel):
    version: int
    settings: dict[str, Any]
    created_at: datetime
    created_by: str


class Difference(BaseModel):
    path: str
    desired: Any = None
    reported: Any = None


class TwinPublic(BaseModel):
    device_id: str
    state: TwinState = Field(description="in_sync: the device runs the newest desired version; pending: not "
                             "yet; rejected: the device refused it (see error); override: a live command changed "
                             "it; unmanaged: no desired config set")
    desired: DesiredPublic | None = None
    reported: dict[str, Any] | None = Field(default=None, description="the device's ReportedConfig")
    reported_at: datetime | None = None
    difference: list[Difference] = Field(default_factory=list)
    error: str | None = None


class BulkResult(BaseModel):
    device_id: str
    version: int | None = None
    error: str | None = None


def build_desired(version: int, settings: Settings, profile: DeviceProfile) -> bytes:
    """The retained payload, checked by `parse_desired` exactly as the device will check it."""
    payload = DesiredConfig(version=version, settings=settings).model_dump_json().encode()
    parse_desired(payload, profile)  # raises ConfigError with the device's own words
    return payload


async def next_version(conn: AsyncConnection, device_id: str) -> int:
    cur = await conn.execute(
        "SELECT GREATEST((SELECT max(version) FROM device_config_desired WHERE device_id = %s),"
        " (SELECT version FROM device_config_reported WHERE device_id = %s),"
        " (SELECT config_version FROM device_status WHERE device_id = %s), 0) + 1",
        (device_id, device_id, device_id))
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def store_desired(conn: AsyncConnection, device_id: str, version: int, payload: bytes, actor: str) -> None:
    settings = json.loads(payload)["settings"]
    await conn.execute("INSERT INTO device_config_desired (device_id, version, settings, created_by)"
                       " VALUES (%s, %s, %s, %s)", (device_id, version, Jsonb(settings), actor))


async def latest_desired(conn: AsyncConnection, device_id: str) -> DesiredPublic | None:
    cur = await conn.execute("SELECT version, settings, created_at, created_by FROM device_config_desired"
                             " WHERE device_id = %s ORDER BY version DESC LIMIT 1", (device_id,))
    row = await cur.fetchone()
    return DesiredPublic(version=row[0], settings=row[1], created_at=row[2], created_by=row[3]) if row else None


async def desired_history(conn: AsyncConnection, device_id: str, limit: int) -> list[DesiredPublic]:
    cur = await conn.execute("SELECT version, settings, created_at, created_by FROM device_config_desired"
                             " WHERE device_id = %s ORDER BY version DESC LIMIT %s", (device_id, limit))
    return [DesiredPublic(version=r[0], settings=r[1], created_at=r[2], created_by=r[3]) for r in await cur.fetchall()]


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def difference(desired: dict[str, Any], reported: dict[str, Any]) -> list[Difference]:
    """Leaf by leaf, both sides normalised through `Settings` so defaults compare equal."""
    d = _flatten(Settings.model_validate(desired).model_dump(mode="json"))
    r = _flatten(Settings.model_validate(reported).model_dump(mode="json"))
    return [Difference(path=p, desired=d.get(p), reported=r.get(p)) for p in sorted(d.keys() | r.keys())
            if d.get(p) != r.get(p)]


async def twin_view(conn: AsyncConnection, device_id: str) -> TwinPublic:
    desired = await latest_desired(conn, device_id)
    cur = await conn.execute("SELECT config, reported_at FROM device_config_reported WHERE device_id = %s",
                             (device_id,))
    row = await cur.fetchone()
    reported_raw, reported_at = (row[0], row[1]) if row else (None, None)
    reported: ReportedConfig | None = None
    if isinstance(reported_raw, dict):
        try:
            reported = ReportedConfig.model_validate(reported_raw)
        except ValueError:
            reported = None
    view = TwinPublic(device_id=device_id, state="unmanaged", desired=desired, reported=reported_raw,
                      reported_at=reported_at)
    if reported is not None and desired is not None:
        view.difference = difference(desired.settings, reported.settings.model_dump(mode="json"))
    if desired is None:
        return view
    if reported is None:
        view.state = "pending"
    elif reported.status == "rejected" and reported.desired_version == desired.version:
        view.state, view.error = "rejected", reported.error
    elif reported.version == desired.version and reported.status == "override":
        view.state = "override"
    elif reported.version == desired.version and not view.difference:
        view.state = "in_sync"
    else:
        view.state = "pending"
    return view
