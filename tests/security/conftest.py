"""A registry API on the session's real stack (auth on), issuing device logins into its broker."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
import uvicorn
from support import mqtt_login

from cloud.api.app import create_app
from cloud.api.auth import Role, create_token
from cloud.api.settings import ApiSettings
from ioc.stack import Stack


async def _admin_token(dsn: str) -> str:
    """A token of our own: the bootstrap file is written only when no admin exists (another API may have one)."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        return (await create_token(conn, "security-tests", Role.admin, "tests/security"))[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def tech(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """An admin-token client of a registry that issues broker credentials (the `ioc api` set-up)."""
    if not stack.broker_auth:
        pytest.skip("the stack's broker lets clients in anonymously (IOC_BROKER_AUTH=0)")
    token_file: Path = tmp_path_factory.mktemp("sec-api") / "token"
    settings = ApiSettings(dsn=stack.dsn, mqtt_host=stack.mqtt_host, mqtt_port=stack.mqtt_port,
                           admin_token_file=token_file, client_id=f"registry-sec-{uuid.uuid4().hex[:6]}",
                           broker_auth_dir=stack.mosquitto.auth_dir, broker_pid_file=stack.mosquitto.pid_file,
                           broker_ca_dir=stack.mosquitto.tls_dir, certificate_check_interval_s=0.5,
                           **mqtt_login(stack, "registry"))
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive(), "the API thread ended before it served"
        assert time.monotonic() < deadline, "the API did not start"
        time.sleep(0.05)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30,
                      headers={"Authorization": f"Bearer {asyncio.run(_admin_token(stack.dsn))}"}) as c:
        yield c
    server.should_exit = True
    thread.join(15)
