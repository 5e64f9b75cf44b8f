"""Registry API benchmark on a registry of 10,000 devices, first quiet, then with live ingest running.

    .venv/bin/python bench/api.py [--devices 10000] [--requests 3000] [--concurrency 50] [--rate 500]
                                  [--ingest-rate 1000] [--broker-credentials] [--workers 2]

Everything real and on this machine: its own Mosquitto + PostgreSQL stack, `ioc ingest` and `ioc api`
(`--workers` processes, default 2: one per core) as separate processes, a paho publisher process for the
live telemetry, and the load generator here (`bench/http_load.py`: keep-alive HTTP/1.1 by hand, so that
the cores go to the server). Prints:
1. provisioning: POST /devices in chunks of 1,000 (one transaction each, audit rows included; with
   `--broker-credentials` each device also gets a broker password, hashed, and the password and ACL
   files are rendered and the broker reloaded);
2. per route, at the given concurrency: p50 / p99 / requests/s for get-device (unpaced, and paced at
   `--rate` with latency from each request's scheduled start), list-devices (page of 100, filtered by
   site) and latest-readings; once with no telemetry arriving, once with `--ingest-rate` messages/s;
3. the baseline, in this process and in each phase: the get-device query straight on a psycopg pool at
   the same concurrency, so `x baseline` is what HTTP, FastAPI and the token check add;
4. where the CPU went in each phase (% of one core): this load generator, the API, PostgreSQL, ingest,
   the publisher, and the rest of the machine (other users of the two cores).
Targets: get-device p99 < 25 ms at 500 requests/s; 10,000 devices provisioned in < 60 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path

import httpx
import psutil
import uvloop
from psycopg_pool import AsyncConnectionPool

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import http_load  # noqa: E402
from cloud.db.devices import DEVICE_SELECT  # noqa: E402
from cloud.db.migrate import migrate  # noqa: E402
from ioc.stack import Stack, scratch_dir  # noqa: E402

SITES = 50


def site_of(device_id: str) -> str:
    return f"site-{int(device_id.split('-')[1]) % SITES:02d}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _login_env(stack: Stack, service: str) -> dict[str, str]:
    creds = stack.credentials(service)
    return {"IOC_MQTT_USERNAME": creds[0], "IOC_MQTT_PASSWORD": creds[1]} if creds else {}


def publish(host: str, port: int, ids: list[str], rate: float, stop: MpEvent, done_first: MpEvent,
            login: tuple[str, str] | None = None) -> None:
    """With rate 0: every device's readings and heartbeat once. Otherwise `rate` messages/s (half readings,
    half heartbeats) to random devices until `stop`. Its own process: its CPU and GIL are not the generator's."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    if login:  # the stack's `bench` account: the broker lets nobody in anonymously
        c.username_pw_set(*login)
    c.connect(host, port)
    c.loop_start()
    seq = 0

    def send(d: str) -> None:
        nonlocal seq
        seq += 1
        now = int(time.time() * 1000)
        c.publish(f"tlm/v1/{site_of(d)}/{d}/env", json.dumps({"v": 1, "device_id": d, "boot_id": "b", "seq": seq,
                  "samples": [{"ts": now, "values": {"pm25": random.uniform(0, 80), "co2": 420.0}}]}), qos=1)
        c.publish(f"tlm/v1/{site_of(d)}/{d}/health", json.dumps({"v": 1, "device_id": d, "boot_id": "b",
                  "seq": seq, "samples": [{"ts": now, "values": {"outbox_depth": 0, "outbox_dropped": 0}}]}), qos=1)

    for d in ids if rate == 0 else []:
        send(d)
    done_first.set()
    t0, sent = time.perf_counter(), 0
    while rate > 0 and not stop.is_set():
        send(random.choice(ids))
        sent += 2
        ahead = t0 + sent / rate - time.perf_counter()
        if ahead > 0:
            time.sleep(ahead)
    stop.wait()
    c.loop_stop()
    c.disconnect()


