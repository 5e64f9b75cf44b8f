"""Helpers of the registry API tests (a module name of its own: several test folders have a conftest)."""

from __future__ import annotations

import socket
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx


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


def new_device(client: httpx.Client, prefix: str = "gw", **fields: object) -> dict:
    body = {"device_id": f"{prefix}-{uuid.uuid4().hex[:8]}", "site": "district-01", "profile": "env-gateway",
            **fields}
    r = client.post("/devices", json=body)
    assert r.status_code == 201, r.text
    return r.json()["created"][0]  # type: ignore[no-any-return]
