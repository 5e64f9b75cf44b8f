"""People: API tokens (admin) and the audit log."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, status
from psycopg.rows import dict_row

from cloud.api import audit
from cloud.api.auth import Role, create_token
from cloud.api.deps import Admin, Conn, Technician
from cloud.api.models import AuditEntry, AuditPage, TokenCreate, TokenCreated, TokenPublic
from cloud.api.views import decode_cursor, encode_cursor

router = APIRouter(tags=["people"])


@router.post("/tokens", response_model=TokenCreated, status_code=status.HTTP_201_CREATED)
async def new_token(conn: Conn, who: Admin, body: TokenCreate) -> TokenCreated:
    """The secret is in this answer only; the database keeps its hash."""
    async with conn.transaction():
        token_id, token = await create_token(conn, body.name, Role[body.role], who.actor)
        await audit.record(conn, who, "token.create", token_id, None, {"name": body.name, "role": body.role})
        cur = await conn.execute("SELECT created_at FROM api_tokens WHERE token_id = %s", (token_id,))
        row = await cur.fetchone()
    assert row is not None
    return TokenCreated(token_id=token_id, name=body.name, role=body.role, created_at=row[0],
                        created_by=who.actor, token=token)


@router.get("/tokens", response_model=list[TokenPublic])
async def list_tokens(conn: Conn, who: Admin) -> list[TokenPublic]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT token_id, name, role, created_at, created_by, revoked_at FROM api_tokens"
                          " ORDER BY created_at")
        return [TokenPublic.model_validate(r) for r in await cur.fetchall()]


@router.delete("/tokens/{token_id}", response_model=TokenPublic, responses={404: {"description": "no such token"}})
async def revoke_token(request: Request, conn: Conn, who: Admin, token_id: str) -> TokenPublic:
    """Takes effect on the next request made with it."""
    async with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, now()) WHERE token_id = %s"
                          " RETURNING token_id, name, role, created_at, created_by, revoked_at", (token_id,))
        row = await cur.fetchone()
        if row is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no token {token_id!r}")
        await audit.record(conn, who, "token.revoke", token_id, None, {"name": row["name"], "role": row["role"]})
    request.app.state.tokens.forget(token_id)
    return TokenPublic.model_validate(row)


@router.get("/audit", response_model=AuditPage)
async def audit_log(conn: Conn, who: Technician,
                    target: Annotated[str | None, Query(max_length=200, description="e.g. a device id")] = None,
                    action: Annotated[str | None, Query(max_length=100, description="e.g. device.update")] = None,
                    actor: Annotated[str | None, Query(max_length=200, description="text in the actor")] = None,
                    since: datetime | None = None,
                    cursor: Annotated[str | None, Query(max_length=500)] = None,
                    limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> AuditPage:
    """Newest first."""
    where: list[str] = []
    args: list[object] = []
    for col, val in (("target", target), ("action", action)):
        if val is not None:
            where.append(f"{col} = %s")
            args.append(val)
    if actor is not None:
        where.append("strpos(actor, %s) > 0")
        args.append(actor)
    if since is not None:
        where.append("ts >= %s")
        args.append(since)
    if cursor:
        _, last_id = decode_cursor(cursor, "audit")
        if not isinstance(last_id, int):
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "cursor is not one this API handed out")
        where.append("id < %s")
        args.append(last_id)
    sql = ("SELECT id, ts, actor, action, target, before, after FROM audit_log"
           + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC LIMIT %s")
    args.append(limit + 1)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, args)
        rows = await cur.fetchall()
    items = [AuditEntry.model_validate(r) for r in rows[:limit]]
    next_cursor = encode_cursor("audit", None, items[-1].id) if len(rows) > limit else None
    return AuditPage(items=items, next_cursor=next_cursor)
