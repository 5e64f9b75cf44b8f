"""Storage and dashboard speed at city scale, on TimescaleDB and on plain PostgreSQL side by side.

Builds a city history through the project's own decoder and writer (the ingest path minus MQTT) on a fresh
local server per backend, then prints, per backend:
  - load rate (points/s through Decoder + BatchWriter, COPY),
  - bytes per point on disk (table + indexes; TimescaleDB before and after compression),
  - every dashboard panel's p50/p95 latency over 6 h, 7 d and 30 d ranges, run as the read-only Grafana role
    with Grafana's macros expanded as Grafana does (tests/cloud/grafana_macros.py, the tests' own expander).

    python bench/storage.py                       # 500 devices x 8 metrics x 30 days at 60 s (~170 M points)
    python bench/storage.py --scale 0.1           # a tenth of the devices (what docs/operations.md reports)
    python bench/storage.py --backend postgres --days 7

The baseline of the ratio column is the plain-PostgreSQL run in the same process.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "cloud"))

from grafana_macros import interpolate, resolve_variables  # noqa: E402  (the tests' expander: one copy of Grafana's rules)

from cloud.db.devices import register_devices  # noqa: E402
from cloud.db.maintenance import run_maintenance  # noqa: E402
from cloud.db.migrate import MIGRATION_LOCK_ID, migrate  # noqa: E402
from cloud.ingest.decode import Decoded, Decoder  # noqa: E402
from cloud.ingest.registry import DeviceCache  # noqa: E402
from cloud.ingest.writer import BatchWriter  # noqa: E402
from contract import topics  # noqa: E402
from contract.messages import COUNTS_STREAM  # noqa: E402
from ioc.stack import Stack, scratch_dir  # noqa: E402
from ioc.stack.postgres import find_bin_dir, timescale_installed  # noqa: E402

console = Console(width=200)  # a wide table stays readable when piped to a file
RANGES = {"6h": timedelta(hours=6), "7d": timedelta(days=7), "30d": timedelta(days=30)}
ENV_METRICS = ("pm25", "pm10", "co2", "noise", "temperature", "humidity", "rain", "water_level")
ROLE_MIGRATION = REPO / "cloud" / "db" / "migrations" / "0004_grafana_role.sql"
DASHBOARDS = sorted((REPO / "cloud" / "grafana" / "dashboards").glob("*.json"))


@dataclass
class Run:
    backend: str
    points: int = 0
    load_s: float = 0.0
    upkeep_s: float = 0.0
    bytes_raw: int = 0
    bytes_compressed: int | None = None
    telemetry_rows: int = 0
    latencies: dict[tuple[str, str], list[float]] = field(default_factory=dict)  # (panel, range) -> ms
    errors: dict[str, str] = field(default_factory=dict)


# -- the city ---------------------------------------------------------------------------------------------
def registrations(gateways: int, cameras: int, sites: int, tag: str) -> list[tuple[str, str, str]]:
    regs = [(f"st-{tag}-gw{i:04d}", f"district-{i % sites + 1:02d}", "env-gateway") for i in range(gateways)]
    regs += [(f"st-{tag}-cam{i:03d}", f"district-{i % sites + 1:02d}", "traffic-camera") for i in range(cameras)]
    return regs


def messages(regs: list[tuple[str, str, str]], start_ms: int, days: int, step_s: int) -> Iterator[tuple[str, bytes]]:
    """One message an hour a device, like a box that buffers: 8 metrics every step_s (gateways) and counts per
    5-minute interval for two lines, three classes, two directions (cameras). Values follow a daily cycle."""
    hour_ms, step_ms = 3_600_000, step_s * 1000
    for h in range(days * 24):
        t0 = start_ms + h * hour_ms
        for n, (dev, site, profile) in enumerate(regs):
            env: dict[str, object] = {"v": 1, "device_id": dev, "boot_id": "bench", "seq": h}
            if profile == "env-gateway":
                samples = []
                for k in range(hour_ms // step_ms):
                    ts = t0 + k * step_ms
                    phase = ((ts // 60_000) % 1440) / 1440
                    base = 20 + 15 * abs(phase - 0.5) + (n % 7)
                    samples.append({"ts": ts, "values": {
                        "pm25": round(base, 1), "pm10": round(base * 1.6, 1), "co2": round(400 + base * 3, 0),
                        "noise": round(45 + base / 2, 1), "temperature": round(24 + 6 * phase, 2),
                        "humidity": round(60 + 20 * phase, 1), "rain": 0.0, "water_level": round(1.2 + phase, 3)}})
                env["samples"] = samples
                yield topics.telemetry(site, dev, "env"), json.dumps(env).encode()
            else:
                counts = [{"ts": t0 + k * 300_000, "interval_s": 300, "line": line, "class": cls, "direction": d,
                           "count": (n + k + len(cls)) % 13}
                          for k in range(12) for line in ("north", "south") for cls in ("car", "motorbike", "bus")
                          for d in ("in", "out")]
                env["counts"] = counts
                yield topics.telemetry(site, dev, COUNTS_STREAM), json.dumps(env).encode()


def load(stack: Stack, args: argparse.Namespace, run: Run) -> None:
    gateways = max(1, round(args.devices * args.scale))
    cameras = max(1, gateways // 10)
    tag = uuid.uuid4().hex[:6]
    regs = registrations(gateways, cameras, args.sites, tag)
    with psycopg.connect(stack.dsn) as conn:
        register_devices(conn, regs)
    cache = DeviceCache(stack.dsn)
    decoder = Decoder(cache.get, 16 * 1024 * 1024, max_future_ms=3_600_000, max_age_ms=(args.days + 2) * 86_400_000)
    writer = BatchWriter(stack.dsn, "bench-storage", mark_rollups=True)
    now = int(time.time() * 1000)
    start = (now - args.days * 86_400_000) // 3_600_000 * 3_600_000
    expected = gateways * len(ENV_METRICS) * args.days * 86_400 // args.step
    console.print(f"{run.backend}: loading {gateways} gateways + {cameras} cameras, {args.days} days at "
                  f"{args.step} s: {expected:,} telemetry points")
    batch: list[Decoded] = []
    batch_points = 0
    t0 = last = time.monotonic()
    for topic, payload in messages(regs, start, args.days, args.step):
        d = decoder.decode(topic, payload, now)
        if d.dead:
            raise SystemExit(f"bench data rejected: {d.dead.reason}")
        batch.append(d)
        batch_points += d.points
        if batch_points >= 40_000:
            writer.write(batch)
            run.points += batch_points
            batch, batch_points = [], 0
            if time.monotonic() - last > 10:
                last = time.monotonic()
                console.print(f"  {run.points:,} points, {run.points / (last - t0):,.0f}/s")
    if batch:
        writer.write(batch)
        run.points += batch_points
    run.load_s = time.monotonic() - t0
    writer.close()
    cache.close()
    t1 = time.monotonic()
    with psycopg.connect(stack.dsn, autocommit=True) as conn:  # aggregates of everything loaded
        conn.execute("UPDATE rollup_dirty SET marked_at = NULL")  # loading is over: every minute has settled
        while run_maintenance(conn).ran and conn.execute("SELECT count(*) FROM rollup_pending").fetchone() != (0,):
            pass  # the plain path recomputes a day of minutes per pass
        conn.execute("VACUUM ANALYZE")
    run.upkeep_s = time.monotonic() - t1


# -- sizes --------------------------------------------------------------------------------------------------
def telemetry_bytes(conn: psycopg.Connection, backend: str) -> int:
    if backend == "timescale":
        row = conn.execute("SELECT hypertable_size('telemetry')").fetchone()
    else:
        row = conn.execute("SELECT sum(pg_total_relation_size(inhrelid)) FROM pg_inherits"
                           " WHERE inhparent = 'telemetry'::regclass").fetchone()
    return int(row[0]) if row and row[0] else 0


def sizes(stack: Stack, run: Run) -> None:
    with psycopg.connect(stack.dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM telemetry").fetchone()
        run.telemetry_rows = int(row[0]) if row else 0
        run.bytes_raw = telemetry_bytes(conn, run.backend)
        if run.backend == "timescale":
            console.print("timescale: compressing every chunk (what the policy does after 7 days)…")
            for (chunk,) in conn.execute("SELECT show_chunks('telemetry')").fetchall():
                conn.execute("SELECT compress_chunk(%s, if_not_compressed => true)", (chunk,))
            for (chunk,) in conn.execute("SELECT show_chunks('traffic_counts')").fetchall():
                conn.execute("SELECT compress_chunk(%s, if_not_compressed => true)", (chunk,))
            conn.execute("VACUUM ANALYZE")
            run.bytes_compressed = telemetry_bytes(conn, run.backend)


# -- dashboards ---------------------------------------------------------------------------------------------
def panel_queries() -> list[tuple[dict, str, str]]:
    """(dashboard, "Dashboard / Panel", SQL) for every panel query of every dashboard."""
    out = []
    for path in DASHBOARDS:
        dash = json.loads(path.read_text(encoding="utf-8"))
        stack = list(dash["panels"])
        while stack:
            p = stack.pop(0)
            stack.extend(p.get("panels", []))
            for t in p.get("targets", []):
                out.append((dash, f"{dash['title']} / {p['title']}", t["rawSql"]))
    return out


def grafana_dsn(stack: Stack) -> str:
    password = uuid.uuid4().hex
    with psycopg.connect(stack.dsn, autocommit=True, options=f"-c ioc.grafana_password={password}") as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_ID,))
        conn.execute(ROLE_MIGRATION.read_text(encoding="utf-8"))
    return psycopg.conninfo.make_conninfo(stack.dsn, user="ioc_grafana", password=password)


def panels(stack: Stack, run: Run, repeats: int) -> None:
    ts = run.backend == "timescale"
    with psycopg.connect(grafana_dsn(stack), autocommit=True) as conn:
        for rng, span in RANGES.items():
            to = datetime.now(UTC)
            frm = to - span
            interval = max(timedelta(seconds=1), span / 1000)  # Grafana: range / max data points, ~1000 px
            resolved: dict[str, dict] = {}  # per dashboard: one district selected, as an operator looking at it
            for dash, name, raw in panel_queries():
                if dash["uid"] not in resolved:
                    resolved[dash["uid"]] = resolve_variables(conn, dash, frm, to, timedelta(minutes=1), ts,
                                                              {"site": ["district-01"]})
                sql = interpolate(raw, frm=frm, to=to, interval=interval, timescaledb=ts,
                                  variables=resolved[dash["uid"]])
                times = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    try:
                        conn.execute(sql).fetchall()
                    except psycopg.Error as e:
                        run.errors[name] = str(e).strip().splitlines()[0]
                        break
                    times.append((time.perf_counter() - t0) * 1000)
                if times:
                    run.latencies[(name, rng)] = times


def p(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


# -- report -------------------------------------------------------------------------------------------------
def report(runs: list[Run]) -> None:
    base = next((r for r in runs if r.backend == "postgres"), None)
    t = Table("backend", "points", "load points/s", "upkeep s", "bytes/point raw", "bytes/point compressed",
              "size vs plain PostgreSQL", title="Storage")
    for r in runs:
        bpp = r.bytes_raw / max(1, r.telemetry_rows)
        cpp = r.bytes_compressed / max(1, r.telemetry_rows) if r.bytes_compressed is not None else None
        final = r.bytes_compressed if r.bytes_compressed is not None else r.bytes_raw
        ratio = f"{base.bytes_raw / final:.1f}x smaller" if base and r is not base and final else "1.0x (baseline)"
        t.add_row(r.backend, f"{r.telemetry_rows:,}", f"{r.points / max(r.load_s, 1e-9):,.0f}", f"{r.upkeep_s:.1f}",
                  f"{bpp:.1f}", "-" if cpp is None else f"{cpp:.2f}", ratio if base else "-")
    console.print(t)
    lt = Table("panel", *[f"{r.backend} {rng} p50/p95 ms" for r in runs for rng in RANGES], title="Dashboard panels")
    names = sorted({n for r in runs for n, _ in r.latencies} | {n for r in runs for n in r.errors})
    worst: dict[str, float] = {}
    for n in names:
        cells = []
        for r in runs:
            for rng in RANGES:
                v = r.latencies.get((n, rng))
                if v:
                    cells.append(f"{p(v, 0.5):.0f} / {p(v, 0.95):.0f}")
                    if rng == "30d":
                        worst[r.backend] = max(worst.get(r.backend, 0.0), p(v, 0.95))
                else:
                    cells.append("[red]error[/red]" if n in r.errors else "-")
        lt.add_row(n, *cells)
    console.print(lt)
    for r in runs:
        for n, e in r.errors.items():
            console.print(f"[red]{r.backend}: {n}: {e}[/red]")
        console.print(f"{r.backend}: slowest panel at 30 d, p95 {worst.get(r.backend, 0):.0f} ms (target < 250 ms)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=["both", "timescale", "postgres"], default="both")
    ap.add_argument("--devices", type=int, default=500, help="environment gateways (cameras: a tenth of it)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the device count")
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--step", type=int, default=60, help="seconds between a gateway's samples")
    ap.add_argument("--sites", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=7, help="runs of each panel query per range")
    ap.add_argument("--keep", action="store_true", help="leave the servers' data under .ioc/ for a look")
    args = ap.parse_args()
    backends = ["postgres", "timescale"] if args.backend == "both" else [args.backend]
    if "timescale" in backends and not timescale_installed(find_bin_dir()):
        console.print("TimescaleDB is not installed here (../shared/timescaledb/install.sh): plain PostgreSQL only")
        backends = [b for b in backends if b != "timescale"]
    runs = []
    for backend in backends:
        root = scratch_dir(f"bench-storage-{backend}-")
        stack = Stack.load(root, backend=backend)
        try:
            stack.up()
            migrate(stack.dsn, backend)
            run = Run(backend)
            load(stack, args, run)
            sizes(stack, run)
            panels(stack, run, args.repeats)
            runs.append(run)
        finally:
            if not args.keep:
                stack.down()
                shutil.rmtree(root, ignore_errors=True)
    report(runs)


if __name__ == "__main__":
    main()
