"""`ioc demo`: the local stack, an ingest process, a simulated city, and a live view of it all."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from cloud.db.devices import register_devices
from cloud.db.migrate import migrate
from ioc.stack import Stack
from ioc.status import read_status
from ioc.views import status_view
from simulators.fleet import Fleet, FleetSpec
from simulators.publisher import FleetPublisher
from simulators.runner import SimRunner

log = logging.getLogger(__name__)


def _start_ingest(stack: Stack, log_file: Path) -> subprocess.Popen[bytes]:
    """A separate process, as in production; its log goes to a file the user can tail."""
    env = {**os.environ, "IOC_DSN": stack.dsn, "IOC_MQTT_HOST": stack.mqtt_host, "IOC_MQTT_PORT": str(stack.mqtt_port)}
    login = stack.credentials("ingest")
    if login:  # the child's environment only; never printed
        env |= {"IOC_MQTT_USERNAME": login[0], "IOC_MQTT_PASSWORD": login[1]}
    out = log_file.open("ab")
    return subprocess.Popen([sys.executable, "-m", "ioc", "ingest", "--instance", "ingest-demo"],
                            env=env, stdout=out, stderr=subprocess.STDOUT)


CAMERA_ID, CAMERA_SITE = "cam-street-01", "district-01"


def _start_camera_box(stack: Stack, stop: threading.Event, console: Console) -> threading.Thread | None:
    """One real camera box (detector on street footage) beside the simulated fleet; skipped with the
    reason when its model or footage is not installed."""
    try:
        from edge.camera.box import run_camera_box
    except ImportError as e:
        console.print(f"      camera box skipped: {e} (pip install -e '.[vision]')")
        return None
    with psycopg.connect(stack.dsn) as conn:
        register_devices(conn, [(CAMERA_ID, CAMERA_SITE, "traffic-camera")])

    def run() -> None:
        try:
            run_camera_box(stack.mqtt_host, stack.mqtt_port, CAMERA_ID, CAMERA_SITE, stop, stack.root / "edge",
                           counts_s=10, login=stack.credentials("simulator"))
        except Exception as e:  # the demo goes on without it; the reason is shown
            log.error("camera box stopped: %s", e)

    t = threading.Thread(target=run, name="camera-box", daemon=True)
    t.start()
    return t


def _camera_table(conn: psycopg.Connection) -> Table:
    rows = conn.execute("SELECT cls, direction, sum(count) FROM traffic_counts WHERE device_id = %s"
                        " GROUP BY cls, direction ORDER BY cls, direction", (CAMERA_ID,)).fetchall()
    health: dict[str, float] = dict(conn.execute(
        "SELECT DISTINCT ON (metric) metric, value FROM telemetry WHERE device_id = %s"
        " AND metric IN ('analysis_fps', 'inference_ms') AND ts > now() - interval '5 minutes'"
        " ORDER BY metric, ts DESC", (CAMERA_ID,)).fetchall())
    fps, ms = health.get("analysis_fps"), health.get("inference_ms")
    t = Table("class", "direction", "count", title=f"Camera box {CAMERA_ID} on street footage — "
              f"{'-' if fps is None else f'{fps:.1f}'} fps, inference {'-' if ms is None else f'{ms:.0f}'} ms")
    for cls, direction, n in rows:
        t.add_row(cls, direction, f"{n:,}")
    return t


def run_demo(console: Console, directory: Path | None, gateways: int, cameras: int, interval_s: float,
             duration_s: float | None, bad_ratio: float, seed: int, camera_box: bool = True) -> None:
    stack = Stack.load(directory)
    console.print("[bold]1/4[/bold] starting the local stack (Mosquitto + PostgreSQL)…")
    stack.up()
    backend, applied = migrate(stack.dsn, stack.backend)
    console.print(f"      schema ready: {backend} backend ({len(applied)} migrations applied now)")
    ingest_log = stack.root / "ingest.log"
    console.print(f"[bold]2/4[/bold] starting ingest (log: {ingest_log})")
    ingest = _start_ingest(stack, ingest_log)
    api = subprocess.Popen([sys.executable, "-m", "ioc", "api", "--dir", str(stack.root)],  # the registry API
                           stdout=(stack.root / "api.log").open("ab"), stderr=subprocess.STDOUT)
    console.print(f"      registry API: http://127.0.0.1:8080/docs (admin token: {stack.root / 'api-admin-token'};"
                  f" log: {stack.root / 'api.log'})")
    fleet = Fleet(FleetSpec(gateways=gateways, cameras=cameras, interval_s=interval_s, seed=seed, fault_rate=0.002))
    with psycopg.connect(stack.dsn) as conn:
        register_devices(conn, fleet.registrations())
    console.print(f"[bold]3/4[/bold] connecting {gateways} environment gateways and {cameras} camera boxes…")
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        with FleetPublisher(fleet, stack.mqtt_host, stack.mqtt_port, login=stack.credentials("simulator")) as pub:
            runner = SimRunner(fleet, pub, bad_ratio=bad_ratio, dup_ratio=0.01, seed=seed)
            sim = threading.Thread(target=runner.run, args=(stop, duration_s), name="sim", daemon=True)
            camera = _start_camera_box(stack, stop, console) if camera_box else None
            console.print("[bold]4/4[/bold] live (Ctrl-C to stop)")
            sim.start()
            with (psycopg.connect(stack.dsn, autocommit=True) as conn,
                  Live(console=console, refresh_per_second=2) as live):
                while sim.is_alive() and not stop.is_set():
                    view = status_view(read_status(conn), title=f"City telemetry — {len(fleet.devices)} devices")
                    live.update(Group(view, _camera_table(conn)) if camera else view)
                    if ingest.poll() is not None:
                        console.print(f"[red]ingest exited ({ingest.returncode}); see {ingest_log}[/red]")
                        stop.set()
                    stop.wait(1.0)
            stop.set()
            sim.join()
            if camera is not None:
                camera.join(30)
            pub.drain(15)
    finally:
        signal.signal(signal.SIGINT, previous)
        time.sleep(1.0)  # let the last batch commit before ingest stops
        api.terminate()
        ingest.send_signal(signal.SIGTERM)
        try:
            ingest.wait(20)
        except subprocess.TimeoutExpired:
            ingest.kill()
    with psycopg.connect(stack.dsn) as conn:
        console.print(status_view(read_status(conn, exact=True), title="Final"))
    console.print(f"published {pub.sent.published:,} messages, broker acknowledged {len(pub.sent.acked):,}; "
                  f"stack still running: `ioc status`, `ioc stack down` to stop it.")
