"""`ioc`: one command line for the whole platform (typer + rich)."""

from __future__ import annotations

import logging
import signal
import threading
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import psycopg
import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from ioc.alerts_cli import alerts_app
from ioc.api_cli import api_app
from ioc.devices_cli import cmd_app, config_app, devices_app
from ioc.endpoints import resolve, resolve_dsn
from ioc.grafana_cli import grafana_app
from ioc.report import report_command
from ioc.stack import Stack, StackError

console = Console()
app = typer.Typer(help="City IOC telemetry platform: local stack, ingest, simulator, demo.", no_args_is_help=True)
stack_app = typer.Typer(help="A real Mosquitto + PostgreSQL on loopback, data under --dir.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema and upkeep.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")
app.add_typer(db_app, name="db")
app.add_typer(devices_app, name="devices")  # the technician's CLI on the registry API
app.add_typer(config_app, name="config")
app.add_typer(cmd_app, name="cmd")
app.add_typer(api_app, name="api")
app.add_typer(alerts_app, name="alerts")
app.add_typer(grafana_app, name="grafana")
app.command("report")(report_command)

StackDir = Annotated[Path | None, typer.Option("--dir", help="stack folder (default .ioc or $IOC_STACK_DIR)")]
Dsn = Annotated[str | None, typer.Option(help="database URL (default: IOC_DSN or the local stack)")]
MqttHost = Annotated[str | None, typer.Option(help="broker host (default: IOC_MQTT_HOST or the local stack)")]
MqttPort = Annotated[int | None, typer.Option(help="broker port (default: IOC_MQTT_PORT or the local stack)")]


