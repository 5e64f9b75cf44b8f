"""`ioc grafana push` against a tiny local HTTP server that answers like Grafana's API and records every
request: the datasource is created then updated by uid, the folder made once, every dashboard written."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from typer.testing import CliRunner

from cloud.grafana.push import DASHBOARD_DIR, PushError, datasource_payload
from ioc.cli import app


@dataclass
class FakeGrafana:
    requests: list[tuple[str, str, dict[str, str], Any]] = field(default_factory=list)
    datasources: dict[str, dict[str, Any]] = field(default_factory=dict)
    folders: set[str] = field(default_factory=set)
    dashboards: dict[str, dict[str, Any]] = field(default_factory=dict)

    def handle(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        if method == "GET" and path.startswith("/api/datasources/uid/"):
            uid = path.rsplit("/", 1)[1]
            return (200, self.datasources[uid]) if uid in self.datasources else (404, {"message": "not found"})
        if method == "POST" and path == "/api/datasources":
            self.datasources[body["uid"]] = body
            return 200, {"message": "Datasource added", "id": 1}
        if method == "PUT" and path.startswith("/api/datasources/uid/"):
            self.datasources[path.rsplit("/", 1)[1]] = body
            return 200, {"message": "Datasource updated"}
        if method == "GET" and path.startswith("/api/folders/"):
            uid = path.rsplit("/", 1)[1]
            return (200, {"uid": uid}) if uid in self.folders else (404, {"message": "folder not found"})
        if method == "POST" and path == "/api/folders":
            self.folders.add(body["uid"])
            return 200, {"uid": body["uid"], "title": body["title"]}
        if method == "POST" and path == "/api/dashboards/db":
            if body["dashboard"].get("id") is not None or body["folderUid"] not in self.folders:
                return 400, {"message": "bad dashboard request"}
            self.dashboards[body["dashboard"]["uid"]] = body
            return 200, {"status": "success", "uid": body["dashboard"]["uid"]}
        return 404, {"message": f"no route {method} {path}"}


@pytest.fixture
def grafana() -> Iterator[tuple[FakeGrafana, str]]:
    fake = FakeGrafana()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
            body = json.loads(raw) if raw else None
            fake.requests.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            status, answer = fake.handle(self.command, self.path, body)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = _serve  # noqa: N815 - http.server's naming

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield fake, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


ARGS = ["--db-host", "db.example:5432", "--db-name", "iocdb", "--db-password", "s3cret", "--postgres"]


def test_push_creates_then_updates_and_uploads_every_dashboard(grafana: tuple[FakeGrafana, str]) -> None:
    fake, url = grafana
    res = CliRunner().invoke(app, ["grafana", "push", "--url", url, "--token", "tok-123", *ARGS])
    assert res.exit_code == 0, res.output
    ds = fake.datasources["ioc-postgres"]
    assert (ds["url"], ds["user"], ds["jsonData"]["database"]) == ("db.example:5432", "ioc_grafana", "iocdb")
    assert ds["jsonData"]["timescaledb"] is False
    assert ds["secureJsonData"] == {"password": "s3cret"}
    files = {json.loads(p.read_text())["uid"] for p in DASHBOARD_DIR.glob("*.json")}
    assert set(fake.dashboards) == files
    assert all(b["overwrite"] and b["folderUid"] == "ioc" for b in fake.dashboards.values())
    assert all(h.get("authorization") == "Bearer tok-123" for _, _, h, _ in fake.requests)
    first = [(m, p) for m, p, _, _ in fake.requests if not p.startswith("/api/dashboards")]
    assert first == [("GET", "/api/datasources/uid/ioc-postgres"), ("POST", "/api/datasources"),
                     ("GET", "/api/folders/ioc"), ("POST", "/api/folders")]
    # A second push updates in place: no second datasource, no second folder.
    fake.requests.clear()
    res = CliRunner().invoke(app, ["grafana", "push", "--url", url, "--user", "admin", "--password", "pw", *ARGS])
    assert res.exit_code == 0, res.output
    second = [(m, p) for m, p, _, _ in fake.requests if not p.startswith("/api/dashboards")]
    assert second == [("GET", "/api/datasources/uid/ioc-postgres"), ("PUT", "/api/datasources/uid/ioc-postgres"),
                      ("GET", "/api/folders/ioc")]
    basic = "Basic " + base64.b64encode(b"admin:pw").decode()
    assert all(h.get("authorization") == basic for _, _, h, _ in fake.requests)


def test_push_reports_what_grafana_refused(grafana: tuple[FakeGrafana, str]) -> None:
    fake, url = grafana
    fake.handle = lambda m, p, b: (403, {"message": "permission denied"})  # type: ignore[method-assign]
    res = CliRunner().invoke(app, ["grafana", "push", "--url", url, "--token", "t", *ARGS])
    assert res.exit_code == 1
    assert "403" in res.output
    assert "permission denied" in res.output


def test_datasource_needs_every_variable() -> None:
    with pytest.raises(PushError, match="IOC_GRAFANA_DB_PASSWORD"):
        datasource_payload({"IOC_GRAFANA_DB_HOST": "h", "IOC_GRAFANA_DB_NAME": "n", "IOC_GRAFANA_DB_SSLMODE": "disable",
                            "IOC_GRAFANA_TIMESCALEDB": "true"})
