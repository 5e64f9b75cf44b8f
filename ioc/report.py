"""`ioc report`: one self-contained HTML page (charts embedded as PNG, also written beside it) for people
without Grafana: VN_AQI per site with its bands, traffic volumes, active alarms, fleet health and a map of
the devices drawn on plain axes (no map tiles, nothing fetched from the internet)."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import psycopg
import typer
from rich.console import Console

from cloud.alerts.aqi import BANDS, band_for
from cloud.alerts.store import list_alarms

console = Console()


@dataclass
class ReportData:
    frm: datetime
    to: datetime
    aqi: list[tuple[datetime, str, int]]            # hour, site, worst station's VN_AQI
    aqi_now: list[tuple[str, int, str]]             # site, VN_AQI, dominant parameter
    traffic: list[tuple[datetime, str, int]]        # hour, site, vehicles
    classes: list[tuple[str, int]]
    alarms: list[dict[str, Any]]
    fleet: list[tuple[str, int, int, int]]          # profile, registered, online, silent > 5 min
    firmware: list[tuple[str, int]]
    devices: list[tuple[str, str, float, float, bool]]  # id, site, lat, lon, online
    sites: list[tuple[str, float, float]]           # site, lat, lon (registered, else the devices' centre)


def gather(conn: psycopg.Connection, frm: datetime, to: datetime) -> ReportData:
    q = conn.execute
    aqi = q("SELECT hour, site, max(aqi) FROM ioc_vn_aqi_hourly(%s, %s) WHERE aqi IS NOT NULL GROUP BY 1, 2"
            " ORDER BY 1, 2", (frm, to)).fetchall()
    aqi_now = q("SELECT DISTINCT ON (site) site, aqi, dominant FROM ioc_vn_aqi_hourly(%s - interval '1 hour', %s)"
                " WHERE aqi IS NOT NULL ORDER BY site, hour DESC, aqi DESC", (to, to)).fetchall()
    traffic = q("SELECT date_trunc('hour', c.ts), d.site, sum(c.count)::int FROM traffic_counts c"
                " JOIN devices d USING (device_id) WHERE c.ts >= %s AND c.ts < %s AND c.cls <> 'person'"
                " GROUP BY 1, 2 ORDER BY 1, 2", (frm, to)).fetchall()
    classes = q("SELECT cls, sum(count)::int FROM traffic_counts WHERE ts >= %s AND ts < %s GROUP BY 1"
                " ORDER BY 2 DESC", (frm, to)).fetchall()
    fleet = q("SELECT d.profile, count(*)::int, count(*) FILTER (WHERE s.online)::int,"
              " count(*) FILTER (WHERE s.online AND s.last_seen < now() - interval '5 minutes')::int"
              " FROM devices d LEFT JOIN device_status s USING (device_id) GROUP BY 1 ORDER BY 1").fetchall()
    firmware = q("SELECT coalesce(s.firmware, 'unknown'), count(*)::int FROM devices d"
                 " LEFT JOIN device_status s USING (device_id) GROUP BY 1 ORDER BY 2 DESC LIMIT 12").fetchall()
    devices = q("SELECT d.device_id, d.site, coalesce(d.lat, s.lat), coalesce(d.lon, s.lon),"
                " coalesce(st.online, false) FROM devices d LEFT JOIN sites s ON s.site = d.site"
                " LEFT JOIN device_status st ON st.device_id = d.device_id"
                " WHERE coalesce(d.lat, s.lat) IS NOT NULL AND coalesce(d.lon, s.lon) IS NOT NULL"
                " ORDER BY 1").fetchall()
    sites = q("SELECT site, coalesce(min(s_lat), avg(lat)), coalesce(min(s_lon), avg(lon)) FROM ("
              " SELECT d.site, s.lat AS s_lat, s.lon AS s_lon, coalesce(d.lat, s.lat) AS lat,"
              " coalesce(d.lon, s.lon) AS lon FROM devices d LEFT JOIN sites s ON s.site = d.site) x"
              " WHERE lat IS NOT NULL GROUP BY site ORDER BY site").fetchall()
    alarms = list_alarms(conn, limit=200)
    conn.rollback()
    return ReportData(frm, to, aqi, aqi_now, traffic, classes, alarms, fleet, firmware, devices, sites)


# -- charts -------------------------------------------------------------------------------------------
def chart_text(name: str) -> str:
    """A registry name (any text but '/', '+', '#') as chart text: matplotlib parses "$...$" as mathematics
    and fails the whole chart on an unknown symbol, hides a legend label that starts with "_", and draws a
    box for a control character."""
    text = "".join(c if c.isprintable() else "?" for c in name).replace("$", r"\$")
    return f" {text}" if text.startswith("_") else text


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def charts(d: ReportData) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.dates import date2num

    span = (float(date2num(d.frm)), float(date2num(d.to)))

    out: dict[str, bytes] = {}
    fig, ax = plt.subplots(figsize=(10, 4))
    top = max([a for _, _, a in d.aqi] + [100])
    for b in BANDS:
        if b.low <= top:
            ax.axhspan(b.low, b.high + 1, color=b.hex, alpha=0.25, lw=0)
            ax.text(1.005, (b.low + min(b.high, top)) / 2, b.label_en, transform=ax.get_yaxis_transform(),
                    va="center", fontsize=8)
    for site in sorted({s for _, s, _ in d.aqi}):
        pts = [(h, a) for h, s, a in d.aqi if s == site]
        ax.step(date2num([h for h, _ in pts]), [a for _, a in pts], where="post", label=chart_text(site), lw=1.5)
    ax.set_ylim(0, min(500, top * 1.1))
    ax.set_xlim(*span)
    ax.xaxis_date()
    ax.set_ylabel("VN_AQI (hourly)")
    ax.set_title("VN_AQI per site (worst station), Decision 1459/QĐ-TCMT")
    if d.aqi:
        ax.legend(loc="upper left", fontsize=8, ncols=4)
    fig.autofmt_xdate()
    out["vn_aqi.png"] = _png(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(10, 3.5))
    sites = sorted({s for _, s, _ in d.traffic})
    hours = sorted({h for h, _, _ in d.traffic})
    bottom = dict.fromkeys(hours, 0)
    for site in sites:
        vals = {h: n for h, s, n in d.traffic if s == site}
        ys = [vals.get(h, 0) for h in hours]
        ax.bar(date2num(hours), ys, width=1 / 26, bottom=[bottom[h] for h in hours], label=chart_text(site))
        for h, y in zip(hours, ys, strict=True):
            bottom[h] += y
    ax.set_xlim(*span)
    ax.xaxis_date()
    ax.set_ylabel("vehicles per hour")
    ax.set_title("Traffic volume per site")
    if sites:
        ax.legend(loc="upper left", fontsize=8, ncols=4)
    fig.autofmt_xdate()
    out["traffic.png"] = _png(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 6))
    for online, colour, label in ((True, "#1a9850", "online"), (False, "#d73027", "offline")):
        where = [(lon, lat) for _, _, lat, lon, on in d.devices if on == online]
        if where:
            ax.scatter([p[0] for p in where], [p[1] for p in where], s=18, c=colour, label=label, zorder=3)
    for site, lat, lon in d.sites:
        ax.annotate(chart_text(site), (lon, lat), textcoords="offset points", xytext=(6, 6), fontsize=8, weight="bold")
    ax.ticklabel_format(useOffset=False, style="plain")
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(True, lw=0.3)
    ax.set_title("Devices (no map tiles: positions on plain axes)")
    if d.devices:
        ax.legend(loc="best", fontsize=8)
    out["map.png"] = _png(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 3))
    profiles = [p for p, *_ in d.fleet]
    ax.barh(profiles, [r for _, r, _, _ in d.fleet], color="#cccccc", label="registered")
    ax.barh(profiles, [o for _, _, o, _ in d.fleet], color="#1a9850", label="online")
    ax.barh(profiles, [s for *_, s in d.fleet], color="#fdae61", label="online, silent > 5 min")
    ax.set_xlabel("devices")
    ax.set_title("Fleet health")
    ax.legend(loc="lower right", fontsize=8)
    out["fleet.png"] = _png(fig)
    plt.close(fig)
    return out


# -- page ---------------------------------------------------------------------------------------------
_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
h1{font-size:1.6em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;font-size:.9em}
.chip{display:inline-block;width:1em;height:1em;border:1px solid #888;vertical-align:middle;margin-right:.4em}
img{max-width:100%;border:1px solid #eee}.muted{color:#777}"""


