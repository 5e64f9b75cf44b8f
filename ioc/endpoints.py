"""Where the broker and database are: flags, then IOC_DSN / IOC_MQTT_* variables, then the local stack."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ioc.stack import Stack, StackError


@dataclass(frozen=True)
class Endpoints:
    dsn: str
    mqtt_host: str
    mqtt_port: int
    mqtt_username: str | None = None
    mqtt_password: str | None = field(default=None, repr=False)
    stack: Stack | None = field(default=None, repr=False)  # the local stack the endpoints came from, if any

    def login(self) -> dict[str, str]:
        """mqtt_username / mqtt_password settings kwargs; empty for a broker without logins."""
        if self.mqtt_username is None:
            return {}
        return {"mqtt_username": self.mqtt_username, "mqtt_password": self.mqtt_password or ""}


def resolve(dsn: str | None = None, mqtt_host: str | None = None, mqtt_port: int | None = None,
            stack_dir: Path | None = None, service: str = "admin") -> Endpoints:
    """service: whose broker login to use from the local stack (ingest, registry, alerts, simulator, bench,
    admin) unless IOC_MQTT_USERNAME / IOC_MQTT_PASSWORD give one."""
    dsn = dsn or os.environ.get("IOC_DSN")
    mqtt_host = mqtt_host or os.environ.get("IOC_MQTT_HOST")
    port_env = os.environ.get("IOC_MQTT_PORT")
    mqtt_port = mqtt_port or (int(port_env) if port_env else None)
    user, password = os.environ.get("IOC_MQTT_USERNAME"), os.environ.get("IOC_MQTT_PASSWORD")
    if dsn and mqtt_host and mqtt_port:
        return Endpoints(dsn, mqtt_host, mqtt_port, user, password)
    try:
        stack = Stack.existing(stack_dir)
    except StackError as e:
        raise StackError(
            f"{e}, or pass --dsn/--mqtt-host/--mqtt-port (IOC_DSN, IOC_MQTT_HOST, IOC_MQTT_PORT)") from None
    if user is None:
        user, password = stack.credentials(service) or (None, None)
    return Endpoints(dsn or stack.dsn, mqtt_host or stack.mqtt_host, mqtt_port or stack.mqtt_port, user, password,
                     stack)



def resolve_dsn(dsn: str | None = None, stack_dir: Path | None = None) -> str:
    """For commands that only need the database (migrate, maintain, devices, status)."""
    dsn = dsn or os.environ.get("IOC_DSN")
    if dsn:
        return dsn
    try:
        return Stack.existing(stack_dir).dsn
    except StackError as e:
        raise StackError(f"{e}, or pass --dsn (IOC_DSN)") from None
