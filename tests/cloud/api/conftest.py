"""A real registry API (uvicorn on a free loopback port) on the session's real PostgreSQL and Mosquitto."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest
from api_helpers import RunningApi
from support import admin_token, mqtt_login, serve

from cloud.api.settings import ApiSettings
from ioc.stack import Stack


@pytest.fixture(scope="session")
def api(stack: Stack) -> Iterator[RunningApi]:
    settings = ApiSettings(dsn=stack.dsn, mqtt_host=stack.mqtt_host, mqtt_port=stack.mqtt_port,
                           client_id=f"registry-test-{uuid.uuid4().hex[:6]}",
                           sweep_interval_s=0.2, **mqtt_login(stack, "registry"),
                           broker_auth_dir=stack.mosquitto.auth_dir if stack.broker_auth else None,
                           broker_pid_file=stack.mosquitto.pid_file)
    server, url = serve(settings)
    yield RunningApi(url, admin_token(stack.dsn, "api-tests"))
    server.stop()


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
