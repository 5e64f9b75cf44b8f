"""Ingest benchmark: sustained QoS 1 load through the real broker into the real database.

Runs, in one process and against one private stack, with the load generator on the same machine:
(1) the ingest service under a paced load (--rate, default 15,000 messages/s of 5 points): does it
keep up, at what publish-to-commit latency; (2) the ingest service under as much load as the generator
can offer (the generator finishes within seconds, so most of this run drains the backlog queued at the
broker: an upper bound of what ingest takes, not a sustained rate); (3) a naive subscriber that INSERTs
every point as each message arrives, under the same unpaced load. For each it prints messages/s and
points/s committed in the steady state (the middle 80% of the messages, so start-up and the last
batch's latency do not count), p50/p99 publish-to-commit latency, and zero loss checked by counting
rows against what was sent; then the ratio of (2) to (3), two backlogs drained alike. Whether a rate
is sustained is for (1) to show: run it with a higher --rate to find where latency starts to climb.

    python bench/ingest.py                                          # defaults: 300k messages a run
    python bench/ingest.py --messages 50000 --naive-messages 5000   # quick look
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys
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
from ioc.stack import Stack, scratch_dir  # noqa: E402

METRICS = ("pm25", "pm10", "co2", "noise", "temperature")  # 5 points a message, as the issue asks
SITE = "bench"


def _login(stack: Stack, service: str) -> dict[str, str]:
    creds = stack.credentials(service)
    return {"mqtt_username": creds[0], "mqtt_password": creds[1]} if creds else {}


# -- load generator ------------------------------------------------------------------------------
GENERATORS = {"raw": publisher, "paho": paho_publisher}


def run_load(port: int, devices: list[str], messages: int, publishers: int, window: int,
             rate: float, generator: str, login: tuple[str, str] | None = None) -> tuple[float, Sequence[BaseProcess]]:
    """Starts the publisher processes; returns when they may begin and the processes. login: the stack's
    `bench` account (the broker lets nobody in anonymously); one account speaks for every simulated device."""
    ctx = mp.get_context("spawn")
    groups = [devices[i::publishers] for i in range(publishers)]
    per_proc = messages // publishers
    readies = [ctx.Event() for _ in groups]
    go = ctx.Event()
    procs = [ctx.Process(target=GENERATORS[generator],
                         args=(port, g, per_proc, window, r, go, rate / publishers, login), daemon=True)
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
        self.commits: list[tuple[float, int]] = []  # (time, messages committed so far)
        self.lock = threading.Lock()

    def add(self, n: int, lat: list[float]) -> None:
        with self.lock:
            self.messages += n
            self.latencies.extend(lat)
            self.commits.append((time.time(), self.messages))

    def steady_rate(self, total: int) -> float:
        """Messages/s committed in the steady state: the slope of a straight line fitted to (time, messages
        committed so far) over the commits between 10% and 90% of `total` (a fit, not two end points, so
        one late batch does not move the figure)."""
        middle = np.array([c for c in self.commits if 0.1 * total <= c[1] <= 0.9 * total])
        return float(np.polyfit(middle[:, 0] - middle[0, 0], middle[:, 1], 1)[0])


def run_ours(name: str, stack: Stack, devices: list[str], messages: int, publishers: int, window: int, batch: int,
             receive_max: int, rate: float, generator: str, watermark: bool = True, writers: int = 2) -> dict:
    log = CommitLog()

    def hook(batch: Sequence[Decoded], committed: int) -> None:
        log.add(len(batch), [committed - d.sent_at for d in batch if d.sent_at])

    svc = IngestService(IngestSettings(dsn=stack.dsn, mqtt_host=stack.mqtt_host, mqtt_port=stack.mqtt_port,
                                       instance="bench-ingest", stats_interval_s=2.0, **_login(stack, "ingest"),
                                       batch_max_messages=batch, receive_maximum=receive_max,
                                       watermark=watermark, writers=writers),
                        on_commit=hook)
    svc.start()
    assert svc.wait_connected(10)
    try:
        result = _measure(name, stack, devices, messages, publishers, window, rate, generator, log)
        watermarks, longest = svc.watermarks_published  # before the final flush on the way out
    finally:
        svc.stop()
    return {**result, "watermarks": watermarks, "watermark_wait": longest}


class NaiveSubscriber:
    """What a first attempt looks like: parse, one INSERT per point, autocommit, ack on return."""

    def __init__(self, stack: Stack, log: CommitLog) -> None:
        self.conn = psycopg.connect(stack.dsn, autocommit=True)
        self.log = log
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-naive", protocol=mqtt.MQTTv311,
                        clean_session=False)
        c.on_message = self.on_message
        c.on_connect = lambda cl, *_: cl.subscribe(topics.TELEMETRY_FILTER, 1)
        if (login := stack.credentials("ingest")) is not None:
            c.username_pw_set(*login)
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
    start, procs = run_load(stack.mqtt_port, devices, messages, publishers, window, rate, generator,
                            stack.credentials("bench"))
    cpu = CpuMeter(stack)
    per_device = messages // publishers // (len(devices) // publishers)
    total = per_device * len(devices)
    _wait(lambda: log.messages >= total, 900, f"{name}: {total} messages committed")
    used = cpu.delta()
    for p in procs:
        p.join(30)
    return {**_result(name, log, start, total, stack, devices), "cpu": used, "offered": rate}


# -- one CR-poisoned message a second (issue 8) ----------------------------------------------------
POISON_CAMERA = "poison-cam"


def _poison_payload(seq: int) -> bytes:
    """A counts message whose line name and boot id carry a carriage return: one unescaped CR fails a COPY."""
    ts = now_ms() - 60_000
    return json.dumps({"v": 1, "device_id": POISON_CAMERA, "boot_id": f"boot\r{seq}", "seq": seq, "sent_at": now_ms(),
                       "counts": [{"ts": ts - ts % 60_000, "interval_s": 60, "line": f"north\r{seq}", "class": "car",
                                   "direction": "in", "count": 1}]}).encode()


def _drain(name: str, stack: Stack, devices: list[str], messages: int, rate: float, batch: int, receive_max: int,
           poison_every_s: float | None) -> dict:
    """Seconds from the first publish until every valid message is committed, with or without a poisoned
    message every `poison_every_s` from a camera in the same stream."""
    log = CommitLog()

    def hook(decoded: Sequence[Decoded], committed: int) -> None:
        valid = [d for d in decoded if d.device_id != POISON_CAMERA]
        log.add(len(valid), [committed - d.sent_at for d in valid if d.sent_at])

    svc = IngestService(IngestSettings(dsn=stack.dsn, mqtt_host=stack.mqtt_host, mqtt_port=stack.mqtt_port,
                                       instance=f"bench-{name}", stats_interval_s=2.0, batch_max_messages=batch,
                                       **_login(stack, "ingest"),
                                       receive_maximum=receive_max), on_commit=hook)
    svc.start()
    assert svc.wait_connected(10)
    stop = threading.Event()
    poisoner = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-poison-{name}", protocol=mqtt.MQTTv311)
    if (login := stack.credentials("bench")) is not None:
        poisoner.username_pw_set(*login)
    poisoner.connect(stack.mqtt_host, stack.mqtt_port)
    poisoner.loop_start()
    sent = [0]

    def poison() -> None:
        while poison_every_s is not None and not stop.wait(poison_every_s):
            sent[0] += 1
            poisoner.publish(topics.telemetry(SITE, POISON_CAMERA, "counts"), _poison_payload(sent[0]), qos=1)

    t = threading.Thread(target=poison, daemon=True)
    t.start()
    try:
        result = _measure(name, stack, devices, messages, 1, 500, rate, "raw", log)
    finally:
        stop.set()
        t.join(5)
        poisoner.loop_stop()
        poisoner.disconnect()
        svc.stop()
    return {**result, "poisoned": sent[0]}


def run_poison_case(stack: Stack, messages: int, rate: float, batch: int, receive_max: int) -> None:
    """Clean run, then the same load with one CR-poisoned message a second; prints the drain-time ratio
    (issue 8 asks for at most 1.5x)."""
    fleets = {run: [f"{run}-{i:03d}" for i in range(100)] for run in ("clean", "poisoned")}
    with psycopg.connect(stack.dsn) as conn:
        register_devices(conn, [(d, SITE, "env-gateway") for f in fleets.values() for d in f]
                         + [(POISON_CAMERA, SITE, "traffic-camera")])
    print(f"poison case: {messages:,} messages at {rate:,.0f} msg/s, clean …", flush=True)
    clean = _drain("clean", stack, fleets["clean"], messages, rate, batch, receive_max, None)
    print("poison case: the same with one CR-poisoned message a second …", flush=True)
    poisoned = _drain("poisoned", stack, fleets["poisoned"], messages, rate, batch, receive_max, 1.0)
    with psycopg.connect(stack.dsn) as conn:
        row = conn.execute("SELECT count(*) FROM dead_letters WHERE device_id = %s", (POISON_CAMERA,)).fetchone()
    print(f"\n{'':18} {'messages':>9} {'drain s':>8} {'p99 ms':>7}  loss  poisoned (dead-lettered)")
    for r in (clean, poisoned):
        loss = r["expected_rows"] - r["rows"]
        print(f"{r['name']:18} {r['messages']:>9,} {r['seconds']:>8.1f} {r['p99']:>7,.0f}  {loss:>4}"
              f"  {r['poisoned']} ({row[0] if row and r is poisoned else '-'})")
    print(f"ratio (poisoned / clean drain time): {poisoned['seconds'] / clean['seconds']:.2f}x (issue 8: at most 1.5x)")


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
    with psycopg.connect(stack.dsn) as conn:
        row = conn.execute("SELECT count(*) FROM telemetry WHERE device_id = ANY(%s)", (devices,)).fetchone()
        rows = row[0] if row else 0
    rate = log.steady_rate(total)
    lat = np.array(log.latencies)  # in commit order
    tenth = len(lat) // 10
    return {"name": name, "messages": total, "seconds": log.commits[-1][0] - start, "msg_s": rate,
            "points_s": rate * rows / total, "rows": rows, "expected_rows": total * len(METRICS),
            "p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
            # A load is sustained when latency stays flat; under overload it climbs as the broker's queue grows.
            "p50_first": float(np.percentile(lat[:tenth], 50)), "p50_last": float(np.percentile(lat[-tenth:], 50))}


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
                    help="offered load of the paced run, messages/s in total (0: skip the paced run)")
    ap.add_argument("--batch", type=int, default=IngestSettings.model_fields["batch_max_messages"].default)
    ap.add_argument("--receive-max", type=int, default=IngestSettings.model_fields["receive_maximum"].default)
    ap.add_argument("--writers", type=int, default=IngestSettings.model_fields["writers"].default,
                    help="database connections committing in parallel")
    ap.add_argument("--skip-naive", action="store_true", help="only the ingest service (tuning runs)")
    ap.add_argument("--skip-unpaced", action="store_true", help="only the paced run (tuning runs)")
    ap.add_argument("--watermark", choices=["on", "off"], default="on",
                    help="ingest publishes each device's committed (boot_id, seq) on ack/v1/{id} (the default)")
    ap.add_argument("--poison-case", action="store_true",
                    help="only the CR-poisoned case: --messages at --rate (use e.g. --rate 2500), clean vs one "
                         "poisoned message a second, drain-time ratio")
    ap.add_argument("--backend", choices=["auto", "timescale", "postgres"], default="auto",
                    help="database backend of the private stack (auto: TimescaleDB where installed)")
    args = ap.parse_args()

    root = scratch_dir("bench-")
    stack = Stack.load(root, backend=args.backend)
    print(f"stack under {root} ({stack.backend}): starting Mosquitto and PostgreSQL …", flush=True)
    stack.up()
    migrate(stack.dsn)
    fleets = {run: [f"{run}-{i:03d}" for i in range(args.devices)] for run in ("paced", "max", "naive")}
    with psycopg.connect(stack.dsn) as conn:  # each run has its own devices and counts its own rows
        register_devices(conn, [(d, SITE, "env-gateway") for fleet in fleets.values() for d in fleet])
    if args.poison_case:
        try:
            run_poison_case(stack, args.messages, args.rate, args.batch, args.receive_max)
        finally:
            stack.down()
            shutil.rmtree(root, ignore_errors=True)
        return
    common = (args.publishers, args.window)
    ingest = (args.batch, args.receive_max)
    results = []
    try:
        if args.rate:
            print(f"ingest service, offered {args.rate:,.0f} msg/s: {args.messages:,} messages …", flush=True)
            results.append(run_ours("ingest, paced", stack, fleets["paced"], args.messages, *common, *ingest,
                                    args.rate, args.generator, watermark=args.watermark == "on", writers=args.writers))
        if not args.skip_unpaced:
            print(f"ingest service, unpaced: {args.messages:,} messages …", flush=True)
            results.append(run_ours("ingest, unpaced", stack, fleets["max"], args.messages, *common, *ingest, 0,
                                    args.generator, watermark=args.watermark == "on", writers=args.writers))
        if not args.skip_naive:
            print(f"naive subscriber, unpaced: {args.naive_messages:,} messages …", flush=True)
            results.append(run_naive(stack, fleets["naive"], args.naive_messages, *common, 0, args.generator))
    finally:
        stack.down()
        shutil.rmtree(root, ignore_errors=True)

    print(f"\n{'':18} {'offered':>8} {'messages':>9} {'msg/s':>8} {'points/s':>9} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'p50 first → last tenth':>23}  loss")
    for r in results:
        offered = f"{r['offered']:,.0f}" if r["offered"] else "max"
        trend = f"{r['p50_first']:,.0f} → {r['p50_last']:,.0f} ms"
        print(f"{r['name']:18} {offered:>8} {r['messages']:>9,} {r['msg_s']:>8,.0f} {r['points_s']:>9,.0f} "
              f"{r['p50']:>7,.0f} {r['p99']:>7,.0f} {trend:>23}  {r['expected_rows'] - r['rows']}")
    print("msg/s, points/s: committed in the steady state (middle 80% of the messages). Latency: publish to commit;\n"
          "flat from the first to the last tenth = the load is sustained; climbing = overload, the broker queues.\n"
          "Unpaced runs mostly drain a backlog the generator queued at the broker in the first seconds.\n"
          "loss: points sent but not stored.")
    print("\nCPU, % of one core over the run; and µs of CPU a message (contention inflates it; the sum bounds what\n"
          "these cores can take at all, however the work is spread):")
    for r in results:
        print(f"  {r['name']:18} " + ", ".join(f"{k} {v / r['seconds'] * 100:.0f}%" for k, v in r["cpu"].items()))
        per_msg = {k: v / r["messages"] * 1e6 for k, v in r["cpu"].items()}
        total = sum(per_msg.values())
        print(f"  {'':18} " + ", ".join(f"{k} {v:.0f}" for k, v in per_msg.items())
              + f" µs: {total:.0f} µs a message → at most {(os.cpu_count() or 1) * 1e6 / total:,.0f} msg/s")
    for r in results:
        if "watermarks" in r:
            wm = r["watermarks"]
            print(f"  {r['name']:18} watermark publishes: {wm:,} ({wm / r['seconds']:,.0f}/s, "
                  f"{wm / r['messages']:.2f} a message) for {args.devices:,} devices; the longest a device waited "
                  f"for one: {r['watermark_wait']:.1f} s (devices resend after 15 s)")
    if not args.skip_naive and not args.skip_unpaced:
        ours, naive = results[-2], results[-1]
        print(f"\nratio (ingest service / naive subscriber, both unpaced), messages/s: "
              f"{ours['msg_s'] / naive['msg_s']:.1f}x")
    print(f"machine: {os.cpu_count()} cores; load generator ({args.generator}), broker, database and subscriber "
          "all on it")


if __name__ == "__main__":
    main()
