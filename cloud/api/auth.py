"""API tokens: random secrets shown once, stored as SHA-256, each with one role.

A token is `ioc_<id>_<secret>`; SHA-256 suffices (the secret has 256 random bits, so there is
nothing to brute-force, unlike a password) and lets a request be checked with one indexed lookup.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from psycopg import AsyncConnection

log = logging.getLogger(__name__)
BOOTSTRAP_LOCK_ID = 0x10C_0092  # advisory lock: one bootstrap admin token however many API processes start


class Role(IntEnum):
    """Ordered: each role may do everything the ones below it may."""

    viewer = 1
    technician = 2
    admin = 3


@dataclass(frozen=True, slots=True)
class Principal:
    token_id: str
    name: str
    role: Role

    @property
    def actor(self) -> str:
        return f"{self.name} ({self.token_id})"


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def new_token() -> tuple[str, str]:
    """(token_id, full token)."""
    token_id = secrets.token_hex(4)
    return token_id, f"ioc_{token_id}_{secrets.token_urlsafe(32)}"


async def create_token(conn: AsyncConnection, name: str, role: Role, created_by: str) -> tuple[str, str]:
    token_id, token = new_token()
    await conn.execute(
        "INSERT INTO api_tokens (token_id, name, role, token_hash, created_by) VALUES (%s, %s, %s, %s, %s)",
        (token_id, name, role.name, hash_token(token), created_by))
    return token_id, token


async def lookup(conn: AsyncConnection, token: str) -> Principal | None:
    cur = await conn.execute(
        "SELECT token_id, name, role FROM api_tokens WHERE token_hash = %s AND revoked_at IS NULL",
        (hash_token(token),))
    row = await cur.fetchone()
    return Principal(row[0], row[1], Role[row[2]]) if row else None


async def ensure_admin_token(conn: AsyncConnection, path: Path | None) -> bool:
    """First start: no admin token exists, so make one and write it to `path` (mode 0600) for the operator.
    Later starts leave tokens alone (`ioc api token create` makes another straight in the database)."""
    if path is None:
        return False
    async with conn.transaction():  # API processes starting together: one makes the token, the others see it
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (BOOTSTRAP_LOCK_ID,))
        cur = await conn.execute("SELECT 1 FROM api_tokens WHERE role = 'admin' AND revoked_at IS NULL LIMIT 1")
        if await cur.fetchone():
            return False
        _, token = await create_token(conn, "bootstrap-admin", Role.admin, "ioc api (bootstrap)")
    write_secret(path, token)  # once committed: whoever reads the file can use the token
    log.info("bootstrap admin token written to %s", path)
    return True


def write_secret(path: Path, secret: str) -> None:
    """Create the file with mode 0600 before the secret goes in, so it is never readable by others."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    os.chmod(path, 0o600)