class CpuMeter:
    """CPU seconds of named processes (with their children) and of the whole machine between two marks."""

    def __init__(self, procs: dict[str, list[psutil.Process]]) -> None:
        self.procs = procs

    def _proc_cpu(self) -> dict[str, float]:
        out = {}
        for name, roots in self.procs.items():
            total = 0.0
            for root in roots:
                for p in [root, *root.children(recursive=True)]:
                    try:
                        t = p.cpu_times()
                        total += t.user + t.system
                    except psutil.Error:
                        pass
            out[name] = total
        return out

    @staticmethod
    def _machine_busy() -> float:
        t = psutil.cpu_times()
        return t.user + t.system + t.nice + t.irq + t.softirq + getattr(t, "steal", 0.0)

    def mark(self) -> tuple[float, float, dict[str, float]]:
        return time.perf_counter(), self._machine_busy(), self._proc_cpu()

    def since(self, mark: tuple[float, float, dict[str, float]], generator_cpu_s: float, requests: int) -> str:
        t0, busy0, procs0 = mark
        wall = time.perf_counter() - t0
        now = self._proc_cpu()
        used = {k: now[k] - procs0[k] for k in now}
        used["generator"] = generator_cpu_s
        others = (self._machine_busy() - busy0) - sum(used.values())
        parts = [f"{k} {v / wall * 100:.0f}%" for k, v in used.items()]
        per_req = f"; a request cost the API {used['api'] / requests * 1000:.2f} ms of CPU, PostgreSQL " \
            f"{used['postgres'] / requests * 1000:.2f} ms"
        return ("  cpu (% of one core): " + ", ".join(parts) + f", rest of machine {max(0.0, others) / wall * 100:.0f}%"
                + per_req)


