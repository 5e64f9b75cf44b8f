"""Helpers shared by the test tiers (import as `from support import ...`)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import paho.mqtt.client as mqtt
import psycopg
import uvicorn
from paho.mqtt.enums import CallbackAPIVersion
from psycopg import sql

from cloud.api.app import create_app
from cloud.api.auth import Role, create_token
from cloud.api.settings import ApiSettings
from ioc.stack import Stack

T = TypeVar("T")


def wait_until(probe: Callable[[], T], timeout: float = 30.0, interval: float = 0.1, what: str = "condition") -> T:
    """Poll until probe() is truthy; fail with the last value seen so a timeout explains itself."""
    deadline = time.monotonic() + timeout
    last: T = probe()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last value: {last!r}")
        time.sleep(interval)
        last = probe()
    return last


@contextmanager
def scratch_database(stack: Stack, prefix: str = "t") -> Iterator[str]:
    """An empty database on the test server (its DSN), dropped afterwards. On TimescaleDB a DROP ... WITH
    (FORCE) by a non-superuser can meet one of the extension's background workers while it starts (no role
    yet: "must be a member of the role whose process is being terminated"); the drop stops the database's
    workers, so trying again succeeds."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(stack.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield stack.dsn.rsplit("/", 1)[0] + "/" + name
    finally:
        drop = sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name))
        for attempt in range(50):
            try:
                with psycopg.connect(stack.dsn, autocommit=True) as conn:
                    conn.execute(drop)
                break
            except (psycopg.errors.InsufficientPrivilege, psycopg.errors.ObjectInUse):
                if attempt == 49:
                    raise
                time.sleep(0.2)


def mqtt_login(stack: Stack, service: str = "admin") -> dict[str, str]:
    """Settings kwargs (mqtt_username, mqtt_password) a stack service logs in with; {} when auth is off."""
    creds = stack.credentials(service)
    return {"mqtt_username": creds[0], "mqtt_password": creds[1]} if creds else {}


def mqtt_env(stack: Stack, service: str) -> dict[str, str]:
    """The same as IOC_MQTT_USERNAME / IOC_MQTT_PASSWORD, for an `ioc ...` subprocess."""
    creds = stack.credentials(service)
    return {"IOC_MQTT_USERNAME": creds[0], "IOC_MQTT_PASSWORD": creds[1]} if creds else {}


def login(client: mqtt.Client, stack: Stack, service: str = "admin") -> mqtt.Client:
    """Give a test's own paho client a login before connect(): the stack's broker lets nobody in anonymously.
    `simulator` publishes as any device; `admin` reads everything."""
    creds = stack.credentials(service)
    if creds:
        client.username_pw_set(*creds)
    return client


def paho_auth(stack: Stack, service: str = "simulator") -> dict[str, str] | None:
    """`auth=` for paho.mqtt.publish.single/multiple."""
    creds = stack.credentials(service)
    return {"username": creds[0], "password": creds[1]} if creds else None


def tls_connack(port: int, ctx: ssl.SSLContext, username: str | None = None, password: str | None = None) -> bool:
    """True when the broker accepts this login on its TLS port (False: refused, or the handshake failed)."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:6]}", protocol=mqtt.MQTTv5)
    c.tls_set_context(ctx)
    if username:
        c.username_pw_set(username, password)
    done, ok = threading.Event(), []
    c.on_connect = lambda _c, _u, _f, rc, _p=None: (ok.append(not rc.is_failure), done.set())
    c.on_disconnect = lambda *_a: done.set()
    try:
        c.connect("127.0.0.1", port)
    except (ssl.SSLError, OSError):
        return False
    c.loop_start()
    done.wait(10)
    c.loop_stop()
    c.disconnect()
    return bool(ok and ok[0])


def admin_token(dsn: str, name: str) -> str:
    """An admin token of the tests' own: the API writes its bootstrap token only where no admin exists yet,
    and other test folders' APIs share the session's database."""
    async def make() -> str:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            return (await create_token(conn, name, Role.admin, "tests"))[1]
    return asyncio.run(make())


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
