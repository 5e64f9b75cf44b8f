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
_LOCK_ID = 0x10C_0001  # advisory lock: one migrator at a time, across ingest processes


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


def detect_backend(conn: psycopg.Connection, wanted: str = "auto") -> tuple[Backend, str]:
    """TimescaleDB when its extension can be created with the Timescale License, else PostgreSQL."""
    if wanted == "postgres":
        return "postgres", "asked for plain PostgreSQL"
    row = conn.execute("SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone()
    if row is None:
        why = "timescaledb extension is not installed on this server"
        if wanted == "timescale":
            raise RuntimeError(why)
        return "postgres", why
    try:
        with conn.transaction():
            conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    except psycopg.Error as e:
        why = (f"timescaledb is installed but cannot be loaded ({e.diag.message_primary}); "
               "add it to shared_preload_libraries")
        if wanted == "timescale":
            raise RuntimeError(why) from e
        return "postgres", why
    lic_row = conn.execute("SELECT current_setting('timescaledb.license', true)").fetchone()
    lic = lic_row[0] if lic_row else None
    if lic != "timescale":
        why = f"timescaledb license is {lic!r}: compression and continuous aggregates need the Timescale License"
        if wanted == "timescale":
            raise RuntimeError(why)
        return "postgres", why
    return "timescale", f"timescaledb {row[0]} with the Timescale License"


def current_backend(conn: psycopg.Connection) -> Backend | None:
    if conn.execute("SELECT to_regclass('ioc_settings')").fetchone() == (None,):
        return None
    row = conn.execute("SELECT value FROM ioc_settings WHERE key = 'timeseries_backend'").fetchone()
    return row[0] if row else None


def migrate(dsn: str, wanted: str = "auto") -> tuple[Backend, list[str]]:
    """Apply pending migrations; returns the backend and the versions applied now."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_ID,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, backend text, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            backend = current_backend(conn)
            if backend is None:
                backend, why = detect_backend(conn, wanted)
                log.info("time-series backend: %s (%s)", backend, why)
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
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_ID,))
