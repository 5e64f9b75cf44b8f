"""Fleet health and a device's data: summary, latest readings, a bucketed range, traffic counts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel, Field

from cloud.api.deps import Conn, Viewer
from contract.profiles import load_profiles

router = APIRouter(tags=["data"])


class GroupCount(BaseModel):
    site: str
    profile: str
    online: int
    offline: int
    never_seen: int
    silent: int = Field(description="online by status but no message for more than N heartbeats")


class FleetSummary(BaseModel):
    devices: int
    online: int
    groups: list[GroupCount]
    firmware: dict[str, int] = Field(description="devices per reported firmware version")
    outbox_backlog: float = Field(description="sum of outbox_depth over the newest heartbeats of the last hour")


class Reading(BaseModel):
    metric: str
    ts: datetime
    value: float
    unit: str | None = None


class Point(BaseModel):
    ts: datetime
    mean: float
    min: float
    max: float
    n: int


class Series(BaseModel):
    device_id: str
    metric: str
    bucket_s: int
    source: str = Field(description="telemetry, telemetry_1m or telemetry_1h: rollups serve long ranges")
    points: list[Point]


class TrafficCount(BaseModel):
    line: str
    cls: str
    direction: str
    count: int


async def device_profile(conn: Conn, device_id: str) -> str:
    """The device's profile, or 404: one primary-key read, not the whole device view with its live status."""
    cur = await conn.execute("SELECT profile FROM devices WHERE device_id = %s", (device_id,))
    row = await cur.fetchone()
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no device {device_id!r}")
    return str(row[0])


@router.get("/fleet/summary", response_model=FleetSummary)
async def fleet_summary(conn: Conn, who: Viewer,
                        silent_heartbeats: Annotated[int, Query(ge=1, le=1000)] = 3) -> FleetSummary:
    cur = await conn.execute("""
        SELECT d.site, d.profile,
               count(*) FILTER (WHERE s.online) AS online,
               count(*) FILTER (WHERE s.device_id IS NOT NULL AND NOT s.online) AS offline,
               count(*) FILTER (WHERE s.device_id IS NULL) AS never_seen,
               count(*) FILTER (WHERE s.online AND (s.last_seen IS NULL OR s.last_seen < now() - %s
                   * COALESCE((c.config #>> '{settings,heartbeat_s}')::float, 30) * interval '1 second')) AS silent
        FROM devices d LEFT JOIN device_status s USING (device_id)
        LEFT JOIN device_config_reported c USING (device_id)
        WHERE d.retired_at IS NULL GROUP BY 1, 2 ORDER BY 1, 2""", (silent_heartbeats,))
    groups = [GroupCount(site=r[0], profile=r[1], online=r[2], offline=r[3], never_seen=r[4], silent=r[5])
              for r in await cur.fetchall()]
    cur = await conn.execute("SELECT COALESCE(s.firmware, 'unknown'), count(*) FROM devices d LEFT JOIN"
                             " device_status s USING (device_id) WHERE d.retired_at IS NULL GROUP BY 1")
    firmware = {r[0]: r[1] for r in await cur.fetchall()}
    cur = await conn.execute("""
        SELECT COALESCE(sum(value), 0) FROM (SELECT DISTINCT ON (device_id) value FROM telemetry
        WHERE metric = 'outbox_depth' AND ts > now() - interval '1 hour' ORDER BY device_id, ts DESC) x""")
    row = await cur.fetchone()
    return FleetSummary(devices=sum(g.online + g.offline + g.never_seen for g in groups),
                        online=sum(g.online for g in groups), groups=groups, firmware=firmware,
                        outbox_backlog=float(row[0]) if row else 0.0)


@router.get("/devices/{device_id}/readings/latest", response_model=list[Reading])
async def latest_readings(conn: Conn, who: Viewer, device_id: str,
                          max_age_h: Annotated[float, Query(gt=0, le=24 * 90)] = 24) -> list[Reading]:
    """The newest value of every metric of the device's profile (health metrics included)."""
    profile = load_profiles().get(await device_profile(conn, device_id))
    units = {m: s.unit for m, s in profile.metrics.items()} if profile else {}
    cur = await conn.execute("""
        SELECT m, t.ts, t.value FROM unnest(%s::text[]) AS m
        CROSS JOIN LATERAL (SELECT ts, value FROM telemetry WHERE device_id = %s AND metric = m
                            AND ts > now() - %s * interval '1 hour' ORDER BY ts DESC LIMIT 1) t
        ORDER BY m""", (sorted(units), device_id, max_age_h))
    return [Reading(metric=r[0], ts=r[1], value=r[2], unit=units.get(r[0])) for r in await cur.fetchall()]


