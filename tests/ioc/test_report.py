"""`ioc report` on the real database, rendered by Debian's headless Chromium (/usr/bin/chromium): the page
loads with no console error, the browser decodes every chart, and a screenshot is taken."""

from __future__ import annotations

import re
import shutil
import subprocess
import uuid
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from support import wait_until
from typer.testing import CliRunner

from cloud.db.devices import register_devices
from cloud.db.maintenance import run_maintenance
from cloud.db.migrate import current_backend
from ioc.cli import app
from ioc.report import ReportData, chart_text, charts
from ioc.stack import Stack

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                    reason="Debian's chromium is not installed (apt-get install -y chromium)")


def _chromium(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           "--disable-extensions", "--disable-background-networking", "--enable-logging=stderr",
                           "--v=0", "--virtual-time-budget=5000", *args, url],
                          capture_output=True, text=True, timeout=120, check=False)


def _console_errors(stderr: str) -> list[str]:
    """Chromium logs page console messages as 'CONSOLE(line)] "text"' and uncaught exceptions as well."""
    return [line for line in stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]


@pytest.fixture
def city(stack: Stack) -> tuple[str, str, str]:
    tag = uuid.uuid4().hex[:6]
    site, env, cam = f"rsite-{tag}", f"renv-{tag}", f"rcam-{tag}"
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    with psycopg.connect(stack.dsn, autocommit=True) as conn:
        register_devices(conn, [(env, site, "env-gateway"), (cam, site, "traffic-camera")])
        conn.execute("UPDATE devices SET lat = 21.0285, lon = 105.8542 WHERE device_id = %s", (env,))
        conn.execute("INSERT INTO sites (site, lat, lon) VALUES (%s, 21.03, 105.85)", (site,))
        rows = [(now - timedelta(minutes=20 * i), env, "pm25", 40.0 + 10 * (i % 5)) for i in range(18)]
        conn.cursor().executemany("INSERT INTO telemetry (ts, device_id, metric, value) VALUES (%s, %s, %s, %s)", rows)
        conn.cursor().executemany(
            "INSERT INTO traffic_counts (ts, device_id, line, cls, direction, interval_s, count)"
            " VALUES (%s, %s, 'north', 'car', 'in', 60, %s)",
            [(now - timedelta(minutes=10 * i), cam, 5 + i) for i in range(30)])
        conn.execute("INSERT INTO alarms (rule, device_id, site, kind, severity, message, value, condition_since)"
                     " VALUES ('report-test', %s, %s, 'threshold', 'major', 'PM2.5 high in the report', 80, now())",
                     (env, site))
        # As ingest would: the minutes marked dirty, one upkeep pass (rollups or continuous aggregates).
        conn.cursor().executemany("INSERT INTO rollup_dirty (instance, bucket) VALUES ('report-test', %s)"
                                  " ON CONFLICT DO NOTHING", [(r[0],) for r in rows])
        conn.execute("SELECT ioc_take_dirty_rollups(interval '-2 minutes')")
        wait_until(lambda: run_maintenance(conn).ran, what="an upkeep pass of our own")
        if current_backend(conn) == "postgres":
            conn.execute("SELECT ioc_refresh_rollups()")
    return site, env, cam


@needs_chromium
def test_report_renders_in_headless_chromium_with_every_chart(stack: Stack, city: tuple[str, str, str],
                                                              tmp_path: Path) -> None:
    site, _, _ = city
    out = tmp_path / "report.html"
    res = CliRunner().invoke(app, ["report", "--out", str(out), "--dsn", stack.dsn, "--title", "Test city"])
    assert res.exit_code == 0, res.output
    page = out.read_text(encoding="utf-8")
    assert "http://" not in page, "not self-contained"
    assert "https://" not in page, "not self-contained"
    assert site in page
    assert "PM2.5 high in the report" in page
    for chart in ("vn_aqi", "traffic", "fleet", "map"):
        assert (tmp_path / f"report-{chart}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    charts = len(re.findall(r'<img class="chart"', page))
    assert charts == 4

    dom = _chromium(out.as_uri(), "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert f'data-charts-rendered="{charts}"' in dom.stdout, "the browser did not decode every chart"
    assert _console_errors(dom.stderr) == []

    shot = tmp_path / "report.png"
    snap = _chromium(out.as_uri(), f"--screenshot={shot}", "--window-size=1200,2600", "--hide-scrollbars")
    assert snap.returncode == 0, snap.stderr[-2000:]
    assert shot.stat().st_size > 50_000  # charts, not a blank page
    assert _console_errors(snap.stderr) == []
    keep = Path(__file__).resolve().parents[2] / ".ioc" / "report-screenshot.png"
    shutil.copy(shot, keep)  # for a person to look at


@needs_chromium
def test_the_console_check_sees_an_error_when_there_is_one(tmp_path: Path) -> None:
    """Control: the same log reading does catch a page's console error and an uncaught exception."""
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>console.error('boom-from-page'); undefined_fn();</script></body></html>")
    run = _chromium(bad.as_uri(), "--dump-dom")
    errors = _console_errors(run.stderr)
    assert any("boom-from-page" in e for e in errors), run.stderr[-2000:]
    assert any("undefined_fn" in e for e in errors)


def test_report_refuses_a_reversed_range(stack: Stack, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["report", "--out", str(tmp_path / "r.html"), "--dsn", stack.dsn,
                                   "--from", "2026-01-02T00:00", "--to", "2026-01-01T00:00"])
    assert res.exit_code == 1
    assert "--from must be before --to" in res.output


def test_charts_draw_any_site_name_the_registry_accepts() -> None:
    """A site may be named with '$' (matplotlib's mathematics), a leading '_' or a control character: the charts
    still draw, and show the name."""
    names = [r"$\foo$ east", "_depot", "ga\x88ra"]
    hour = datetime(2026, 12, 1, 8, tzinfo=UTC)
    data = ReportData(hour, hour + timedelta(hours=3), [(hour, n, 60 + i) for i, n in enumerate(names)], [],
                      [(hour, n, 10) for n in names], [], [], [("env-gateway", 3, 3, 0)], [],
                      [(f"d{i}", n, 21.0 + i / 100, 105.8, True) for i, n in enumerate(names)],
                      [(n, 21.0 + i / 100, 105.8) for i, n in enumerate(names)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a glyph the font lacks, a legend label hidden: each a warning
        pngs = charts(data)
    assert set(pngs) == {"vn_aqi.png", "traffic.png", "map.png", "fleet.png"}
    assert [chart_text(n) for n in names] == [r"\$\foo\$ east", " _depot", "ga?ra"]
