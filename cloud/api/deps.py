"""Dependencies as `Annotated` aliases: a pooled connection, the caller's token, a role check."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Annotated, Any

import psycopg
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from cloud.api.auth import Principal, Role, hash_token, lookup
from cloud.api.broker import Broker
from cloud.api.credentials import BrokerAuth

log = logging.getLogger(__name__)


class TokenCache:
    """Principals of tokens seen in the last `ttl_s` seconds, so a request costs no token query (measured:
    a quarter of a get-device request's CPU). Unknown tokens are never cached. Every API process has its
    own: a change to a token row (revoke, through the API or in SQL) is announced by PostgreSQL (migration
    0090) and `listen_for_token_changes` forgets it in each process at once; while that listener is not
    connected nothing is cached, so a revoke can never be missed."""

    def __init__(self, ttl_s: float, max_entries: int = 10_000) -> None:
        self.ttl_s, self.max_entries = ttl_s, max_entries
        self._entries: dict[bytes, tuple[Principal, float]] = {}
        self.generation = 0  # bumped by forget(): a lookup begun before a revoke must not cache its answer
        self.listening = asyncio.Event()  # set by listen_for_token_changes while it hears every change

    def get(self, digest: bytes) -> Principal | None:
        hit = self._entries.get(digest)
        if hit is None:
            return None
        if hit[1] < time.monotonic():
            del self._entries[digest]
            return None
        return hit[0]

    def put(self, digest: bytes, who: Principal, generation: int) -> None:
        if self.ttl_s <= 0 or not self.listening.is_set() or generation != self.generation:
            return
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[digest] = (who, time.monotonic() + self.ttl_s)

    def forget(self, token_id: str) -> None:
        self.generation += 1
        for digest in [d for d, (p, _) in self._entries.items() if p.token_id == token_id]:
            del self._entries[digest]

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()


TOKENS_CHANNEL = "api_tokens_changed"  # NOTIFY'd by the trigger of migration 0090, payload the token id


async def listen_for_token_changes(dsn: str, cache: TokenCache) -> None:
    """Forget each changed token as PostgreSQL announces it; reconnect until cancelled. Nothing is cached
    while not listening, and everything cached before a (re)connect is dropped: a change may have been missed."""
    attempt = 0
    while True:
        try:
            async with await AsyncConnection.connect(dsn, autocommit=True) as conn:
                await conn.execute(f"LISTEN {TOKENS_CHANNEL}")
                cache.clear()
                cache.listening.set()
                attempt = 0
                while True:  # psycopg keeps what arrives between two calls of notifies() for the next one
                    async for note in conn.notifies(timeout=30):
                        cache.forget(note.payload)
                    await conn.execute("SELECT 1")  # a silent link fails here, and we reconnect
        except psycopg.Error as exc:
            log.warning("listening for API token changes: %s", exc)
        finally:
            cache.listening.clear()
            cache.clear()
        attempt += 1
        await asyncio.sleep(min(30.0, 0.5 * 2 ** min(attempt, 6)))


_bearer = HTTPBearer(auto_error=False, description="an API token: `Authorization: Bearer ioc_...`")


async def _conn(request: Request) -> AsyncIterator[AsyncConnection]:
    """One connection per request; its transaction commits when the route returns normally."""
    pool: AsyncConnectionPool = request.app.state.pool
    async with pool.connection() as conn:
        yield conn


Conn = Annotated[AsyncConnection, Depends(_conn)]


# The plain getters below are `async def` on purpose: FastAPI runs a sync dependency in a worker thread,
# and that hop (a thread wake-up and a GIL hand-over per request) was 40% of a get-device request's CPU.
async def _broker(request: Request) -> Broker:
    return request.app.state.broker


BrokerDep = Annotated[Broker, Depends(_broker)]


async def _pool(request: Request) -> AsyncConnectionPool:
    pool: AsyncConnectionPool = request.app.state.pool
    return pool


Pool = Annotated[AsyncConnectionPool, Depends(_pool)]


async def _broker_auth(request: Request) -> BrokerAuth | None:
    auth: BrokerAuth | None = request.app.state.broker_auth
    return auth


BrokerAuthDep = Annotated[BrokerAuth | None, Depends(_broker_auth)]


async def _principal(request: Request,
                     creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Principal:
    """A token not in the cache is looked up on a pool of its own (`app.state.auth_pool`): a request may
    already hold a connection of the main pool, and taking a second one there would let 50 concurrent
    requests each hold one and wait for another. A lookup holds nothing while it waits, so no cycle."""
    if creds is None or creds.scheme.lower() != "bearer":
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing API token: send 'Authorization: Bearer <token>'",
                            headers={"WWW-Authenticate": "Bearer"})
    cache: TokenCache = request.app.state.tokens
    digest = hash_token(creds.credentials)
    who = cache.get(digest)
    if who is None:
        generation = cache.generation
        auth_pool: AsyncConnectionPool = request.app.state.auth_pool
        async with auth_pool.connection() as conn:
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
