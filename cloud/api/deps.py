"""Dependencies as `Annotated` aliases: a pooled connection, the caller's token, a role check."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from cloud.api.auth import Principal, Role, hash_token, lookup
from cloud.api.broker import Broker
from cloud.api.credentials import BrokerAuth


class TokenCache:
    """Principals of tokens seen in the last `ttl_s` seconds, so a request costs no token query (measured:
    a quarter of a get-device request's CPU). Revoking through the API forgets the token at once; a token
    revoked behind the API's back (SQL) stops working within `ttl_s`. Unknown tokens are never cached."""

    def __init__(self, ttl_s: float, max_entries: int = 10_000) -> None:
        self.ttl_s, self.max_entries = ttl_s, max_entries
        self._entries: dict[bytes, tuple[Principal, float]] = {}
        self.generation = 0  # bumped by forget(): a lookup begun before a revoke must not cache its answer

    def get(self, digest: bytes) -> Principal | None:
        hit = self._entries.get(digest)
        if hit is None:
            return None
        if hit[1] < time.monotonic():
            del self._entries[digest]
            return None
        return hit[0]

    def put(self, digest: bytes, who: Principal, generation: int) -> None:
        if self.ttl_s <= 0 or generation != self.generation:
            return
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[digest] = (who, time.monotonic() + self.ttl_s)

    def forget(self, token_id: str) -> None:
        self.generation += 1
        for digest in [d for d, (p, _) in self._entries.items() if p.token_id == token_id]:
            del self._entries[digest]


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


async def _principal(request: Request, conn: Conn,
                     creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Principal:
    """Uses the request's own connection (FastAPI resolves `Conn` once per request): taking a second one
    from the pool would let 50 concurrent requests each hold one and wait for another."""
    if creds is None or creds.scheme.lower() != "bearer":
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing API token: send 'Authorization: Bearer <token>'",
                            headers={"WWW-Authenticate": "Bearer"})
    cache: TokenCache = request.app.state.tokens
    digest = hash_token(creds.credentials)
    who = cache.get(digest)
    if who is None:
        generation = cache.generation
        who = await lookup(conn, creds.credentials)
        if who is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid or revoked API token",
                                headers={"WWW-Authenticate": "Bearer"})
        cache.put(digest, who, generation)
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
