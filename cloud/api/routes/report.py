"""`GET /report`: the page `ioc report` writes (ioc/report.py), served to viewers, charts inline.

The report is built by the same code as the command, on a connection of its own in a worker thread (it
queries synchronously and draws with matplotlib, whose pyplot state is global: one report at a time).
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Annotated

import matplotlib.pyplot  # noqa: F401  # loaded with the app, not by the first /report (seconds on a busy host)
import psycopg
from fastapi import APIRouter, HTTPException, Query, status
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from cloud.api.deps import Pool, Viewer
from ioc.report import charts, gather, render

router = APIRouter(tags=["report"])

MAX_SPAN = timedelta(days=31)
_drawing = threading.Lock()


def _build(conninfo: str, frm: datetime, to: datetime, title: str) -> str:
    with psycopg.connect(conninfo, connect_timeout=5, options="-c statement_timeout=60s") as conn:
        data = gather(conn, frm, to)
    with _drawing:
        pngs = charts(data)
    return render(data, pngs, title)


def _utc(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=UTC)


@router.get("/report", response_class=HTMLResponse,
            responses={200: {"content": {"text/html": {}}, "description": "one self-contained HTML page"}})
async def report(pool: Pool, who: Viewer,
                 frm: Annotated[datetime | None, Query(alias="from", description="default 24 h before `to`")] = None,
                 to: Annotated[datetime | None, Query(description="default now")] = None,
                 title: Annotated[str, Query(max_length=200)] = "City IOC report") -> HTMLResponse:
    """VN_AQI per site with bands, traffic volumes, active alarms, fleet health and a map of devices."""
    end = _utc(to) if to else datetime.now(UTC)
    try:
        start = _utc(frm) if frm else end - timedelta(hours=24)
    except OverflowError:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "`to` is too early for a report") from None
    if start >= end:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "`from` must be before `to`")
    if end - start > MAX_SPAN:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"at most {MAX_SPAN.days} days per report")
    conninfo = pool.conninfo
    if not isinstance(conninfo, str):  # the app's pool is made from the settings' DSN string
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the report needs the database's address")
    page = await run_in_threadpool(_build, conninfo, start, end, title)
    return HTMLResponse(page)
