"""Helpers of the registry API tests (a module name of its own: several test folders have a conftest)."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn

from cloud.api.app import create_app
from cloud.api.settings import ApiSettings


@dataclass
class RunningApi:
    url: str
    admin_token: str
    token_file: Path

    def client(self, token: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """uvicorn in a thread: the app's lifespan runs as in production."""

    def __init__(self, settings: ApiSettings) -> None:
        self.port = free_port()
        self._server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=self.port,
                                                     log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            assert self._thread.is_alive(), "the API thread ended before it started serving"
            assert time.monotonic() < deadline, "the API did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(15)


def serve(settings: ApiSettings) -> tuple[Server, str]:
    server = Server(settings)
    return server, f"http://127.0.0.1:{server.port}"


def new_device(client: httpx.Client, prefix: str = "gw", **fields: object) -> dict:
    body = {"device_id": f"{prefix}-{uuid.uuid4().hex[:8]}", "site": "district-01", "profile": "env-gateway",
            **fields}
    r = client.post("/devices", json=body)
    assert r.status_code == 201, r.text
    PASSWORDS.update(r.json().get("credentials") or {})
    return r.json()["created"][0]  # type: ignore[no-any-return]


PASSWORDS: dict[str, str] = {}  # device id -> the broker password the registry issued (shown once)


def device_broker(host: str, port: int, device_id: str) -> dict[str, object]:
    """An edge agent's `broker:` for a device created through the API: it logs in as itself."""
    login = {"username": device_id, "password": PASSWORDS[device_id]} if device_id in PASSWORDS else {}
    return {"host": host, "port": port, "backoff_min_s": 0.05, "backoff_max_s": 0.5, **login}
