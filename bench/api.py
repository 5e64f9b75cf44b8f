"""Registry API benchmark on a registry of 10,000 devices with live ingest running.

    .venv/bin/python bench/api.py [--devices 10000] [--requests 3000] [--concurrency 50]

Everything real and on this machine: its own Mosquitto + PostgreSQL stack, `ioc ingest` and `ioc api`
as separate processes, a paho publisher sending every device's heartbeat and readings, and an httpx
load generator here. Prints:
1. provisioning: POST /devices in chunks of 1,000 (one transaction, audit rows included), devices/s;
2. p50 / p99 / requests/s for get-device, list-devices (page of 100, filtered by site) and
   latest-readings at the given concurrency, unpaced; and get-device paced at 500 requests/s;
3. the baseline: the same device query straight on a psycopg pool in this process at the same
   concurrency, so the API's own cost is the ratio.
Targets: get-device p99 < 25 ms at 500 requests/s; 10,000 devices provisioned in < 60 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from psycopg_pool import AsyncConnectionPool

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cloud.db.devices import DEVICE_SELECT
from cloud.db.migrate import migrate
from ioc.stack import Stack

REPO = Path(__file__).resolve().parent.parent
SITES = 50


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))] * 1000


async def load(name: str, make: Callable[[int], Awaitable[object]], n: int, concurrency: int,
               rate: float | None = None) -> tuple[float, float, float]:
    """n calls at `concurrency`, optionally paced to `rate` starts per second; returns p50, p99 ms, req/s."""
    lat: list[float] = []
    sem = asyncio.Semaphore(concurrency)
    t0 = time.perf_counter()

    async def one(i: int) -> None:
        if rate:
            await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
        async with sem:
            s = time.perf_counter()
            await make(i)
            lat.append(time.perf_counter() - s)

    await asyncio.gather(*(one(i) for i in range(n)))
    wall = time.perf_counter() - t0
    p50, p99, rps = pct(lat, 0.5), pct(lat, 0.99), n / wall
    print(f"  {name:<34} p50 {p50:6.1f} ms  p99 {p99:6.1f} ms  {rps:7.0f} req/s")
    return p50, p99, rps


def publish_live(stack: Stack, ids: list[str], stop: threading.Event) -> None:
    """Every device's readings and heartbeat once, then a steady trickle (live ingest)."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.connect(stack.mqtt_host, stack.mqtt_port)
    c.loop_start()
    seq = 0
    while not stop.is_set():
        for d in ids if seq == 0 else random.sample(ids, 200):
            seq += 1
            now = int(time.time() * 1000)
            site = f"site-{int(d.split('-')[1]) % SITES:02d}"
            c.publish(f"tlm/v1/{site}/{d}/env", json.dumps({"v": 1, "device_id": d, "boot_id": "b", "seq": seq,
                      "samples": [{"ts": now, "values": {"pm25": random.uniform(0, 80), "co2": 420.0}}]}), qos=1)
            c.publish(f"tlm/v1/{site}/{d}/health", json.dumps({"v": 1, "device_id": d, "boot_id": "b",
                      "seq": seq, "samples": [{"ts": now, "values": {"outbox_depth": 0, "outbox_dropped": 0}}]}),
                      qos=1)
        stop.wait(1.0)
    c.loop_stop()
    c.disconnect()


async def bench(stack: Stack, url: str, token: str, n_devices: int, n: int, conc: int) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    ids = [f"gw-{i:05d}" for i in range(n_devices)]
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120,
                                 limits=httpx.Limits(max_connections=conc)) as c:
        t0 = time.perf_counter()
        for i in range(0, n_devices, 1000):
            body = [{"device_id": d, "site": f"site-{int(d.split('-')[1]) % SITES:02d}", "profile": "env-gateway",
                     "tags": ["bench"], "location": {"lat": 52.5, "lon": 13.4}} for d in ids[i:i + 1000]]
            r = await c.post("/devices", json=body)
            r.raise_for_status()
        dt = time.perf_counter() - t0
        print(f"provisioning: {n_devices:,} devices in {dt:.1f} s ({n_devices / dt:,.0f} devices/s, audit included)")
        stop = threading.Event()
        live = threading.Thread(target=publish_live, args=(stack, ids, stop), daemon=True)
        live.start()
        await asyncio.sleep(8)  # the first full round reaches the database
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120,
                                 limits=httpx.Limits(max_connections=conc)) as c:
        print(f"API, concurrency {conc}, live ingest running:")

        await load("(warm-up) get-device", lambda i: c.get(f"/devices/{random.choice(ids)}"), 200, conc)
        await load("get-device", lambda i: c.get(f"/devices/{random.choice(ids)}"), n, conc)
        await load("get-device paced 500/s", lambda i: c.get(f"/devices/{random.choice(ids)}"), n, conc, rate=500)
        await load("list-devices (100, site filter)", lambda i: c.get(
            "/devices", params={"site": f"site-{i % SITES:02d}", "limit": 100}), n // 3, conc)
        await load("latest-readings", lambda i: c.get(f"/devices/{random.choice(ids)}/readings/latest"), n, conc)
        r = await c.get(f"/devices/{ids[0]}")
        assert r.json()["live"]["outbox_backlog"] is not None, "the live heartbeat did not reach the API"
    print(f"baseline, the same device query on a psycopg pool in this process, concurrency {conc}:")
    async with AsyncConnectionPool(stack.dsn, min_size=10, max_size=10, kwargs={"autocommit": True}) as pool:
        async def direct(i: int) -> None:
            async with pool.connection() as conn:
                await (await conn.execute(DEVICE_SELECT + " WHERE d.device_id = %s", (random.choice(ids),))).fetchone()

        await load("get-device query (no HTTP)", direct, n, conc)
    stop.set()
    live.join(10)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url).status_code == 200
    except httpx.HTTPError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=50)
    args = ap.parse_args()
    (REPO / ".ioc").mkdir(exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="bench-api-", dir=REPO / ".ioc"))
    stack = Stack.load(root)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        stack.up()
        migrate(stack.dsn)
        env = {**os.environ, "IOC_DSN": stack.dsn, "IOC_MQTT_HOST": stack.mqtt_host,
               "IOC_MQTT_PORT": str(stack.mqtt_port)}
        log = (root / "procs.log").open("ab")
        procs.append(subprocess.Popen([sys.executable, "-m", "ioc", "ingest", "--instance", "bench-api"], env=env,
                                      stdout=log, stderr=subprocess.STDOUT, cwd=REPO))
        port = free_port()
        procs.append(subprocess.Popen([sys.executable, "-m", "ioc", "api", "--dir", str(root), "--port", str(port)],
                                      env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO))
        token_file = root / "api-admin-token"
        deadline = time.monotonic() + 60
        while not token_file.exists() or not _healthy(f"http://127.0.0.1:{port}/health"):
            if time.monotonic() > deadline:
                raise SystemExit(f"the API did not start; see {root / 'procs.log'}")
            time.sleep(0.3)
        asyncio.run(bench(stack, f"http://127.0.0.1:{port}", token_file.read_text().strip(),
                          args.devices, args.requests, args.concurrency))
    finally:
        for p in procs:
            p.terminate()
            p.wait(30)
        stack.down()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
