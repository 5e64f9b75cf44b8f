"""The twin: desired config (one device or a whole site/tag), reported config, difference, state."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status

from cloud.api import audit, twin
from cloud.api.broker import BrokerUnavailableError
from cloud.api.deps import BrokerDep, Conn, Technician, Viewer
from cloud.api.routes.devices import load_active_device, load_device
from cloud.db import devices as db
from contract import topics
from contract.profiles import load_profiles
from contract.twin import ConfigError, Settings

router = APIRouter(tags=["config"])


async def _apply(conn: Conn, broker: BrokerDep, who: Technician, device_id: str, profile: str,
                 settings: Settings) -> int:
    """Validate, store the new version and publish it retained, in one transaction: a version the broker
    never got is rolled back."""
    async with conn.transaction():
        version = await twin.next_version(conn, device_id)
        payload = twin.build_desired(version, settings, load_profiles()[profile])
        before = await twin.latest_desired(conn, device_id)
        await twin.store_desired(conn, device_id, version, payload, who.actor)
        await audit.record(conn, who, "config.desired", device_id,
                           before.model_dump(mode="json") if before else None,
                           {"version": version, "settings": settings.model_dump(mode="json")})
        await broker.publish(topics.config_desired(device_id), payload, retain=True)
    return version


@router.get("/devices/{device_id}/config", response_model=twin.TwinPublic)
async def get_config(conn: Conn, who: Viewer, device_id: str) -> twin.TwinPublic:
    await load_device(conn, device_id)
    return await twin.twin_view(conn, device_id)


@router.put("/devices/{device_id}/config/desired", response_model=twin.TwinPublic,
)
async def set_desired(conn: Conn, broker: BrokerDep, who: Technician, device_id: str,
                      body: twin.DesiredRequest) -> twin.TwinPublic:
    """A new desired version, checked with the device's own validation, published retained."""
    device = await load_active_device(conn, device_id)
    try:
        await _apply(conn, broker, who, device_id, device["profile"], body.settings)
    except ConfigError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            f"the device would refuse this config: {exc}") from None
    except BrokerUnavailableError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from None
    return await twin.twin_view(conn, device_id)


@router.get("/devices/{device_id}/config/history", response_model=list[twin.DesiredPublic])
async def config_history(conn: Conn, who: Viewer, device_id: str,
                         limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[twin.DesiredPublic]:
    await load_device(conn, device_id)
    return await twin.desired_history(conn, device_id, limit)


@router.post("/config/bulk", response_model=list[twin.BulkResult],
)
async def bulk_desired(conn: Conn, broker: BrokerDep, who: Technician,
                       body: twin.BulkDesiredRequest) -> list[twin.BulkResult]:
    """One change to every active device of a site and/or tag; each device gets its own version, and one
    that refuses it (another profile) is reported without stopping the rest."""
    if body.site is None and body.tag is None:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "give a site, a tag or both")
    rows = await db.list_devices(conn, db.DeviceQuery(site=body.site, tag=body.tag, limit=100_000))
    out: list[twin.BulkResult] = []
    for r in rows:
        try:
            version = await _apply(conn, broker, who, r["device_id"], r["profile"], body.settings)
            out.append(twin.BulkResult(device_id=r["device_id"], version=version))
        except ConfigError as exc:
            out.append(twin.BulkResult(device_id=r["device_id"], error=str(exc)))
        except BrokerUnavailableError as exc:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                                f"{exc}; applied to {len([o for o in out if o.version])} device(s) first") from None
    return out
