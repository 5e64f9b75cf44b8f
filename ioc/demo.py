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
from rich.console import Console
from rich.live import Live

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
    out = log_file.open("ab")
    return subprocess.Popen([sys.executable, "-m", "ioc", "ingest", "--instance", "ingest-demo"],
                            env=env, stdout=out, stderr=subprocess.STDOUT)


def run_demo(console: Console, directory: Path | None, gateways: int, cameras: int, interval_s: float,
             duration_s: float | None, bad_ratio: float, seed: int) -> None:
    stack = Stack.load(directory)
    console.print("[bold]1/4[/bold] starting the local stack (Mosquitto + PostgreSQL)…")
    stack.up()
    backend, applied = migrate(stack.dsn)
    console.print(f"      schema ready: {backend} backend ({len(applied)} migrations applied now)")
    ingest_log = stack.root / "ingest.log"
    console.print(f"[bold]2/4[/bold] starting ingest (log: {ingest_log})")
    ingest = _start_ingest(stack, ingest_log)
    fleet = Fleet(FleetSpec(gateways=gateways, cameras=cameras, interval_s=interval_s, seed=seed, fault_rate=0.002))
    with psycopg.connect(stack.dsn) as conn:
        register_devices(conn, fleet.registrations())
    console.print(f"[bold]3/4[/bold] connecting {gateways} environment gateways and {cameras} camera boxes…")
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        with FleetPublisher(fleet, stack.mqtt_host, stack.mqtt_port) as pub:
            runner = SimRunner(fleet, pub, bad_ratio=bad_ratio, dup_ratio=0.01, seed=seed)
            sim = threading.Thread(target=runner.run, args=(stop, duration_s), name="sim", daemon=True)
            console.print("[bold]4/4[/bold] live (Ctrl-C to stop)")
            sim.start()
            with (psycopg.connect(stack.dsn, autocommit=True) as conn,
                  Live(console=console, refresh_per_second=2) as live):
                while sim.is_alive() and not stop.is_set():
                    live.update(status_view(read_status(conn), title=f"City telemetry — {len(fleet.devices)} devices"))
                    if ingest.poll() is not None:
                        console.print(f"[red]ingest exited ({ingest.returncode}); see {ingest_log}[/red]")
                        stop.set()
                    stop.wait(1.0)
            stop.set()
            sim.join()
            pub.drain(15)
    finally:
        signal.signal(signal.SIGINT, previous)
        time.sleep(1.0)  # let the last batch commit before ingest stops
        ingest.send_signal(signal.SIGTERM)
        try:
            ingest.wait(20)
        except subprocess.TimeoutExpired:
            ingest.kill()
    with psycopg.connect(stack.dsn) as conn:
        console.print(status_view(read_status(conn, exact=True), title="Final"))
    console.print(f"published {pub.sent.published:,} messages, broker acknowledged {len(pub.sent.acked):,}; "
                  f"stack still running: `ioc status`, `ioc stack down` to stop it.")
