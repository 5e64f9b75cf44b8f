"""App factory and lifespan: a psycopg pool, the MQTT side, the command sweeper; errors a person reads.

Safe to run as several processes on one database and broker (`ioc api --workers N`): each has its own MQTT
client id and its own token cache (kept right by PostgreSQL's notifications); the command sweeper, the
broker-file render and the bootstrap admin token each take an advisory lock.

    uvicorn --factory cloud.api.app:app_from_env     (or `ioc api`)
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import psycopg
from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from psycopg_pool import AsyncConnectionPool

from cloud.api import commands
from cloud.api.auth import ensure_admin_token
from cloud.api.broker import Broker
from cloud.api.credentials import BrokerAuth
from cloud.api.deps import TokenCache, listen_for_token_changes
from cloud.api.models import ERRORS
from cloud.api.routes import admin, certificates, config, data, devices
from cloud.api.routes import alarms as alarm_routes
from cloud.api.routes import commands as command_routes
from cloud.api.routes import report as report_routes
from cloud.api.settings import ApiSettings

log = logging.getLogger(__name__)

DESCRIPTION = """Install, configure and repair the city's field devices.

Every route needs `Authorization: Bearer <token>`. Roles: **viewer** reads, **technician** also changes
devices, config and sends commands, **admin** also manages tokens. Errors are `{"detail": "..."}`."""


async def _sweep_forever(pool: AsyncConnectionPool, interval_s: float) -> None:
    while True:
        try:
            await commands.sweep(pool)
        except psycopg.Error as exc:
            log.warning("command sweep failed: %s", exc)
        await asyncio.sleep(interval_s)


def create_app(settings: ApiSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # No request may wait forever on the database: a statement, a lock wait and a transaction left open
        # by a cancelled request are all bounded, and end as a 503 instead of a hung client.
        options = "-c statement_timeout=20s -c lock_timeout=10s -c idle_in_transaction_session_timeout=30s"
        pool = AsyncConnectionPool(settings.dsn, min_size=settings.pool_min, max_size=settings.pool_max,
                                   kwargs={"autocommit": True, "options": options}, open=False)
        # Token lookups (cache misses) have a small pool of their own: see cloud.api.deps._principal.
        auth_pool = AsyncConnectionPool(settings.dsn, min_size=1, max_size=3,
                                        kwargs={"autocommit": True, "options": options}, open=False)
        await pool.open(wait=True, timeout=30)
        await auth_pool.open(wait=True, timeout=30)
        async with pool.connection() as conn:
            await ensure_admin_token(conn, settings.admin_token_file)
        broker = Broker(settings, partial(commands.handle_reply, pool))
        app.state.pool, app.state.auth_pool, app.state.broker = pool, auth_pool, broker
        app.state.broker_auth, app.state.broker_ca_dir = None, settings.broker_ca_dir
        if settings.broker_auth_dir is not None:
            app.state.broker_auth = BrokerAuth(settings.broker_auth_dir, settings.broker_pid_file,
                                               settings.broker_ca_dir)
            await app.state.broker_auth.apply(pool)
        tokens: TokenCache = app.state.tokens
        tasks = [asyncio.create_task(broker.run(), name="registry-mqtt"),
                 asyncio.create_task(_sweep_forever(pool, settings.sweep_interval_s), name="command-sweeper"),
                 asyncio.create_task(listen_for_token_changes(settings.dsn, tokens), name="token-changes")]
        if app.state.broker_auth is not None:  # grace expiry, and a render again after a failed one
            tasks.append(asyncio.create_task(app.state.broker_auth.expire_forever(
                pool, settings.certificate_check_interval_s), name="certificate-grace"))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(broker.connected.wait(), 10)
        with contextlib.suppress(TimeoutError):  # until then tokens are checked on every request
            await asyncio.wait_for(tokens.listening.wait(), 5)
        # What exists now (routes, models, schemas, pools: ~150,000 objects) lives as long as the process: out of
        # the collector's sight, a full collection no longer walks it (measured: GC was 8% of a request's CPU).
        gc.freeze()
        try:
            yield
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            await auth_pool.close()
            await pool.close()

    app = FastAPI(title="IOC registry API", version="1", description=DESCRIPTION, lifespan=lifespan)
    app.state.tokens = TokenCache(settings.token_cache_s)
    for r in (devices.router, config.router, command_routes.router, data.router, admin.router, certificates.router):
        app.include_router(r, responses=ERRORS)
    app.include_router(alarm_routes.router, responses=ERRORS)
    app.include_router(report_routes.router, responses=ERRORS)

    @app.get("/health", tags=["health"])
    async def health(request: Request) -> JSONResponse:
        """Readiness: really queries the database and reports the broker link (no token needed)."""
        db_ok = True
        try:
            async with request.app.state.pool.connection(timeout=2) as conn:
                await conn.execute("SELECT 1")
        except (psycopg.Error, TimeoutError):
            db_ok = False
        mqtt_ok = request.app.state.broker.connected.is_set()
        code = status.HTTP_200_OK if db_ok and mqtt_ok else status.HTTP_503_SERVICE_UNAVAILABLE
        return JSONResponse({"database": db_ok, "broker": mqtt_ok}, status_code=code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}"
                    for e in exc.errors()[:5]]
        return JSONResponse({"detail": "; ".join(problems), "errors": jsonable(exc.errors()[:20])},
                            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)

    @app.exception_handler(psycopg.DataError)
    async def _bad_value(request: Request, exc: psycopg.DataError) -> JSONResponse:
        return JSONResponse({"detail": f"a value the database cannot store: {exc}".splitlines()[0]},
                            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)

    @app.exception_handler(psycopg.OperationalError)
    async def _db_down(request: Request, exc: psycopg.OperationalError) -> JSONResponse:
        log.warning("database error: %s", exc)
        return JSONResponse({"detail": "the database is unavailable; try again shortly"},
                            status_code=status.HTTP_503_SERVICE_UNAVAILABLE)

    return app


def jsonable(errors: object) -> object:
    from fastapi.encoders import jsonable_encoder

    return jsonable_encoder(errors, custom_encoder={Exception: str})


def app_from_env() -> FastAPI:
    return create_app(ApiSettings())  # type: ignore[call-arg]  # dsn comes from IOC_API_DSN
