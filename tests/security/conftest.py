"""A registry API on the session's real stack (auth on), issuing device logins into its broker."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
from support import admin_token, mqtt_login, serve

from cloud.api.settings import ApiSettings
from ioc.stack import Stack


@pytest.fixture(scope="session")
def tech(stack: Stack) -> Iterator[httpx.Client]:
    """An admin-token client of a registry that issues broker credentials (the `ioc api` set-up)."""
    if not stack.broker_auth:
        pytest.skip("the stack's broker lets clients in anonymously (IOC_BROKER_AUTH=0)")
    settings = ApiSettings(dsn=stack.dsn, mqtt_host=stack.mqtt_host, mqtt_port=stack.mqtt_port,
                           client_id=f"registry-sec-{uuid.uuid4().hex[:6]}",
                           broker_auth_dir=stack.mosquitto.auth_dir, broker_pid_file=stack.mosquitto.pid_file,
                           broker_ca_dir=stack.mosquitto.tls_dir, certificate_check_interval_s=0.5,
                           **mqtt_login(stack, "registry"))
    server, url = serve(settings)
    with httpx.Client(base_url=url, timeout=30,
                      headers={"Authorization": f"Bearer {admin_token(stack.dsn, 'security-tests')}"}) as c:
        yield c
    server.stop()
