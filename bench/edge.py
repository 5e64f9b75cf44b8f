"""Edge benchmarks: outbox throughput and the agent's footprint.

    .venv/bin/python bench/edge.py [--rows 50000] [--seconds 30]

1. Outbox write: samples/s committed one sampling tick per transaction (how the agent writes),
   against a baseline of bare SQLite inserts of the same rows in the same process.
2. Outbox drain: samples/s assembled into contract messages and acknowledged (no network), and
   through a real Mosquitto with QoS 1 PUBACKs when `mosquitto` is installed.
3. Agent at 1 sample/s for 50 metrics (simulated driver, live broker): CPU as % of one core and
   RSS, against the same process idling (baseline). Targets: < 2 % of a core, < 60 MB RSS.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from contract.messages import MetricSample, now_ms
from contract.profiles import DeviceProfile, MetricSpec, get_profile
from edge.agent import Agent
from edge.config import BrokerConfig, DeviceConfig, DrainSettings
from edge.drain import Drainer
from edge.outbox import Outbox, Record
from edge.session import Session

N_METRICS = 50


def _rows(n: int) -> list[Record]:
    """One row per tick of a typical station (8 values), as the sampler writes them."""
    base = now_ms()
    out = []
    for i in range(n):
        s = MetricSample(ts=base + i * 1000, values={f"m{j}": 12.5 + j + i % 7 for j in range(8)})
        out.append(Record("tlm", "env", s.ts, s.model_dump_json()))
    return out


def bench_write(tmp: Path, rows: list[Record], sync: str) -> tuple[float, float]:
    """Rows/s through Outbox.put (one row per transaction) and through bare sqlite3 (baseline)."""
    ob = Outbox(tmp / f"w-{sync}.sqlite3", max_bytes=10**10, max_age_s=1e9, sync=sync)
    t0 = time.perf_counter()
    for r in rows:
        ob.put([r], now_ms=0)
    ours = len(rows) / (time.perf_counter() - t0)
    ob.close()
    db = sqlite3.connect(tmp / f"b-{sync}.sqlite3", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={sync.upper()}")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)")
    t0 = time.perf_counter()
    for r in rows:
        db.execute("INSERT INTO t (body) VALUES (?)", (r.body,))
    base = len(rows) / (time.perf_counter() - t0)
    db.close()
    return ours, base


def bench_drain(tmp: Path, rows: list[Record]) -> float:
    ob = Outbox(tmp / "drain.sqlite3", max_bytes=10**10, max_age_s=1e9, sync="normal")
    ob.put(rows, now_ms=0)
    d = Drainer(ob, "bench-1", "bench", "boot", DrainSettings(batch_size=500))
    d.reset()
    d.flush()
    t0 = time.perf_counter()
    while msgs := d.next_messages():
        for m in msgs:
            d.acked(m)
    rate = len(rows) / (time.perf_counter() - t0)
    ob.close()
    return rate


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_broker(tmp: Path) -> tuple[subprocess.Popen[bytes], int] | None:
    exe = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if exe is None:
        return None
    port = _free_port()
    conf = tmp / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port
        time.sleep(0.025)
    proc.terminate()
    return None


def bench_drain_mqtt(tmp: Path, rows: list[Record], port: int) -> float:
    """Backlog drained through a real broker, rows deleted on PUBACK (window 16, 500 rows/message)."""
    ob = Outbox(tmp / "mqtt.sqlite3", max_bytes=10**10, max_age_s=1e9, sync="normal")
    ob.put(rows, now_ms=0)
    d = Drainer(ob, "bench-1", "bench", "boot", DrainSettings(batch_size=500))
    profile = get_profile("env-gateway")
    from contract.messages import StatusMessage

    session = Session(
        device_id="bench-1",
        broker=BrokerConfig(port=port),
        drainer=d,
        birth=lambda: StatusMessage(
            device_id="bench-1", status="online", boot_id="boot", ts=now_ms(), profile=profile.profile
        ),
        on_message=lambda m: None,
        on_connected=d.flush,
    )
    t0 = time.perf_counter()
    session.start()
    while ob.depth:
        time.sleep(0.005)
    rate = len(rows) / (time.perf_counter() - t0)
    session.stop()
    ob.close()
    return rate


def bench_profile() -> DeviceProfile:
    health = {n: m for n, m in get_profile("env-gateway").metrics.items() if m.stream == "health"}
    metrics = {
        f"m{i:02d}": MetricSpec(stream="env", unit="x", min=0, max=1000, interval_s=1)
        for i in range(N_METRICS)
    }
    return DeviceProfile(profile="bench-50", version=1, metrics={**metrics, **health})


def bench_agent(tmp: Path, port: int, seconds: float) -> dict[str, float]:
    """Run in a fresh process (see --agent-port) so the RSS is the agent's, not this benchmark's."""
    proc = psutil.Process()
    # Baseline: this same process, idle, over the same window.
    c0, t0 = sum(proc.cpu_times()[:2]), time.perf_counter()
    time.sleep(min(seconds, 5))
    idle_pct = 100 * (sum(proc.cpu_times()[:2]) - c0) / (time.perf_counter() - t0)
    rss_before = proc.memory_info().rss / 1e6

    cfg = DeviceConfig.model_validate(
        {
            "device_id": "bench-agent",
            "site": "bench",
            "profile": "bench-50",
            "broker": {"port": port},
            "outbox": {"path": str(tmp / "agent.sqlite3"), "sync": "full"},
            "sensors": [{"type": "simulated", "seed": 1}],
            "settings": {"heartbeat_s": 30},
        }
    )
    agent = Agent(cfg, profile=bench_profile())
    runner = threading.Thread(target=agent.run, daemon=True)
    runner.start()
    agent.session.wait_connected(10)
    time.sleep(3)  # settle: imports, first connect, first heartbeat
    reads0 = agent.sampler.reads if agent.sampler else 0
    c0, t0 = sum(proc.cpu_times()[:2]), time.perf_counter()
    time.sleep(seconds)
    wall = time.perf_counter() - t0
    cpu_pct = 100 * (sum(proc.cpu_times()[:2]) - c0) / wall
    reads = (agent.sampler.reads if agent.sampler else 0) - reads0
    rss = proc.memory_info().rss / 1e6
    depth = agent.outbox.depth
    agent.stop()
    runner.join(10)
    return {
        "cpu_pct": cpu_pct,
        "idle_cpu_pct": idle_pct,
        "rss_mb": rss,
        "rss_before_mb": rss_before,
        "samples_per_s": reads / wall,
        "outbox_depth": depth,
    }


def agent_in_subprocess(tmp: Path, port: int, seconds: float) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--agent-port", str(port), "--seconds", str(seconds), "--tmp", str(tmp)],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--agent-port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--tmp", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.agent_port:
        print(json.dumps(bench_agent(args.tmp, args.agent_port, args.seconds)))
        return
    rows = _rows(args.rows)
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as d:
        tmp = Path(d)
        print(f"outbox, {args.rows} rows of 8 values, one row per transaction")
        for sync in ("normal", "full"):
            ours, base = bench_write(tmp, rows, sync)
            print(
                f"  write sync={sync:<6}: {ours:9.0f} rows/s = {ours * 8:9.0f} samples/s"
                f"   (bare sqlite insert {base:9.0f} rows/s; ratio {ours / base:.2f})"
            )
        drain = bench_drain(tmp, rows)
        print(f"  drain, no network: {drain:9.0f} rows/s = {drain * 8:9.0f} samples/s")
        broker = start_broker(tmp)
        if broker is None:
            print("  mosquitto not found: skipping the MQTT drain and agent benchmarks")
            return
        proc, port = broker
        try:
            mq = bench_drain_mqtt(tmp, rows, port)
            print(
                f"  drain via Mosquitto (QoS 1, delete on PUBACK): {mq:9.0f} rows/s = {mq * 8:9.0f} "
                f"samples/s (ratio to no-network drain {mq / drain:.2f})"
            )
            print(
                f"agent: {N_METRICS} metrics at 1 sample/s each, outbox sync=full, "
                f"{args.seconds:.0f} s window"
            )
            r = agent_in_subprocess(tmp, port, args.seconds)
            print(f"  samples read: {r['samples_per_s']:.1f}/s, outbox depth at end {r['outbox_depth']:.0f}")
            ok = "OK" if r["cpu_pct"] < 2 else "OVER"
            print(
                f"  CPU: {r['cpu_pct']:.2f} % of one core (same process idle: {r['idle_cpu_pct']:.2f} %; "
                f"target < 2 %)  {ok}"
            )
            ok = "OK" if r["rss_mb"] < 60 else "OVER"
            print(
                f"  RSS: {r['rss_mb']:.1f} MB (same process after imports, before the agent: "
                f"{r['rss_before_mb']:.1f} MB, ratio {r['rss_mb'] / r['rss_before_mb']:.2f}; "
                f"target < 60 MB)  {ok}"
            )
        finally:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
