"""Ingest benchmark: sustained QoS 1 load through the real broker into the real database.

Runs, in one process and against one private stack, (1) the ingest service and (2) a naive subscriber
that INSERTs every point as each message arrives, under the same load, and prints messages/s and
points/s committed, publish-to-commit latency p50/p99, and the ratio. Zero loss is checked by
counting rows against what the publishers sent.

    python bench/ingest.py                 # defaults: 300k messages, 2 publisher processes
    python bench/ingest.py --messages 50000 --naive-messages 5000   # quick look
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.process import BaseProcess
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import psutil
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.mqtt_load import paho_publisher, publisher  # noqa: E402
from cloud.db.devices import register_devices  # noqa: E402
from cloud.db.migrate import migrate  # noqa: E402
from cloud.ingest.decode import Decoded  # noqa: E402
from cloud.ingest.service import IngestService  # noqa: E402
from cloud.ingest.settings import IngestSettings  # noqa: E402
from contract import topics  # noqa: E402
from contract.messages import now_ms  # noqa: E402
from ioc.stack import Stack  # noqa: E402

METRICS = ("pm25", "pm10", "co2", "noise", "temperature")  # 5 points a message, as the issue asks
SITE = "bench"


# -- load generator ------------------------------------------------------------------------------
GENERATORS = {"raw": publisher, "paho": paho_publisher}


def run_load(port: int, devices: list[str], messages: int, publishers: int, window: int,
             rate: float, generator: str) -> tuple[float, Sequence[BaseProcess]]:
    """Starts the publisher processes; returns when they may begin and the processes."""
    ctx = mp.get_context("spawn")
    groups = [devices[i::publishers] for i in range(publishers)]
    per_proc = messages // publishers
    readies = [ctx.Event() for _ in groups]
    go = ctx.Event()
    procs = [ctx.Process(target=GENERATORS[generator], args=(port, g, per_proc, window, r, go, rate / publishers),
                         daemon=True)
             for g, r in zip(groups, readies, strict=True)]
    for p in procs:
        p.start()
    for r in readies:
        r.wait(60)
    start = time.time()
    go.set()
    return start, procs


# -- the two subscribers -------------------------------------------------------------------------
class CpuMeter:
    """CPU seconds per component over a run, so the report shows where the two cores went."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.start = self._sample()

    def _procs(self) -> dict[str, list[psutil.Process]]:
        me = psutil.Process()
        pg = psutil.Process(self.stack.postgres.pid() or 0)
        mq = psutil.Process(self.stack.mosquitto.pid() or 0)
        return {"publishers": me.children(recursive=True), "broker": [mq], "postgres": [pg, *pg.children()],
                "subscriber": [me]}

    def _sample(self) -> dict[str, float]:
        out = {}
        for name, procs in self._procs().items():
            total = 0.0
            for p in procs:
                try:
                    t = p.cpu_times()
                    total += t.user + t.system
                except psutil.NoSuchProcess:
                    pass
            out[name] = total
        return out

    def delta(self) -> dict[str, float]:
        now = self._sample()
        return {k: now[k] - self.start.get(k, 0.0) for k in now}


class CommitLog:
    def __init__(self) -> None:
        self.messages = 0
        self.latencies: list[float] = []
        self.last_commit = 0.0
        self.lock = threading.Lock()

    def add(self, n: int, lat: list[float]) -> None:
        with self.lock:
            self.messages += n
            self.latencies.extend(lat)
            self.last_commit = time.time()


def run_ours(stack: Stack, devices: list[str], messages: int, publishers: int, window: int, batch: int,
             receive_max: int, rate: float, generator: str) -> dict:
    log = CommitLog()

    def hook(batch: Sequence[Decoded], committed: int) -> None:
        log.add(len(batch), [committed - d.sent_at for d in batch if d.sent_at])

    svc = IngestService(IngestSettings(dsn=stack.dsn, mqtt_host=stack.mqtt_host, mqtt_port=stack.mqtt_port,
                                       instance="bench-ingest", stats_interval_s=2.0,
                                       batch_max_messages=batch, receive_maximum=receive_max),
                        on_commit=hook)
    svc.start()
    assert svc.wait_connected(10)
    try:
        return _measure("ingest service", stack, devices, messages, publishers, window, rate, generator, log)
    finally:
        svc.stop()


class NaiveSubscriber:
    """What a first attempt looks like: parse, one INSERT per point, autocommit, ack on return."""

    def __init__(self, stack: Stack, log: CommitLog) -> None:
        self.conn = psycopg.connect(stack.dsn, autocommit=True)
        self.log = log
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-naive", protocol=mqtt.MQTTv311,
                        clean_session=False)
        c.on_message = self.on_message
        c.on_connect = lambda cl, *_: cl.subscribe(topics.TELEMETRY_FILTER, 1)
        c.connect(stack.mqtt_host, stack.mqtt_port)
        self.client = c

    def on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        body = json.loads(msg.payload)
        for s in body["samples"]:
            for name, value in s["values"].items():
                self.conn.execute(
                    "INSERT INTO telemetry (ts, device_id, metric, value) VALUES"
                    " (timestamptz 'epoch' + %s * interval '1 millisecond', %s, %s, %s) ON CONFLICT DO NOTHING",
                    (s["ts"], body["device_id"], name, value))
        self.log.add(1, [now_ms() - body["sent_at"]])


