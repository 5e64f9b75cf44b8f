"""Fleet summary, latest readings, bucketed ranges (raw and rollup) and traffic counts, from data ingest stored."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import paho.mqtt.client as mqtt
import psycopg
from api_helpers import new_device
from paho.mqtt.enums import CallbackAPIVersion
from support import login, wait_until

from cloud.ingest.service import IngestService
from ioc.stack import Stack


def _publish(stack: Stack, topic: str, body: dict) -> None:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    login(c, stack).connect(stack.mqtt_host, stack.mqtt_port)
    c.loop_start()
    c.publish(topic, json.dumps(body), qos=1).wait_for_publish(10)
    c.loop_stop()
    c.disconnect()


def test_readings_ranges_and_traffic(stack: Stack, ingest: IngestService, db: psycopg.Connection,
                                     as_role: Callable[[str], httpx.Client]) -> None:
    viewer, tech = as_role("viewer"), as_role("technician")
    site = f"site-{uuid.uuid4().hex[:6]}"
    gw = new_device(tech, site=site)["device_id"]
    cam = new_device(tech, prefix="cam", site=site, profile="traffic-camera")["device_id"]
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    now -= timedelta(minutes=now.minute % 10)  # on a 10-minute boundary, as the API's buckets are
    start = now - timedelta(minutes=120)
    samples = [{"ts": int((start + timedelta(minutes=i)).timestamp() * 1000), "values": {"pm25": float(i)}}
               for i in range(120)]
    _publish(stack, f"tlm/v1/{site}/{gw}/env", {"v": 1, "device_id": gw, "boot_id": "b", "seq": 1,
                                                 "samples": samples})
    counts = [{"ts": int((now - timedelta(minutes=5)).timestamp() * 1000), "interval_s": 60, "line": "north",
               "class": "car", "direction": "in", "count": 7},
              {"ts": int((now - timedelta(minutes=4)).timestamp() * 1000), "interval_s": 60, "line": "north",
               "class": "car", "direction": "in", "count": 5}]
    _publish(stack, f"tlm/v1/{site}/{cam}/counts", {"v": 1, "device_id": cam, "boot_id": "b", "seq": 1,
                                                     "counts": counts})
    wait_until(lambda: db.execute("SELECT count(*) FROM telemetry WHERE device_id = %s", (gw,)).fetchone() == (120,),
               what="telemetry stored")
    wait_until(lambda: viewer.get(f"/devices/{cam}/traffic").json(), what="counts stored")

    latest = viewer.get(f"/devices/{gw}/readings/latest").json()
    assert [(r["metric"], r["value"], r["unit"]) for r in latest] == [("pm25", 119.0, "µg/m³")]

    raw = viewer.get(f"/devices/{gw}/metrics/pm25", params={
        "start": (now - timedelta(minutes=60)).isoformat(), "end": now.isoformat(), "bucket_s": 600}).json()
    assert raw["source"] == "telemetry"
    assert [p["n"] for p in raw["points"]] == [10] * 6  # 10-minute buckets, aligned to the epoch like `now`
    assert (raw["points"][0]["min"], raw["points"][-1]["max"]) == (60.0, 119.0)

    def long_range() -> dict | None:
        got = viewer.get(f"/devices/{gw}/metrics/pm25", params={
            "start": (now - timedelta(days=2)).isoformat(), "end": now.isoformat(), "bucket_s": 86400}).json()
        return got if sum(p["n"] for p in got["points"]) == 120 else None

    long = wait_until(long_range, what="the 1-minute rollup to hold the 120 minutes (ingest's upkeep)")
    assert long["source"] == "telemetry_1m"
    assert max(p["max"] for p in long["points"]) == 119.0

    assert viewer.get(f"/devices/{cam}/traffic").json() == [
        {"line": "north", "cls": "car", "direction": "in", "count": 12}]
    bad = viewer.get(f"/devices/{gw}/metrics/pm25", params={"start": now.isoformat(),
                                                            "end": (now - timedelta(hours=1)).isoformat()})
    assert bad.status_code == 422
    assert "before end" in bad.json()["detail"]
    assert viewer.get(f"/devices/{gw}/metrics/ozone").status_code == 404
    for path in (f"/devices/{cam}/traffic", f"/devices/{gw}/metrics/pm25"):  # no hour before year 1's first one
        early = viewer.get(path, params={"end": "0001-01-01T00:00:04Z"})
        assert early.status_code == 422
        assert "too early" in early.json()["detail"]


def test_fleet_summary_counts_online_offline_and_silent(stack: Stack, ingest: IngestService,
                                                        as_role: Callable[[str], httpx.Client]) -> None:
    tech = as_role("technician")
    site = f"site-{uuid.uuid4().hex[:6]}"
    ids = [new_device(tech, site=site)["device_id"] for _ in range(3)]
    now = int(time.time() * 1000)
    _publish(stack, f"state/v1/{ids[0]}", {"v": 1, "device_id": ids[0], "status": "online", "boot_id": "b",
                                           "ts": now, "firmware": "edge-7"})
    _publish(stack, f"state/v1/{ids[1]}", {"v": 1, "device_id": ids[1], "status": "offline", "boot_id": "b",
                                           "ts": now})

    def group() -> dict | None:
        groups = tech.get("/fleet/summary").json()["groups"]
        g = next((g for g in groups if g["site"] == site), None)
        return g if g and g["online"] == 1 and g["offline"] == 1 else None

    g = wait_until(group, what="summary")
    assert (g["never_seen"], g["silent"]) == (1, 0)
    summary = tech.get("/fleet/summary", params={"silent_heartbeats": 1}).json()
    assert summary["firmware"].get("edge-7", 0) >= 1
    # 1 heartbeat of 30 s has not passed yet; the device is not silent.
    assert next(x for x in summary["groups"] if x["site"] == site)["silent"] == 0