def _table(head: list[str], rows: list[list[str]]) -> str:
    if not rows:
        return '<p class="muted">none</p>'
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _img(name: str, png: bytes, alt: str) -> str:
    return (f'<img class="chart" id="{name.removesuffix(".png")}" alt="{html.escape(alt)}" '
            f'src="data:image/png;base64,{base64.b64encode(png).decode()}">')


def render(d: ReportData, pngs: dict[str, bytes], title: str) -> str:
    e = html.escape
    aqi_rows = [[e(s), f'<span class="chip" style="background:{band_for(a).hex}"></span>{a}',
                 e(f"{band_for(a).label_vi} / {band_for(a).label_en}"), e(dom or "")] for s, a, dom in d.aqi_now]
    legend = " ".join(f'<span class="chip" style="background:{b.hex}"></span>{b.low}–{b.high} {e(b.label_vi)}'
                      for b in BANDS)
    alarm_rows = [[e(str(a["id"])), e(a["severity"]), e(a["rule"]), e(a["device_id"]), e(a["site"]),
                   e(f"{a['raised_at']:%Y-%m-%d %H:%M}"), e(a["acked_by"] or "not acknowledged"), e(a["message"])]
                  for a in d.alarms]
    fleet_rows = [[e(p), str(r), str(o), str(r - o), str(s)] for p, r, o, s in d.fleet]
    fw_rows = [[e(f), str(n)] for f, n in d.firmware]
    class_rows = [[e(c), str(n)] for c, n in d.classes]
    period = f"{d.frm:%Y-%m-%d %H:%M} – {d.to:%Y-%m-%d %H:%M} UTC"
    # The script only counts the charts the browser decoded (tests read it back from the DOM).
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title><style>{_CSS}</style></head>
<body>
<h1>{e(title)}</h1><p class="muted">{e(period)} · generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC</p>
<h2>Air quality: VN_AQI</h2>
<p>Hourly index per Decision 1459/QĐ-TCMT (NowCast of PM2.5/PM10); a site shows its worst station.</p>
{_img("vn_aqi.png", pngs["vn_aqi.png"], "VN_AQI per site")}
<p>{legend}</p>
{_table(["site", "VN_AQI now", "band", "dominant parameter"], aqi_rows)}
<h2>Traffic</h2>
{_img("traffic.png", pngs["traffic.png"], "traffic volume per site")}
{_table(["class", "count in period"], class_rows)}
<h2>Active alarms ({len(d.alarms)})</h2>
{_table(["id", "severity", "rule", "device", "site", "raised", "acknowledged", "message"], alarm_rows)}
<h2>Fleet health</h2>
{_img("fleet.png", pngs["fleet.png"], "fleet health")}
{_table(["profile", "registered", "online", "offline", "online, silent > 5 min"], fleet_rows)}
{_table(["firmware", "devices"], fw_rows)}
<h2>Map of devices</h2>
{_img("map.png", pngs["map.png"], "map of devices")}
<script>
window.addEventListener("load", function () {{
  var imgs = document.querySelectorAll("img.chart"), ok = 0;
  for (var i = 0; i < imgs.length; i++) {{ if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++; }}
  document.body.setAttribute("data-charts-rendered", String(ok));
}});
</script>
</body></html>
"""


def write_report(conn: psycopg.Connection, frm: datetime, to: datetime, out: Path,
                 title: str = "City IOC report") -> Path:
    data = gather(conn, frm, to)
    pngs = charts(data)
    out.parent.mkdir(parents=True, exist_ok=True)
    for name, png in pngs.items():
        (out.parent / f"{out.stem}-{name}").write_bytes(png)
    out.write_text(render(data, pngs, title), encoding="utf-8")
    return out


def _when(text: str | None, default: datetime) -> datetime:
    if not text:
        return default
    t = datetime.fromisoformat(text)
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def report_command(
        out: Annotated[Path, typer.Option("--out", help="HTML file to write (PNG charts go beside it)")] = Path(
            "report.html"),
        frm: Annotated[str | None, typer.Option("--from", help="ISO time, default 24 h before --to")] = None,
        to: Annotated[str | None, typer.Option("--to", help="ISO time, default now")] = None,
        title: str = "City IOC report",
        dsn: Annotated[str | None, typer.Option(help="database URL (default: IOC_DSN or the local stack)")] = None,
        directory: Annotated[Path | None, typer.Option("--dir", help="stack folder")] = None) -> None:
    """One self-contained HTML page for a time range: VN_AQI, traffic, active alarms, fleet, device map."""
    from ioc.endpoints import resolve_dsn

    try:
        end = _when(to, datetime.now(UTC))
        start = _when(frm, end - timedelta(hours=24))
    except ValueError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    if start >= end:
        console.print("[red]error:[/red] --from must be before --to")
        raise typer.Exit(1)
    with psycopg.connect(resolve_dsn(dsn, directory)) as conn:
        path = write_report(conn, start, end, out, title)
    console.print(f"wrote {path} ({path.stat().st_size // 1024} KiB) and its charts beside it")
