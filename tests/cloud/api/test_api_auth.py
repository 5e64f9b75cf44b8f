"""Tokens and roles: 401 without a valid token, 403 without the role, the bootstrap token's file mode."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import Callable
from pathlib import Path

import httpx
import psycopg
from api_helpers import RunningApi, new_device
from support import scratch_database

from cloud.api.auth import Role, ensure_admin_token, lookup
from cloud.db.migrate import migrate
from ioc.stack import Stack


def _routes(api: RunningApi) -> list[tuple[str, str]]:
    spec = httpx.get(f"{api.url}/openapi.json", timeout=60).json()
    return [(m.upper(), p) for p, ops in spec["paths"].items() for m in ops if p != "/health"]


def _fill(path: str) -> str:
    return (path.replace("{device_id}", "gw-nobody").replace("{metric}", "pm25").replace("{token_id}", "x")
            .replace("{command_id}", "00000000-0000-0000-0000-000000000000"))


def test_the_first_start_writes_a_private_admin_token_and_later_starts_keep_it(stack: Stack, tmp_path: Path) -> None:
    path = tmp_path / "api-admin-token"

    async def start() -> bool:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            return await ensure_admin_token(conn, path)

    async def role_of(token: str) -> Role | None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            principal = await lookup(conn, token)
        return principal.role if principal else None

    with scratch_database(stack, "boot") as dsn:  # a database where no admin exists yet
        migrate(dsn)
        assert asyncio.run(start())
        token = path.read_text().strip()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert token.startswith("ioc_")
        assert asyncio.run(role_of(token)) == Role.admin
        assert not asyncio.run(start())  # an admin exists: no second token, the file is left alone
        assert path.read_text().strip() == token


def test_every_route_refuses_without_a_valid_token(api: RunningApi) -> None:
    routes = _routes(api)
    assert len(routes) >= 15
    with api.client(None) as anon, api.client("ioc_deadbeef_not-a-token") as forged:
        for method, path in routes:
            for c in (anon, forged):
                r = c.request(method, _fill(path))
                assert r.status_code == 401, (method, path, r.status_code, r.text)
                assert "token" in r.json()["detail"]


def test_roles_are_enforced(api: RunningApi, as_role: Callable[[str], httpx.Client]) -> None:
    viewer, tech = as_role("viewer"), as_role("technician")
    # A viewer reads but changes nothing.
    assert viewer.get("/devices").status_code == 200
    r = viewer.post("/devices", json={"device_id": "gw-viewer-try", "site": "s", "profile": "env-gateway"})
    assert r.status_code == 403
    assert "technician" in r.json()["detail"]
    for method, path in _routes(api):
        if method != "GET":
            assert viewer.request(method, _fill(path), json={}).status_code == 403, (method, path)
    assert viewer.get("/audit").status_code == 403
    # A technician provisions devices but does not manage tokens.
    d = new_device(tech)
    assert tech.get(f"/devices/{d['device_id']}").status_code == 200
    assert tech.post("/tokens", json={"name": "x", "role": "admin"}).status_code == 403
    assert tech.get("/tokens").status_code == 403


def test_revoked_token_is_refused_and_secret_never_listed(api: RunningApi, admin: httpx.Client) -> None:
    r = admin.post("/tokens", json={"name": "temp", "role": "viewer"})
    created = r.json()
    with api.client(created["token"]) as c:
        assert c.get("/devices").status_code == 200
        listed = admin.get("/tokens").text
        assert created["token"] not in listed
        assert admin.delete(f"/tokens/{created['token_id']}").status_code == 200
        assert c.get("/devices").status_code == 401
    entries = admin.get("/audit", params={"target": created["token_id"]}).json()["items"]
    assert [e["action"] for e in entries] == ["token.revoke", "token.create"]