def _window(start: datetime | None, end: datetime | None) -> tuple[datetime, datetime]:
    """[start, end) with the defaults filled in (end: now, start: an hour before end); 422 for a naive time
    or an end too early to have an hour before it (year 1)."""
    end = end or datetime.now(UTC)
    try:
        start = start or end - timedelta(hours=1)
    except OverflowError:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "end is too early: give start too") from None
    if start.tzinfo is None or end.tzinfo is None:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "start and end need a time zone (e.g. Z)")
    return start, end


def _source(span: timedelta, bucket_s: int) -> str:
    """Raw rows for short ranges (exact, and current to the second); a rollup no coarser than the bucket
    for long ones."""
    if span > timedelta(days=7) and bucket_s >= 3600:
        return "telemetry_1h"
    if span > timedelta(hours=6) and bucket_s >= 60:
        return "telemetry_1m"
    return "telemetry"


@router.get("/devices/{device_id}/metrics/{metric}", response_model=Series)
async def metric_range(conn: Conn, who: Viewer, device_id: str, metric: str,
                       start: Annotated[datetime | None, Query(description="default: an hour before end")] = None,
                       end: Annotated[datetime | None, Query(description="default: now")] = None,
                       bucket_s: Annotated[int, Query(ge=1, le=86400 * 31)] = 60) -> Series:
    """Time-bucketed mean/min/max/count; ranges over 6 h read the 1-minute rollup, over 7 days the hourly."""
    profile_name = await device_profile(conn, device_id)
    profile = load_profiles().get(profile_name)
    if profile is None or metric not in profile.metrics:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{metric!r} is not a metric of {profile_name}")
    start, end = _window(start, end)
    if start >= end:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "start must be before end")
    if (end - start).total_seconds() / bucket_s > 10_000:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "more than 10000 buckets: use a larger bucket_s")
    source = _source(end - start, bucket_s)
    if source == "telemetry":
        sql = """SELECT date_bin(%s * interval '1 second', ts, timestamptz 'epoch') AS b, avg(value), min(value),
                 max(value), count(*) FROM telemetry WHERE device_id = %s AND metric = %s AND ts >= %s AND ts < %s
                 GROUP BY b ORDER BY b"""
    else:
        sql = f"""SELECT date_bin(%s * interval '1 second', bucket, timestamptz 'epoch') AS b,
                  sum(total) / sum(n), min(min), max(max), sum(n)::bigint FROM {source}
                  WHERE device_id = %s AND metric = %s AND bucket >= %s AND bucket < %s GROUP BY b ORDER BY b"""
    cur = await conn.execute(sql, (bucket_s, device_id, metric, start, end))
    points = [Point(ts=r[0], mean=r[1], min=r[2], max=r[3], n=r[4]) for r in await cur.fetchall()]
    return Series(device_id=device_id, metric=metric, bucket_s=bucket_s, source=source, points=points)


@router.get("/devices/{device_id}/traffic", response_model=list[TrafficCount])
async def traffic(conn: Conn, who: Viewer, device_id: str, start: datetime | None = None,
                  end: datetime | None = None) -> list[TrafficCount]:
    """Objects counted per line, class and direction over [start, end) (default: the last hour)."""
    await device_profile(conn, device_id)
    start, end = _window(start, end)
    cur = await conn.execute("""SELECT line, cls, direction, sum(count)::bigint FROM traffic_counts
        WHERE device_id = %s AND ts >= %s AND ts < %s GROUP BY 1, 2, 3 ORDER BY 1, 2, 3""", (device_id, start, end))
    return [TrafficCount(line=r[0], cls=r[1], direction=r[2], count=r[3]) for r in await cur.fetchall()]
