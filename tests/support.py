"""Helpers shared by the test tiers (import as `from support import ...`)."""

from __future__ import annotations

import ssl
import threading
import time
import uuid
from collections.abc import Callable
from typing import TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

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