def run_naive(stack: Stack, devices: list[str], messages: int, publishers: int, window: int, rate: float,
              generator: str) -> dict:
    log = CommitLog()
    naive = NaiveSubscriber(stack, log)
    naive.client.loop_start()
    time.sleep(0.5)
    try:
        return _measure("naive subscriber", stack, devices, messages, publishers, window, rate, generator, log)
    finally:
        naive.client.disconnect()
        naive.client.loop_stop()


def _measure(name: str, stack: Stack, devices: list[str], messages: int, publishers: int, window: int,
             rate: float, generator: str, log: CommitLog) -> dict:
    """Offer the load, wait until the subscriber committed all of it, and collect the figures."""
    start, procs = run_load(stack.mqtt_port, devices, messages, publishers, window, rate, generator)
    cpu = CpuMeter(stack)
    per_device = messages // publishers // (len(devices) // publishers)
    total = per_device * len(devices)
    _wait(lambda: log.messages >= total, 900, f"{name}: {total} messages committed")
    used = cpu.delta()
    for p in procs:
        p.join(30)
    return {**_result(name, log, start, total, stack, devices), "cpu": used}


# -- reporting -----------------------------------------------------------------------------------
def _wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    last = -1.0
    while not cond():
        if time.time() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        if time.time() - last > 5:
            print(f"  … waiting for {what}", flush=True)
            last = time.time()
        time.sleep(0.05)


def _result(name: str, log: CommitLog, start: float, total: int, stack: Stack, devices: list[str]) -> dict:
    elapsed = log.last_commit - start
    with psycopg.connect(stack.dsn) as conn:
        row = conn.execute("SELECT count(*) FROM telemetry WHERE device_id = ANY(%s)", (devices,)).fetchone()
        rows = row[0] if row else 0
    lat = np.array(log.latencies)
    return {"name": name, "messages": total, "seconds": elapsed, "msg_s": total / elapsed,
            "points_s": rows / elapsed, "rows": rows, "expected_rows": total * len(METRICS),
            "p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=300_000)
    ap.add_argument("--naive-messages", type=int, default=20_000)
    ap.add_argument("--publishers", type=int, default=1, help="load generator processes")
    ap.add_argument("--generator", choices=sorted(GENERATORS), default="raw",
                    help="raw: MQTT written by hand, ~7 µs CPU a message; paho: ~90 µs (bench/mqtt_load.py)")
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--window", type=int, default=500, help="unacknowledged messages per publisher connection")
    ap.add_argument("--rate", type=float, default=15_000,
                    help="offered load, messages/s in total (0: as fast as the publishers can)")
    ap.add_argument("--batch", type=int, default=IngestSettings.model_fields["batch_max_messages"].default)
    ap.add_argument("--receive-max", type=int, default=IngestSettings.model_fields["receive_maximum"].default)
    ap.add_argument("--skip-naive", action="store_true", help="only the ingest service (tuning runs)")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-", dir=REPO / ".ioc"))
    stack = Stack.load(root)
    print(f"stack under {root}: starting Mosquitto and PostgreSQL …", flush=True)
    stack.up()
    migrate(stack.dsn)
    devices = [f"bench-{i:03d}" for i in range(args.devices)]
    naive_devices = [f"naive-{i:03d}" for i in range(args.devices)]  # each run counts its own rows
    with psycopg.connect(stack.dsn) as conn:
        register_devices(conn, [(d, SITE, "env-gateway") for d in devices + naive_devices])
    try:
        print(f"ingest service: {args.messages:,} messages from {args.publishers} publisher processes …", flush=True)
        ours = run_ours(stack, devices, args.messages, args.publishers, args.window, args.batch, args.receive_max,
                        args.rate, args.generator)
        if args.skip_naive:
            print(ours)
            return
        print(f"naive subscriber: {args.naive_messages:,} messages …", flush=True)
        naive = run_naive(stack, naive_devices, args.naive_messages, args.publishers, args.window, args.rate,
                          args.generator)
    finally:
        stack.down()
        shutil.rmtree(root, ignore_errors=True)

    print()
    print(f"{'':18} {'messages':>9} {'msg/s':>9} {'points/s':>10} {'p50 ms':>8} {'p99 ms':>8}  loss")
    for r in (ours, naive):
        loss = r["expected_rows"] - r["rows"]
        print(f"{r['name']:18} {r['messages']:>9,} {r['msg_s']:>9,.0f} {r['points_s']:>10,.0f} "
              f"{r['p50']:>8.0f} {r['p99']:>8.0f}  {loss}")
    print("\nCPU, % of one core over the run:")
    for r in (ours, naive):
        print(f"  {r['name']:18} " + ", ".join(f"{k} {v / r['seconds'] * 100:.0f}%" for k, v in r["cpu"].items()))
    print(f"\nratio (ingest service / naive subscriber), messages/s: {ours['msg_s'] / naive['msg_s']:.1f}x")
    print(f"machine: {os.cpu_count()} cores; load generator, broker, database and subscriber all on it")


if __name__ == "__main__":
    main()