async def phase(title: str, url: str, headers: dict[str, str], dsn: str, ids: list[str], n: int, conc: int,
                rate: float, meter: CpuMeter) -> None:
    host, port = url.split("//")[1].split(":")
    print(title)

    def rnd(_: int) -> str:
        return f"/devices/{random.choice(ids)}"

    routes: list[tuple[str, Callable[[int], str], int, float | None]] = [
        ("get-device", rnd, n, None),
        (f"get-device paced {rate:.0f}/s", rnd, n, rate),
        ("list-devices (100, site filter)", lambda i: f"/devices?site=site-{i % SITES:02d}&limit=100", n // 3, None),
        ("latest-readings", lambda i: f"/devices/{random.choice(ids)}/readings/latest", n, None),
    ]
    await http_load.run(host, int(port), headers, rnd, 300, conc)  # warm-up: prepared statements, caches
    async with AsyncConnectionPool(dsn, min_size=10, max_size=10, kwargs={"autocommit": True}) as pool:
        async def direct(_: int) -> None:
            async with pool.connection() as conn:
                await (await conn.execute(DEVICE_SELECT + " WHERE d.device_id = %s", (random.choice(ids),))).fetchone()

        await timed_calls(direct, 300, conc)
        base = await timed_calls(direct, n, conc)
    print(f"  {'baseline: the query on a pool here':<34} p50 {base.pct_ms(.5):7.1f} ms  p99 {base.pct_ms(.99):7.1f} ms"
          f"  {base.rps:6.0f} req/s")
    for name, path, count, pace in routes:
        m = meter.mark()
        r = await http_load.run(host, int(port), headers, path, count, conc, pace)
        ratio = f"  x{r.pct_ms(.5) / base.pct_ms(.5):.1f} p50, x{r.rps / base.rps:.2f} req/s vs baseline" \
            if name.startswith("get-device") else ""
        err = f"  {r.errors} errors, first: {r.first_error}" if r.errors else ""
        print(f"  {name:<34} p50 {r.pct_ms(.5):7.1f} ms  p99 {r.pct_ms(.99):7.1f} ms  {r.rps:6.0f} req/s{ratio}{err}")
        print(meter.since(m, r.cpu_s, len(r.latencies_s)))


async def timed_calls(make: Callable[[int], Awaitable[object]], n: int, conc: int) -> http_load.LoadResult:
    res = http_load.LoadResult()
    next_i = 0
    t0 = time.perf_counter()

    async def worker() -> None:
        nonlocal next_i
        while next_i < n:
            next_i += 1
            s = time.perf_counter()
            await make(next_i)
            res.latencies_s.append(time.perf_counter() - s)

    await asyncio.gather(*(worker() for _ in range(conc)))
    res.wall_s = time.perf_counter() - t0
    return res


def provision(url: str, headers: dict[str, str], ids: list[str]) -> None:
    t0 = time.perf_counter()
    issued = 0
    with httpx.Client(base_url=url, headers=headers, timeout=300) as c:
        for i in range(0, len(ids), 1000):
            body = [{"device_id": d, "site": site_of(d), "profile": "env-gateway", "tags": ["bench"],
                     "location": {"lat": 52.5, "lon": 13.4}} for d in ids[i:i + 1000]]
            r = c.post("/devices", json=body)
            r.raise_for_status()
            issued += len(r.json().get("credentials") or {})
    dt = time.perf_counter() - t0
    creds = f", {issued:,} broker passwords issued" if issued else ", no broker credentials"
    print(f"provisioning: {len(ids):,} devices in {dt:.1f} s ({len(ids) / dt:,.0f} devices/s, audit included{creds})")


def wait_ingested(dsn: str, n: int, timeout_s: float = 120) -> None:
    import psycopg

    deadline = time.monotonic() + timeout_s
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute("SELECT count(*) FROM device_status WHERE last_seen IS NOT NULL").fetchone()
            if row and row[0] >= n:
                return
            time.sleep(0.5)
    raise SystemExit(f"ingest did not store every device's first readings within {timeout_s} s")


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
    ap.add_argument("--rate", type=float, default=500, help="paced get-device requests/s")
    ap.add_argument("--ingest-rate", type=float, default=1000, help="live telemetry messages/s in phase 2")
    ap.add_argument("--broker-credentials", action="store_true", help="the registry issues broker passwords")
    ap.add_argument("--workers", type=int, default=2, help="API processes (ioc api --workers)")
    args = ap.parse_args()
    (REPO / ".ioc").mkdir(exist_ok=True)
    root = scratch_dir("bench-api-")
    stack = Stack.load(root)
    procs: list[subprocess.Popen[bytes]] = []
    stop, first = mp.Event(), mp.Event()
    publisher: mp.Process | None = None
    try:
        stack.up()
        migrate(stack.dsn)
        env = {**os.environ, "IOC_DSN": stack.dsn, "IOC_MQTT_HOST": stack.mqtt_host,
               "IOC_MQTT_PORT": str(stack.mqtt_port)}
        api_env = env | _login_env(stack, "registry")
        if args.broker_credentials:  # the stack's own broker files: the broker learns each device at once
            api_env |= {"IOC_API_BROKER_AUTH_DIR": str(stack.mosquitto.auth_dir),
                        "IOC_API_BROKER_PID_FILE": str(stack.mosquitto.pid_file)}
        log = (root / "procs.log").open("ab")
        procs.append(subprocess.Popen([sys.executable, "-m", "ioc", "ingest", "--instance", "bench-api"],
                                      env=env | _login_env(stack, "ingest"), stdout=log, stderr=subprocess.STDOUT,
                                      cwd=REPO))
        port = free_port()
        procs.append(subprocess.Popen([sys.executable, "-m", "ioc", "api", "--dir", str(root), "--port", str(port),
                                       "--workers", str(args.workers)],
                                      env=api_env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO))
        url, token_file = f"http://127.0.0.1:{port}", root / "api-admin-token"
        deadline = time.monotonic() + 60
        while not token_file.exists() or not _healthy(f"{url}/health"):
            if time.monotonic() > deadline:
                raise SystemExit(f"the API did not start; see {root / 'procs.log'}")
            time.sleep(0.3)
        headers = {"Authorization": f"Bearer {token_file.read_text().strip()}"}
        ids = [f"gw-{i:05d}" for i in range(args.devices)]
        provision(url, headers, ids)
        quiet_stop, quiet_first = mp.Event(), mp.Event()
        seed = mp.Process(target=publish, args=(stack.mqtt_host, stack.mqtt_port, ids, 0.0, quiet_stop, quiet_first,
                                                stack.credentials("bench")))
        seed.start()
        quiet_first.wait(300)
        wait_ingested(stack.dsn, len(ids))
        quiet_stop.set()
        seed.join(30)
        pg_pid = stack.postgres.pid()
        meter = CpuMeter({"api": [psutil.Process(procs[1].pid)], "postgres": [psutil.Process(pg_pid)] if pg_pid else [],
                          "ingest": [psutil.Process(procs[0].pid)]}
                         | ({"broker": [psutil.Process(mq_pid)]} if (mq_pid := stack.mosquitto.pid()) else {}))
        print(f"{os.cpu_count()} cores; {args.workers} API process(es); load average before: {os.getloadavg()[0]:.1f}")
        uvloop.run(phase(f"phase 1, no telemetry arriving, concurrency {args.concurrency}:", url, headers,
                         stack.dsn, ids, args.requests, args.concurrency, args.rate, meter))
        publisher = mp.Process(target=publish, args=(stack.mqtt_host, stack.mqtt_port, ids, args.ingest_rate,
                                                     stop, first, stack.credentials("bench")))
        publisher.start()
        first.wait(30)
        time.sleep(3)
        meter.procs["publisher"] = [psutil.Process(publisher.pid)]
        uvloop.run(phase(f"phase 2, live ingest at {args.ingest_rate:.0f} msg/s, concurrency {args.concurrency}:",
                         url, headers, stack.dsn, ids, args.requests, args.concurrency, args.rate, meter))
        r = httpx.get(f"{url}/devices/{ids[0]}", headers=headers)
        assert r.json()["live"]["outbox_backlog"] is not None, "the heartbeats did not reach the API"
        print(f"load average after: {os.getloadavg()[0]:.1f}")
    finally:
        stop.set()
        if publisher is not None:
            publisher.join(10)
        for p in procs:
            p.terminate()
            p.wait(30)
        stack.down()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
