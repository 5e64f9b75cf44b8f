"""`GET /report` on the real stack: the page `ioc report` writes, for viewers, with its charts inline and the
current alarms in it; bad ranges are refused with a reason."""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import psycopg
from api_helpers import RunningApi

from cloud.alerts.store import Raise, raise_alarms
from ioc.stack import Stack

PNG = b"\x89PNG\r\n\x1a\n"


def test_report_page_for_viewers_with_charts_and_the_active_alarms(
        api: RunningApi, as_role: Callable[[str], httpx.Client], stack: Stack) -> None:
    message = f"river over its alarm level {uuid.uuid4().hex[:6]}"
    with psycopg.connect(stack.dsn) as conn, conn.cursor() as cur:
        raise_alarms(cur, [Raise(f"rpt-{uuid.uuid4().hex[:6]}", f"rptdev-{uuid.uuid4().hex[:6]}", "rpt-site",
                                 "threshold", "critical", message, 4.2, datetime.now(UTC))], "evaluator:test")
        conn.commit()
    with api.client(None) as anon:
        assert anon.get("/report").status_code == 401
    viewer = as_role("viewer")
    r = viewer.get("/report", params={"title": "Hanoi <IOC>"}, timeout=180)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/html")
    page = r.text
    assert "<title>Hanoi &lt;IOC&gt;</title>" in page  # the title is escaped, not markup
    assert message in page
    charts = dict(re.findall(r'<img class="chart" id="([a-z_]+)"[^>]*src="data:image/png;base64,([^"]+)"', page))
    assert set(charts) == {"vn_aqi", "traffic", "fleet", "map"}
    for name, data in charts.items():
        assert base64.b64decode(data).startswith(PNG), name


def test_report_refuses_bad_ranges(as_role: Callable[[str], httpx.Client]) -> None:
    viewer = as_role("viewer")
    r = viewer.get("/report", params={"from": "2026-12-02T00:00:00Z", "to": "2026-12-01T00:00:00Z"})
    assert r.status_code == 422
    assert "before" in r.json()["detail"]
    r = viewer.get("/report", params={"from": "2026-01-01T00:00:00Z", "to": "2026-12-01T00:00:00Z"})
    assert r.status_code == 422
    assert "31 days" in r.json()["detail"]
    assert viewer.get("/report", params={"from": "yesterday"}).status_code == 422
    assert viewer.get("/report", params={"to": "0001-01-01T00:00:00Z"}).status_code == 422  # no day before it
