"""Dependencies as `Annotated` aliases: a pooled connection, the caller's token, a role check."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from cloud.api.auth import Principal, Role, lookup
from cloud.api.broker import Broker
from cloud.api.credentials import BrokerAuth

_bearer = HTTPBearer(auto_error=False, description="an API token: `Authorization: Bearer ioc_...`")


async def _conn(request: Request) -> AsyncIterator[AsyncConnection]:
    """One connection per request; its transaction commits when the route returns normally."""
    pool: AsyncConnectionPool = request.app.state.pool
    async with pool.connection() as conn:
        yield conn


Conn = Annotated[AsyncConnection, Depends(_conn)]


def _broker(request: Request) -> Broker:
    return request.app.state.broker


BrokerDep = Annotated[Broker, Depends(_broker)]


def _pool(request: Request) -> AsyncConnectionPool:
    pool: AsyncConnectionPool = request.app.state.pool
    return pool


Pool = Annotated[AsyncConnectionPool, Depends(_pool)]


def _broker_auth(request: Request) -> BrokerAuth | None:
    auth: BrokerAuth | None = request.app.state.broker_auth
    return auth


BrokerAuthDep = Annotated[BrokerAuth | None, Depends(_broker_auth)]


async def _principal(conn: Conn,
                     creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Principal:
    """Uses the request's own connection (FastAPI resolves `Conn` once per request): taking a second one
    from the pool would let 50 concurrent requests each hold one and wait for another."""
    if creds is None or creds.scheme.lower() != "bearer":
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing API token: send 'Authorization: Bearer <token>'",
                            headers={"WWW-Authenticate": "Bearer"})
    who = await lookup(conn, creds.credentials)
    if who is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid or revoked API token",
                            headers={"WWW-Authenticate": "Bearer"})
    return who


def require(role: Role) -> Callable[..., Coroutine[Any, Any, Principal]]:
    async def check(who: Annotated[Principal, Depends(_principal)]) -> Principal:
        if who.role < role:
            raise HTTPException(status.HTTP_403_FORBIDDEN,
                                f"this needs the {role.name} role; token {who.token_id!r} has {who.role.name}")
        return who

    return check


Viewer = Annotated[Principal, Depends(require(Role.viewer))]
Technician = Annotated[Principal, Depends(require(Role.technician))]
Admin = Annotated[Principal, Depends(require(Role.admin))]
