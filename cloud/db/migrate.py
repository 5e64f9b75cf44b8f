"""Idempotent schema migrations, with a TimescaleDB path and a plain-PostgreSQL path.

Files in migrations/ are applied in order: `NNNN_name.sql` on both backends, `NNNN_name.<backend>.sql`
only on that backend. The backend is chosen once, at the first migration, and recorded in
ioc_settings so a database never switches paths under its data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import resources
from typing import Literal

import psycopg

log = logging.getLogger(__name__)

Backend = Literal["timescale", "postgres"]
MIGRATION_LOCK_ID = 0x10C_0001  # advisory lock: one migrator at a time; upkeep waits while it is held


@dataclass(frozen=True)
class Migration:
    version: str  # e.g. "0002_timeseries"
    backend: Backend | None
    sql: str


def available_migrations() -> list[Migration]:
    found = []
    for entry in resources.files("cloud.db").joinpath("migrations").iterdir():
        name = entry.name
        if not name.endswith(".sql"):
            continue
        parts = name[: -len(".sql")].split(".")
        backend = parts[1] if len(parts) > 1 else None
        if backend not in (None, "timescale", "postgres"):
            raise ValueError(f"migration {name}: unknown backend suffix {backend!r}")
        found.append(Migration(parts[0], backend, entry.read_text(encoding="utf-8")))  # type: ignore[arg-type]
    return sorted(found, key=lambda m: m.version)


PRELOAD_HINT = ("add shared_preload_libraries = 'timescaledb' to postgresql.conf and restart PostgreSQL "
                "(the local stack: `ioc stack up --backend timescale`), or choose --backend postgres")


def _preloaded(conn: psycopg.Connection) -> bool:
    """Whether the server loaded the timescaledb library at start. A role that may not read
    shared_preload_libraries still sees the settings its loader defines, which exist only once it is loaded."""
    try:
        with conn.transaction():
            row = conn.execute("SELECT current_setting('shared_preload_libraries')").fetchone()
        return "timescaledb" in [lib.strip().strip('"') for lib in (row[0] if row else "").split(",")]
    except psycopg.errors.InsufficientPrivilege:
        row = conn.execute("SELECT current_setting('timescaledb.bgw_launcher_poll_time', true)").fetchone()
        return bool(row and row[0])


def detect_backend(dsn: str, wanted: str = "auto") -> tuple[Backend, str]:
    """TimescaleDB when its extension can be created with the Timescale License, else PostgreSQL.

    Runs on a connection of its own: TimescaleDB answers CREATE EXTENSION on a server that does not preload
    it with a FATAL that closes the session, so the check never touches a connection anyone else uses, and
    a server that does not preload it is recognised before CREATE EXTENSION is tried at all."""
    if wanted == "postgres":
        return "postgres", "asked for plain PostgreSQL"

    def fallback(why: str) -> tuple[Backend, str]:
        if wanted == "timescale":
            raise RuntimeError(why)
        return "postgres", why

    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT default_version, installed_version FROM pg_available_extensions"
                           " WHERE name = 'timescaledb'").fetchone()
        if row is None:
            return fallback("timescaledb extension is not installed on this server")
        if row[1] is None and not _preloaded(conn):
            return fallback(f"timescaledb {row[0]} is installed but this server does not preload it: {PRELOAD_HINT}")
        try:
            conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        except psycopg.Error as e:
            message = e.diag.message_primary or str(e).strip()
            return fallback(f"timescaledb {row[0]} is installed but cannot be loaded ({message}): {PRELOAD_HINT}")
        lic_row = conn.execute("SELECT current_setting('timescaledb.license', true)").fetchone()
    lic = lic_row[0] if lic_row else None
    if lic != "timescale":
        return fallback(f"timescaledb license is {lic!r}: compression and continuous aggregates need the "
                        "Timescale License (timescaledb.license = 'timescale')")
    return "timescale", f"timescaledb {row[0]} with the Timescale License"


def current_backend(conn: psycopg.Connection) -> Backend | None:
    if conn.execute("SELECT to_regclass('ioc_settings')").fetchone() == (None,):
        return None
    row = conn.execute("SELECT value FROM ioc_settings WHERE key = 'timeseries_backend'").fetchone()
    return row[0] if row else None


def migrate(dsn: str, wanted: str = "auto") -> tuple[Backend, list[str]]:
    """Apply pending migrations; returns the backend and the versions applied now."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_ID,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, backend text, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            backend = current_backend(conn)
            if backend is None:
                backend, why = detect_backend(dsn, wanted)
                log.info("time-series backend: %s (%s)", backend, why)
            elif wanted not in ("auto", backend):
                raise RuntimeError(f"this database was migrated for the {backend} backend; it cannot switch to "
                                   f"{wanted} under its data (use a new database)")
            done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
            applied = []
            for m in available_migrations():
                if m.version in done or m.backend not in (None, backend):
                    continue
                with conn.transaction():
                    conn.execute(m.sql.encode())  # bytes: a migration is a script, not a typed query
                    conn.execute("INSERT INTO schema_migrations (version, backend) VALUES (%s, %s)",
                                 (m.version, backend))
                    conn.execute(
                        "INSERT INTO ioc_settings (key, value) VALUES ('timeseries_backend', %s)"
                        " ON CONFLICT (key) DO NOTHING", (backend,))
                applied.append(m.version)
                log.info("applied migration %s (%s)", m.version, m.backend or "common")
            return backend, applied
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_ID,))