class LogLevel(StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


class Backend(StrEnum):
    auto = "auto"
    timescale = "timescale"
    postgres = "postgres"


@app.callback()
def _main(log_level: Annotated[LogLevel, typer.Option(case_sensitive=False)] = LogLevel.INFO) -> None:
    logging.basicConfig(level=log_level.value, format="%(message)s", datefmt="%H:%M:%S",
                        handlers=[RichHandler(console=Console(stderr=True), show_path=False)])


def _fail(msg: str) -> typer.Exit:
    console.print(f"[red]error:[/red] {msg}")
    return typer.Exit(1)


# -- stack ------------------------------------------------------------------------------------
def _status_table(stack: Stack) -> Table:
    t = Table("service", "state", "pid", "address", "data")
    for s in stack.status():
        t.add_row(str(s["service"]), "[green]running[/green]" if s["running"] else "[red]stopped[/red]",
                  str(s["pid"] or "-"), str(s["address"]), str(s["data"]))
    return t


@stack_app.command("up")
def stack_up(directory: StackDir = None, mqtt_port: Annotated[int | None, typer.Option()] = None,
             pg_port: Annotated[int | None, typer.Option()] = None,
             backend: Annotated[Backend | None, typer.Option(
                 help="auto: TimescaleDB when it is installed (kept for the next runs)")] = None,
             migrate: Annotated[bool, typer.Option(help="apply schema migrations")] = True) -> None:
    """Start Mosquitto and PostgreSQL (idempotent) and migrate the schema."""
    try:
        stack = Stack.load(directory, mqtt_port=mqtt_port, pg_port=pg_port,
                           backend=backend.value if backend else None)
        already = stack.up()
        if migrate:
            from cloud.db.migrate import migrate as run_migrate

            backend_used, applied = run_migrate(stack.dsn, stack.backend)
            console.print(f"schema: {backend_used} backend, {len(applied)} migration(s) applied")
    except StackError as e:
        raise _fail(str(e)) from None
    for name, was in already.items():
        console.print(f"{name}: {'already running' if was else 'started'}")
    console.print(_status_table(stack))
    console.print(f"DSN: {stack.postgres.dsn_shown} (the password is in {stack.state_file}; "
                  "`ioc stack dsn` prints the whole DSN)")


@stack_app.command("broker-logins")
def broker_logins(
    directory: Annotated[Path, typer.Option("--dir", help="the broker's auth folder")],
    tls_hosts: Annotated[str, typer.Option(
        "--tls-hosts", help="also make a CA and the broker's TLS certificate (in <dir>/tls, kept once made) for "
        "these comma-separated names or IP addresses, the ones devices connect to; the first is its CN")] = "",
) -> None:
    """For a broker outside the local stack (docker-compose.yml): hash the services' passwords from
    IOC_BROKER_PASSWORD_INGEST/_REGISTRY/_ALERTS/_SIMULATOR/_ADMIN into its password and ACL files."""
    import os

    from ioc.stack import broker_auth as ba
    from ioc.stack import tls

    names = ba.install_service_logins(directory, {n: os.environ.get(v, "") for n, v in ba.PASSWORD_ENV.items()})
    if not names:
        raise _fail("no IOC_BROKER_PASSWORD_* variable set: nobody could log in")
    console.print(f"broker logins for {', '.join(names)} in {directory}")
    if hosts := tuple(h.strip() for h in tls_hosts.split(",") if h.strip()):
        tls.ensure(directory / "tls", hosts)
        console.print(f"broker TLS: CA {directory / 'tls' / tls.CA_CERT} (give it to devices), server certificate "
                      f"for {', '.join(hosts)}")


@stack_app.command("down")
def stack_down(directory: StackDir = None) -> None:
    """Stop both servers; data stays under the stack folder."""
    try:
        stack = Stack.existing(directory)
        stack.down()
    except StackError as e:
        raise _fail(str(e)) from None
    console.print(_status_table(stack))


@stack_app.command("dsn")
def stack_dsn(directory: StackDir = None) -> None:
    """Print the local database's DSN, password included, for scripts: `export IOC_DSN=$(ioc stack dsn)`."""
    try:
        print(Stack.existing(directory).dsn)
    except StackError as e:
        raise _fail(str(e)) from None


@stack_app.command("status")
def stack_status(directory: StackDir = None) -> None:
    try:
        console.print(_status_table(Stack.existing(directory)))
    except StackError as e:
        raise _fail(str(e)) from None


# -- database ---------------------------------------------------------------------------------
@db_app.command("migrate")
def db_migrate(dsn: Dsn = None, directory: StackDir = None,
               backend: Annotated[Backend, typer.Option(help="auto picks TimescaleDB when available")] = Backend.auto,
               ) -> None:
    """Apply pending migrations (TimescaleDB when available, else plain PostgreSQL)."""
    from cloud.db.migrate import migrate as run_migrate

    dsn = resolve_dsn(dsn, directory)
    chosen, applied = run_migrate(dsn, backend.value)
    console.print(f"backend {chosen}; applied: {', '.join(applied) or 'nothing (up to date)'}")


@db_app.command("maintain")
def db_maintain(dsn: Dsn = None, directory: StackDir = None) -> None:
    """One pass of partition, retention and rollup upkeep (ingest also runs it periodically)."""
    from cloud.db.maintenance import run_maintenance

    with psycopg.connect(resolve_dsn(dsn, directory), autocommit=True) as conn:
        console.print(run_maintenance(conn))


# -- ingest -----------------------------------------------------------------------------------
@app.command()
def ingest(dsn: Dsn = None, mqtt_host: MqttHost = None, mqtt_port: MqttPort = None, directory: StackDir = None,
           instance: Annotated[str | None,
                               typer.Option(help="stable id: the broker keeps our session under it")] = None,
           stats: Annotated[bool, typer.Option("--stats", help="show the running ingest processes and exit")] = False,
           ) -> None:
    """Run the ingest service: MQTT → validate → batch → PostgreSQL, ack after commit. Ctrl-C stops cleanly."""
    from cloud.ingest.service import IngestService
    from cloud.ingest.settings import IngestSettings

    if stats:
        from ioc.status import read_status
        from ioc.views import ingest_table

        with psycopg.connect(resolve_dsn(dsn, directory)) as conn:
            console.print(ingest_table(read_status(conn)))
        return
    ep = resolve(dsn, mqtt_host, mqtt_port, directory, service="ingest")
    settings = IngestSettings(dsn=ep.dsn, mqtt_host=ep.mqtt_host, mqtt_port=ep.mqtt_port, **ep.login())  # type: ignore[arg-type]
    if instance:
        settings.instance = instance
    svc = IngestService(settings)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    svc.start()
    if not svc.wait_connected(10):
        console.print(f"[yellow]warning:[/yellow] not subscribed at mqtt://{ep.mqtt_host}:{ep.mqtt_port} yet; "
                      "ingest keeps retrying (see the log)")
    while not stop.wait(1.0) and not svc.crashed.is_set():
        pass
    svc.stop()
    if svc.crashed.is_set():
        raise typer.Exit(70)  # EX_SOFTWARE: let the supervisor (systemd, compose `restart:`) start a fresh one


# -- simulator --------------------------------------------------------------------------------
@app.command()
def sim(gateways: int = 20, cameras: int = 4, interval: Annotated[float, typer.Option(help="seconds")] = 10.0,
        duration: Annotated[float | None, typer.Option(help="seconds; default until Ctrl-C")] = None,
        bad_ratio: float = 0.0, dup_ratio: float = 0.0, fault_rate: float = 0.002, seed: int = 42,
        dsn: Dsn = None, mqtt_host: MqttHost = None, mqtt_port: MqttPort = None, directory: StackDir = None) -> None:
    """Simulate a fleet of gateways and camera boxes (registers them first)."""
    from cloud.db.devices import register_devices
    from simulators.fleet import Fleet, FleetSpec
    from simulators.publisher import FleetPublisher
    from simulators.runner import SimRunner

    ep = resolve(dsn, mqtt_host, mqtt_port, directory, service="simulator")
    fleet = Fleet(FleetSpec(gateways=gateways, cameras=cameras, interval_s=interval, fault_rate=fault_rate, seed=seed))
    with psycopg.connect(ep.dsn) as conn:
        register_devices(conn, fleet.registrations())
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    login = (ep.mqtt_username, ep.mqtt_password or "") if ep.mqtt_username else None
    with FleetPublisher(fleet, ep.mqtt_host, ep.mqtt_port, login=login) as pub:
        runner = SimRunner(fleet, pub, bad_ratio=bad_ratio, dup_ratio=dup_ratio, seed=seed)
        console.print(f"{len(fleet.devices)} devices connected; publishing every {interval:g}s")
        runner.run(stop, duration, on_second=None)
        pub.drain(10)
    console.print(f"published {pub.sent.published}, acknowledged {len(pub.sent.acked)}; "
                  f"bad {sum(runner.bad_sent.values())}, duplicates {runner.duplicates_sent}")


# -- status and demo --------------------------------------------------------------------------
@app.command()
def status(dsn: Dsn = None, directory: StackDir = None) -> None:
    """Stack, ingest processes, devices online, rows, dead letters."""
    from ioc.status import read_status
    from ioc.views import status_view

    try:
        stack = Stack.existing(directory)
        console.print(_status_table(stack))
    except StackError:
        stack = None
    ep_dsn = dsn or (stack.dsn if stack else resolve_dsn(None, directory))
    try:
        with psycopg.connect(ep_dsn, connect_timeout=3) as conn:
            console.print(status_view(read_status(conn)))
    except psycopg.OperationalError as e:
        raise _fail(f"database unreachable: {e}") from None


@app.command()
def demo(gateways: int = 300, cameras: int = 20, interval: float = 5.0,
         duration: Annotated[float | None, typer.Option(help="seconds; default until Ctrl-C")] = None,
         bad_ratio: float = 0.01, directory: StackDir = None, seed: int = 42,
         camera_box: Annotated[bool, typer.Option(help="also run one real camera box on street footage")] = True,
         ) -> None:
    """The whole path live: stack up, migrate, ingest, a simulated city, a camera box on real video."""
    from ioc.demo import run_demo

    try:
        run_demo(console, directory, gateways=gateways, cameras=cameras, interval_s=interval,
                 duration_s=duration, bad_ratio=bad_ratio, seed=seed, camera_box=camera_box)
    except StackError as e:
        raise _fail(str(e)) from None


def _mount_optional() -> None:
    """Edge commands need the edge extras; the cloud side runs without them."""
    try:
        from edge.camera.cli import models_app
        from edge.cli import app as edge_app
    except ImportError:
        return
    app.add_typer(edge_app, name="edge")
    app.add_typer(models_app, name="models")


_mount_optional()


def main() -> None:
    """Entry point: expected failures become one readable line, not a traceback."""
    try:
        app()
    except psycopg.errors.UndefinedTable as e:
        console.print(f"[red]error:[/red] the database has no IOC schema ({e.diag.message_primary}): "
                      "run `ioc db migrate` (or `ioc stack up`)")
        raise SystemExit(1) from None
    except (StackError, psycopg.Error, RuntimeError, TimeoutError, ValueError) as e:
        console.print(f"[red]error:[/red] {e}")
        raise SystemExit(1) from None
