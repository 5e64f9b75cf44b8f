"""Broker credentials from the registry: issued when a device is created, replaced on rotate, revoked on
retire; after each change the password and ACL files are rendered from the database and Mosquitto reloads
them (SIGHUP: no restart, and a revoked password login's open connection is dropped; a certificate connection stays
until its next TLS handshake, when the CRL is checked).

Off unless `ApiSettings.broker_auth_dir` is set (`ioc api` sets it for the local stack, whose broker
requires a login); the stack's service logins in that folder are kept in every render. Rotation replaces
the password at once: with the username pinned to the device id there is one password per device, so a
grace period for the old one is not possible on Mosquitto 2.0's password file (docs/security.md).

Certificates do rotate with a grace period: a new certificate leaves the device's earlier ones valid until
`grace_until`; every render first revokes those whose grace has passed, and each API process checks for
them periodically (`expire_forever`), so the CRL follows without any request. That check also renders again
after a render of this process failed (a full disk, say): the change is committed, and it reaches the broker
without the caller having to repeat the request.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import cast

import psycopg
from fastapi import HTTPException, status
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from cloud.api import audit
from cloud.api.auth import Principal, Role
from ioc.stack import broker_auth as ba
from ioc.stack import tls

log = logging.getLogger(__name__)
TRAILING_RELOAD_S = 1.0
RENDER_LOCK_ID = 0x10C_0091  # advisory lock: one API process at a time renders the broker's files
GRACE_EXPIRY = Principal(token_id="grace-expiry", name="registry", role=Role.admin)  # the audit log's actor
_DUE = "revoked_at IS NULL AND grace_until <= now()"  # superseded certificates whose grace has passed


async def audit_revoked(conn: AsyncConnection, who: Principal, device_id: str, serials: list[int],
                        reason: str) -> None:
    await audit.record_many(conn, who, "certificate.revoke",
                            [(device_id, None, {"serial": str(s), "reason": reason}) for s in serials])


class BrokerAuth:
    def __init__(self, auth_dir: Path, pid_file: Path | None, ca_dir: Path | None = None) -> None:
        """ca_dir: the CA that signs device certificates; its CRL is rendered with the password file."""
        self.auth_dir, self.pid_file, self.ca_dir = auth_dir, pid_file, ca_dir
        self._lock = asyncio.Lock()
        self._trailing: asyncio.TimerHandle | None = None
        self._stale = False  # this process's last render failed: the files may lack a committed change

    async def issue(self, conn: AsyncConnection, device_ids: list[str]) -> dict[str, str]:
        """New passwords (replacing any) for these devices, in the caller's transaction; returns them once."""
        passwords = {d: ba.new_password() for d in device_ids}
        hashes = await asyncio.to_thread(lambda: [(d, ba.hash_password(p)) for d, p in passwords.items()])
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO broker_credentials (username, device_id, role, password_hash)"
                " VALUES (%s, %s, 'device', %s) ON CONFLICT (username) DO UPDATE SET"
                " password_hash = EXCLUDED.password_hash, created_at = now(), revoked_at = NULL",
                [(d, d, h) for d, h in hashes])
        return passwords

    async def revoke(self, conn: AsyncConnection, who: Principal, device_id: str) -> None:
        """The device's password and certificates, in the caller's transaction (retire); each certificate
        revoked is audited."""
        await conn.execute("UPDATE broker_credentials SET revoked_at = now() WHERE device_id = %s"
                           " AND revoked_at IS NULL", (device_id,))
        cur = await conn.execute("UPDATE device_certificates SET revoked_at = now() WHERE device_id = %s"
                                 " AND revoked_at IS NULL RETURNING serial", (device_id,))
        await audit_revoked(conn, who, device_id, [int(r[0]) for r in await cur.fetchall()], "device retired")

    async def supersede_certificates(self, conn: AsyncConnection, who: Principal, device_id: str, keep: int,
                                     grace_s: int) -> list[int]:
        """The device's other valid certificates stay valid `grace_s` more seconds (an earlier, shorter grace
        is kept), or are revoked now (and audited) with 0; in the caller's transaction. Returns their serials."""
        if grace_s == 0:
            cur = await conn.execute("UPDATE device_certificates SET revoked_at = now() WHERE device_id = %s"
                                     " AND serial <> %s AND revoked_at IS NULL RETURNING serial", (device_id, keep))
            revoked = sorted(int(r[0]) for r in await cur.fetchall())
            await audit_revoked(conn, who, device_id, revoked, f"superseded by {keep} with grace_s 0")
            return revoked
        cur = await conn.execute(
            "UPDATE device_certificates SET grace_until = LEAST(COALESCE(grace_until, 'infinity'),"
            " now() + %s * interval '1 second') WHERE device_id = %s AND serial <> %s AND revoked_at IS NULL"
            " RETURNING serial", (grace_s, device_id, keep))
        return sorted(int(r[0]) for r in await cur.fetchall())

    async def expire_forever(self, pool: AsyncConnectionPool, interval_s: float) -> None:
        """Put certificates on the CRL once their grace has passed, in every API process: the check is one
        indexed query; the render's advisory lock lets one process revoke each and the others find none.
        After a failed render of this process, render again until one succeeds."""
        while True:
            try:
                async with pool.connection() as conn:
                    cur = await conn.execute(f"SELECT EXISTS (SELECT 1 FROM device_certificates WHERE {_DUE})")
                    row = await cur.fetchone()
                if self._stale:
                    await self.apply(pool)
                elif row is not None and row[0]:
                    await self.apply(pool, only_if_expired=True)
            except (psycopg.Error, OSError, ValueError) as e:  # the next check retries; nothing was revoked
                log.warning("certificate grace check failed: %s", e)
            await asyncio.sleep(interval_s)

    async def apply(self, pool: AsyncConnectionPool, *, only_if_expired: bool = False) -> None:
        """Render both files from what is committed now and make the broker reload them. Serialised within
        this process and, by an advisory lock held until the files are written, across API processes, so the
        last render always includes every change committed before it started. Certificates whose grace has
        passed are revoked (and audited) in the same transaction, so a failed render revokes nothing.
        only_if_expired: render only when that revoked any (the periodic check)."""
        async with self._lock:
            try:
                rendered = await self._render(pool, only_if_expired)
            except BaseException:
                self._stale = True
                raise
            if rendered:
                self._stale = False

    async def _render(self, pool: AsyncConnectionPool, only_if_expired: bool) -> bool:
        async with pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (RENDER_LOCK_ID,))
            cur = await conn.execute(f"UPDATE device_certificates SET revoked_at = now() WHERE {_DUE}"
                                     " RETURNING device_id, serial, grace_until")
            expired = await cur.fetchall()
            await audit.record_many(conn, GRACE_EXPIRY, "certificate.revoke", [
                (d, None, {"serial": str(s), "reason": "grace period over", "grace_until": g.isoformat()})
                for d, s, g in expired])
            if only_if_expired and not expired:
                return False
            cur = await conn.execute("SELECT username, device_id, role, password_hash FROM broker_credentials"
                                     " WHERE revoked_at IS NULL ORDER BY username")
            rows = await cur.fetchall()
            devices = [ba.DeviceGrant(u, h, d, "") for u, d, role, h in rows if role == "device"]
            services = [ba.ServiceGrant(u, h, cast(ba.ServiceRole, role)) for u, d, role, h in rows if role != "device"]
            # The stack's own services (ingest, the registry itself, ...) live in its folder, not the database.
            taken = {g.username for g in services} | {g.username for g in devices}
            stack_services = await asyncio.to_thread(ba.service_grants, self.auth_dir)
            services += [g for g in stack_services if g.username not in taken]
            await asyncio.to_thread(ba.install, self.auth_dir, devices, services)
            if self.ca_dir is not None:
                cur = await conn.execute("SELECT serial FROM device_certificates WHERE revoked_at IS NOT NULL"
                                         " AND not_after > now() ORDER BY serial")
                serials = [int(r[0]) for r in await cur.fetchall()]
                await asyncio.to_thread(tls.render_crl, self.ca_dir, serials)
            pid = self._broker_pid()
            if pid is not None:
                ba.reload(pid)
                self._reload_again_later()
            else:
                log.warning("broker pid unknown (%s): credential files written, broker not reloaded", self.pid_file)
        return True

    async def apply_committed(self, pool: AsyncConnectionPool) -> None:
        """apply after a route committed its change: a failed render answers 503 saying so (not a bare 500),
        and this process's periodic check renders again until one succeeds."""
        try:
            await self.apply(pool)
        except (psycopg.Error, OSError, ValueError) as e:
            log.warning("broker files not rendered, retrying in the periodic check: %s", e)
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, (
                "the change is recorded, but the broker's credential files could not be written now; the "
                "registry retries by itself and the change reaches the broker then (or repeat the request)")) from None

    def _reload_again_later(self) -> None:
        """Mosquitto clears its reload flag after a reload: a SIGHUP that lands while it re-reads the files is
        lost, and a change written meanwhile would wait for the next one (seen: a rotated-out password still
        accepted 30 s later). One trailing reload, a moment after the last change, closes that gap."""
        if self._trailing is not None:
            self._trailing.cancel()
        self._trailing = asyncio.get_running_loop().call_later(TRAILING_RELOAD_S, self._reload_now)

    def _reload_now(self) -> None:
        self._trailing = None
        pid = self._broker_pid()
        if pid is not None:
            try:
                ba.reload(pid)
            except OSError as e:  # the broker went away meanwhile: the next change reloads it
                log.warning("trailing broker reload failed: %s", e)

    def _broker_pid(self) -> int | None:
        if self.pid_file is None or not self.pid_file.exists():
            return None
        text = self.pid_file.read_text().strip()
        return int(text) if text.isdigit() else None
