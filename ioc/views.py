"""Rich renderings of SystemStatus for `ioc status` and the live demo."""

from __future__ import annotations

from datetime import datetime, timedelta

from rich.console import Group, RenderableType
from rich.table import Table

from ioc.status import SystemStatus


def _num(v: object, fmt: str = "{:,.0f}") -> str:
    return "-" if v is None else fmt.format(v)


def ingest_table(st: SystemStatus) -> Table:
    t = Table("ingest instance", "alive", "msg/s", "points/s", "messages", "points", "dead", "p50 ms", "p99 ms",
              "waiting", "db", title="Ingest")
    for i in st.instances:
        t.add_row(str(i["instance"]), "[green]yes[/green]" if i["alive"] else "[red]no[/red]",
                  _num(i["msg_rate"]), _num(i["point_rate"]), _num(i["messages"]), _num(i["points"]),
                  _num(i["dead_letters"]), _num(i["latency_p50_ms"]), _num(i["latency_p99_ms"]),
                  _num(i["in_flight"]), "ok" if i["db_ok"] else "[red]DOWN[/red]")
    return t


def _ago(v: object) -> str:
    """A timedelta as a person reads it: 42 s, 7 min, 3.5 h."""
    if v is None:
        return "-"
    secs = v.total_seconds() if isinstance(v, timedelta) else float(str(v))
    if secs < 120:
        return f"{secs:.0f} s"
    return f"{secs / 60:.0f} min" if secs < 7200 else f"{secs / 3600:.1f} h"


def jobs_table(st: SystemStatus) -> Table:
    t = Table("job", "every", "last success", "last outcome", "lag", title="Background jobs")
    for j in st.jobs:
        last_ok = j["last_ok"]
        outcome = str(j["outcome"])
        if j.get("error"):
            outcome += f" ({str(j['error'])[:60]})"
        lag = j["lag"]
        lagging = isinstance(lag, timedelta) and lag > timedelta(0) and j["every"] is not None
        t.add_row(str(j["job"]), _ago(j["every"]),
                  last_ok.strftime("%Y-%m-%d %H:%M:%S") if isinstance(last_ok, datetime) else "never",
                  f"[red]{outcome}[/red]" if "fail" in outcome else outcome,
                  f"[yellow]{_ago(lag)}[/yellow]" if lagging else "-" if j["every"] is not None else f"{_ago(lag)} ago")
    return t


def status_view(st: SystemStatus, title: str = "City telemetry") -> Group:
    alive = [i for i in st.instances if i["alive"]]
    msg_rate = sum(float(str(i["msg_rate"] or 0)) for i in alive)
    point_rate = sum(float(str(i["point_rate"] or 0)) for i in alive)
    summary = Table(title=title, show_header=False)
    summary.add_column(style="bold")
    summary.add_column(justify="right")
    summary.add_row("messages / s", _num(msg_rate))
    summary.add_row("points / s", _num(point_rate))
    summary.add_row("telemetry rows", _num(st.telemetry_rows))
    summary.add_row("traffic count rows", _num(st.count_rows))
    summary.add_row("devices online", f"{st.online:,} / {st.devices:,}")
    summary.add_row("online but silent", f"{st.silent:,}" + (" (check power and link)" if st.silent else ""))
    summary.add_row("dead letters", f"{_num(st.dead_letters)} ({st.dead_letter_bytes / 1e6:,.1f} MB)")
    parts: list[RenderableType] = [summary, ingest_table(st)]
    if st.jobs:
        parts.append(jobs_table(st))
    if st.recent_dead:
        dl = Table("topic", "reason", title="Latest dead letters")
        for topic, reason in st.recent_dead:
            dl.add_row(topic, reason[:110])
        parts.append(dl)
    return Group(*parts)
