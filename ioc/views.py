"""Rich renderings of SystemStatus for `ioc status` and the live demo."""

from __future__ import annotations

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
    summary.add_row("dead letters", f"{_num(st.dead_letters)} ({st.dead_letter_bytes / 1e6:,.1f} MB)")
    parts: list[RenderableType] = [summary, ingest_table(st)]
    if st.recent_dead:
        dl = Table("topic", "reason", title="Latest dead letters")
        for topic, reason in st.recent_dead:
            dl.add_row(topic, reason[:110])
        parts.append(dl)
    return Group(*parts)
