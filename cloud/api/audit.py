"""The audit log: who changed what, when, before -> after; written in the transaction of the change."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from cloud.api.auth import Principal


async def record(conn: AsyncConnection, who: Principal, action: str, target: str | None,
                 before: Any = None, after: Any = None) -> None:
    await conn.execute(
        "INSERT INTO audit_log (actor, action, target, before, after) VALUES (%s, %s, %s, %s, %s)",
        (who.actor, action, target, None if before is None else Jsonb(before),
         None if after is None else Jsonb(after)))


async def record_many(conn: AsyncConnection, who: Principal, action: str,
                      entries: list[tuple[str | None, Any, Any]]) -> None:
    """(target, before, after) each, in one round trip: bulk provisioning audits every device."""
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO audit_log (actor, action, target, before, after) VALUES (%s, %s, %s, %s, %s)",
            [(who.actor, action, t, None if b is None else Jsonb(b), None if a is None else Jsonb(a))
             for t, b, a in entries])
