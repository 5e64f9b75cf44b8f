"""Helpers of the registry API tests (a module name of its own: several test folders have a conftest)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import httpx


@dataclass
class RunningApi:
    url: str
    admin_token: str

    def client(self, token: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


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
