"""`ioc alerts run | list | ack | clear | test`: the alarm evaluator and the operators' side of alarms."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path
from typing import Annotated

import psycopg
import typer
from rich.console import Console
from rich.table import Table

from ioc.endpoints import resolve, resolve_dsn

console = Console()
alerts_app = typer.Typer(help="Alarms: the evaluator, and listing, acknowledging, clearing.", no_args_is_help=True)

StackDir = Annotated[Path | None, typer.Option("--dir", help="stack folder (default .ioc or $IOC_STACK_DIR)")]
Dsn = Annotated[str | None, typer.Option(help="database URL (default: IOC_DSN or the local stack)")]
RulesDir = Annotated[Path | None, typer.Option("--rules", help="rules folder (default cloud/alerts/rules)")]


def _fail(msg: str) -> typer.Exit:
    console.print(f"[red]error:[/red] {msg}")
    return typer.Exit(1)


@alerts_app.command("run")
def run(dsn: Dsn = None, mqtt_host: Annotated[str | None, typer.Option()] = None,
        mqtt_port: Annotated[int | None, typer.Option()] = None, directory: StackDir = None,
        rules: RulesDir = None, instance: Annotated[str | None, typer.Option(help="unique per process")] = None,
        ) -> None:
    """Run an evaluator: standby until it holds the lock, then evaluate, notify. Ctrl-C stops cleanly."""
    from cloud.alerts.rules import RuleError
    from cloud.alerts.service import AlertService
    from cloud.alerts.settings import AlertSettings

    ep = resolve(dsn or os.environ.get("IOC_ALERTS_DSN"), mqtt_host or os.environ.get("IOC_ALERTS_MQTT_HOST"),
                 mqtt_port or (int(os.environ["IOC_ALERTS_MQTT_PORT"]) if "IOC_ALERTS_MQTT_PORT" in os.environ
                               else None), directory)
    overrides: dict[str, object] = {"dsn": ep.dsn, "mqtt_host": ep.mqtt_host, "mqtt_port": ep.mqtt_port,
                                    **ep.login()}
    if rules:
        overrides["rules_dir"] = rules
    if instance:
        overrides["instance"] = instance
    settings = AlertSettings(**overrides)  # type: ignore[arg-type]
    try:
        svc = AlertService(settings)
    except RuleError as e:
        raise _fail(str(e)) from None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    console.print(f"{settings.instance}: {len(svc.ruleset.rules)} rules from {settings.rules_dir}; "
                  f"{len(settings.webhooks)} webhook(s)")
    svc.start()
    while not stop.wait(1.0):
        pass
    svc.stop()


@alerts_app.command("list")
def list_(dsn: Dsn = None, directory: StackDir = None,
          all_: Annotated[bool, typer.Option("--all", help="include cleared alarms")] = False,
          limit: int = 50, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Active alarms (most severe first), or recent ones with --all; failing webhooks are reported below."""
    from cloud.alerts.store import list_alarms, webhook_problems

    with psycopg.connect(resolve_dsn(dsn, directory)) as conn:
        rows = list_alarms(conn, include_cleared=all_, limit=limit)
        problems = webhook_problems(conn)
    if as_json:
        console.print_json(json.dumps(rows, default=str))
        return
    t = Table("id", "severity", "rule", "device", "site", "state", "raised", "acknowledged", "message")
    for r in rows:
        state = "cleared" if r["cleared_at"] else "[red]active[/red]"
        ack = f"{r['acked_by']} {r['acked_at']:%H:%M:%S}" if r["acked_at"] else "-"
        t.add_row(str(r["id"]), r["severity"], r["rule"], r["device_id"], r["site"], state,
                  f"{r['raised_at']:%Y-%m-%d %H:%M:%S}", ack, r["message"])
    console.print(t)
    for p in problems:
        console.print(f"[yellow]webhook {p['url']}[/yellow]: {p['failed_in_a_row']} failures in a row, "
                      f"{p['given_up']} deliveries given up; last error {p['last_error']}")


@alerts_app.command("ack")
def ack(alarm_id: int, by: Annotated[str, typer.Option("--by", help="who acknowledges")],
        comment: Annotated[str | None, typer.Option()] = None, dsn: Dsn = None, directory: StackDir = None) -> None:
    """Acknowledge an alarm (who, when, comment are kept in its history)."""
    from cloud.alerts.store import AlarmError, acknowledge

    with psycopg.connect(resolve_dsn(dsn, directory)) as conn:
        try:
            acknowledge(conn, alarm_id, by, comment)
        except AlarmError as e:
            raise _fail(str(e)) from None
    console.print(f"alarm {alarm_id} acknowledged by {by}")


@alerts_app.command("clear")
def clear(alarm_id: int, by: Annotated[str, typer.Option("--by", help="who clears")],
          comment: Annotated[str | None, typer.Option()] = None, dsn: Dsn = None, directory: StackDir = None) -> None:
    """Clear an alarm by hand; if its condition still holds, the rule raises a new one after its duration."""
    from cloud.alerts.store import AlarmError, operator_clear

    with psycopg.connect(resolve_dsn(dsn, directory)) as conn:
        try:
            operator_clear(conn, alarm_id, by, comment)
        except AlarmError as e:
            raise _fail(str(e)) from None
    console.print(f"alarm {alarm_id} cleared by {by}")


@alerts_app.command("test")
def check_rules(rules: RulesDir = None, dsn: Dsn = None, directory: StackDir = None,
         against_db: Annotated[bool, typer.Option("--db/--no-db", help="also run each rule's query")] = False,
         ) -> None:
    """Validate the rule files; with --db, run each rule's query and show the devices it matches now."""
    from cloud.alerts.rules import RuleError, load_rules
    from cloud.alerts.settings import DEFAULT_RULES

    folder = rules or DEFAULT_RULES
    try:
        loaded = load_rules(folder)
    except RuleError as e:
        raise _fail(str(e)) from None
    t = Table("rule", "kind", "severity", "for (s)", "devices now in condition")
    conn = psycopg.connect(resolve_dsn(dsn, directory)) if against_db else None
    try:
        for r in loaded:
            matched = "-"
            if conn is not None:
                sql, params = r.query()
                rows = conn.execute(sql, {**params, "tracked": []}).fetchall()
                conn.rollback()
                hits = [row[0] for row in rows if row[4]]
                matched = f"{len(hits)}: {', '.join(hits[:5])}" + (" ..." if len(hits) > 5 else "")
            t.add_row(r.name, r.kind, r.severity, f"{r.for_s:g}", matched)
    finally:
        if conn is not None:
            conn.close()
    console.print(t)
    console.print(f"{len(loaded)} rule(s) valid in {folder}")


@alerts_app.command("health")
def health(instance: Annotated[str, typer.Option(help="the evaluator's --instance")],
           max_age_s: Annotated[float, typer.Option(help="its report must be this fresh")] = 15.0,
           dsn: Dsn = None, directory: StackDir = None) -> None:
    """Exit 0 when the evaluator reported recently (active or standing by), 1 otherwise: for health checks."""
    with psycopg.connect(resolve_dsn(dsn, directory), connect_timeout=3) as conn:
        row = conn.execute("SELECT active, extract(epoch FROM now() - updated_at) FROM alert_evaluators"
                           " WHERE instance = %s", (instance,)).fetchone()
    if row is None or row[1] > max_age_s:
        raise _fail(f"evaluator {instance} has not reported for {max_age_s:g} s")
    console.print(f"{instance}: {'active' if row[0] else 'standby'}, reported {row[1]:.1f} s ago")
