"""A real registry API (uvicorn on a free loopback port) on the session's real PostgreSQL and Mosquitto."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from cloud.api.app import create_app
from cloud.api.settings import ApiSettings
from ioc.stack import Stack


@dataclass
class RunningApi:
    url: str
    admin_token: str
    token_file: Path

    def client(self, token: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def api(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApi]:
    token_file = tmp_path_factory.mktemp("api") / "api-admin-token"
    settings = ApiSettings(dsn=stack.dsn, mqtt_host=stack.mqtt_host, mqtt_port=stack.mqtt_port,
                           admin_token_file=token_file, client_id=f"registry-test-{uuid.uuid4().hex[:6]}",
                           sweep_interval_s=0.2)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive(), "the API thread ended before it started serving"
        assert time.monotonic() < deadline, "the API did not start"
        time.sleep(0.05)
    yield RunningApi(f"http://127.0.0.1:{port}", token_file.read_text().strip(), token_file)
    server.should_exit = True
    thread.join(15)


@pytest.fixture(scope="session")
def admin(api: RunningApi) -> Iterator[httpx.Client]:
    with api.client(api.admin_token) as c:
        yield c


@pytest.fixture(scope="session")
def as_role(api: RunningApi, admin: httpx.Client) -> Iterator[Callable[[str], httpx.Client]]:
    """A client holding a fresh token of the given role."""
    made: dict[str, httpx.Client] = {}

    def get(role: str) -> httpx.Client:
        if role not in made:
            r = admin.post("/tokens", json={"name": f"test-{role}", "role": role})
            assert r.status_code == 201, r.text
            made[role] = api.client(r.json()["token"])
        return made[role]

    yield get
    for c in made.values():
        c.close()


def new_device(client: httpx.Client, prefix: str = "gw", **fields: object) -> dict:
    body = {"device_id": f"{prefix}-{uuid.uuid4().hex[:8]}", "site": "district-01", "profile": "env-gateway",
            **fields}
    r = client.post("/devices", json=body)
    assert r.status_code == 201, r.text
    return r.json()["created"][0]  # type: ignore[no-any-return]
