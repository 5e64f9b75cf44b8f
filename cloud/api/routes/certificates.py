"""Device certificates for mutual TLS: the registry signs a CSR with the broker's CA. The private key
never leaves the box; the certificate's CN is the device id, which the broker's mutual-TLS listener takes
as the username (so the device's ACL applies as for a password login).

Rotation: signing a new certificate leaves the device's earlier ones valid for `grace_s` (default 24 h),
so a box keeps connecting until it has installed the new one; then the registry puts them on the CRL and
reloads the broker by itself (cloud.api.credentials). A certificate can also be revoked at once."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Request, status
from fastapi import Path as PathParam
from psycopg.rows import dict_row
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from cloud.api import audit
from cloud.api.deps import BrokerAuthDep, Conn, Pool, Technician, Viewer
from cloud.api.routes.devices import load_active_device, load_device, refuse_service_login
from ioc.stack import tls

router = APIRouter(prefix="/devices", tags=["credentials"])
DEFAULT_GRACE_S, MAX_GRACE_S = 86_400, 7 * 86_400


class CertificateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"csr": "-----BEGIN CERTIFICATE REQUEST-----\n...\n-----END CERTIFICATE REQUEST-----\n"},
        {"csr": "-----BEGIN CERTIFICATE REQUEST-----\n...\n-----END CERTIFICATE REQUEST-----\n",
         "days": 365, "grace_s": 3600}]})
    csr: str = Field(min_length=1, max_length=16_384, description="PEM certificate signing request from the box")
    days: int = Field(default=365, ge=1, le=825, description="validity")
    grace_s: StrictInt = Field(default=DEFAULT_GRACE_S, ge=0, le=MAX_GRACE_S, description=(
        "how long the device's earlier certificates stay valid (at most 7 days; 0 revokes them now); an "
        "earlier rotation's shorter grace is kept"))


CertificateStatus = Literal["valid", "grace", "revoked", "expired"]


class CertificatePublic(BaseModel):
    serial: str = Field(description="X.509 serial number, decimal")
    device_id: str
    issued_at: datetime
    not_after: datetime
    grace_until: datetime | None = Field(description="superseded: valid until then, then revoked")
    revoked_at: datetime | None = Field(description="on the broker's CRL since then")
    status: CertificateStatus


class CertificateIssued(BaseModel):
    device_id: str
    serial: str = Field(description="the new certificate's serial, decimal")
    certificate: str = Field(description="PEM client certificate, CN = device id")
    ca: str = Field(description="PEM CA certificate the broker presents (the box's `tls.ca_file`)")
    superseded: list[CertificatePublic] = Field(
        description="the device's earlier certificates: in their grace period, or revoked now with grace_s 0")


_SELECT = ("SELECT serial, device_id, issued_at, not_after, grace_until, revoked_at, CASE"
           " WHEN revoked_at IS NOT NULL THEN 'revoked' WHEN not_after <= now() THEN 'expired'"
           " WHEN grace_until IS NOT NULL THEN 'grace' ELSE 'valid' END AS status FROM device_certificates")


async def _certificates(conn: Conn, device_id: str, serials: list[int] | None = None) -> list[CertificatePublic]:
    where, args = " WHERE device_id = %s", [device_id]
    if serials is not None:
        where += " AND serial = ANY(%s::numeric[])"
        args.append(serials)  # type: ignore[arg-type]
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_SELECT + where + " ORDER BY issued_at, serial", args)
        rows: list[dict[str, Any]] = await cur.fetchall()
    return [CertificatePublic.model_validate({**r, "serial": str(r["serial"])}) for r in rows]


def _ca_dir(request: Request) -> Path:
    ca_dir: Path | None = request.app.state.broker_ca_dir
    if ca_dir is None:
        raise HTTPException(status.HTTP_409_CONFLICT, "this registry does not sign device certificates")
    return ca_dir


@router.post("/{device_id}/certificate", response_model=CertificateIssued, status_code=status.HTTP_201_CREATED)
async def sign_certificate(conn: Conn, who: Technician, request: Request, pool: Pool, broker_auth: BrokerAuthDep,
                           device_id: str, body: CertificateRequest) -> CertificateIssued:
    """Sign the box's CSR for mutual TLS; whatever subject the CSR asks for, the CN is the device id. The
    device's earlier certificates stay valid for `grace_s`, then go on the broker's CRL."""
    ca_dir = _ca_dir(request)
    refuse_service_login(device_id)
    async with conn.transaction():
        await load_active_device(conn, device_id, for_update=True)
        try:
            cert = await asyncio.to_thread(tls.sign_device_csr, ca_dir, body.csr, device_id, body.days)
        except tls.CsrError as e:
            raise HTTPException(422, str(e)) from None
        serial, not_after = tls.certificate_serial(cert)  # retiring the device puts it on the broker's CRL
        await conn.execute("INSERT INTO device_certificates (serial, device_id, not_after) VALUES (%s, %s, %s)",
                           (serial, device_id, not_after))
        superseded = []
        if broker_auth is not None:  # without it no CRL is rendered: earlier certificates cannot be revoked
            old = await broker_auth.supersede_certificates(conn, who, device_id, serial, body.grace_s)
            superseded = await _certificates(conn, device_id, old)
        await audit.record(conn, who, "certificate.sign", device_id, None,
                           {"cn": device_id, "days": body.days, "serial": str(serial), "grace_s": body.grace_s,
                            "superseded": [c.model_dump(mode="json", include={"serial", "grace_until", "status"})
                                           for c in superseded]})
    if broker_auth is not None and body.grace_s == 0 and superseded:
        await broker_auth.apply_committed(pool)
    return CertificateIssued(device_id=device_id, serial=str(serial), certificate=cert,
                             ca=(ca_dir / tls.CA_CERT).read_text(), superseded=superseded)


@router.get("/{device_id}/certificates", response_model=list[CertificatePublic])
async def list_certificates(conn: Conn, who: Viewer, device_id: str) -> list[CertificatePublic]:
    """Every certificate the registry signed for this device, oldest first, with its status."""
    await load_device(conn, device_id)
    return await _certificates(conn, device_id)


Serial = Annotated[str, PathParam(pattern=r"^[0-9]{1,49}$", description="X.509 serial number, decimal")]


@router.delete("/{device_id}/certificates/{serial}", response_model=CertificatePublic)
async def revoke_certificate(conn: Conn, who: Technician, request: Request, pool: Pool,
                             broker_auth: BrokerAuthDep, device_id: str, serial: Serial) -> CertificatePublic:
    """Revoke now, grace or not: the certificate goes on the broker's CRL and its next handshake fails (a
    connection already open stays until it reconnects). Revoking twice is harmless, and renders the CRL again."""
    _ca_dir(request)
    if broker_auth is None:
        raise HTTPException(status.HTTP_409_CONFLICT, "this registry renders no CRL (no broker_auth_dir)")
    async with conn.transaction():
        await load_device(conn, device_id)
        found = await _certificates(conn, device_id, [int(serial)])
        if not found:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"device {device_id!r} has no certificate {serial}")
        before = found[0]
        cur = await conn.execute("UPDATE device_certificates SET revoked_at = now() WHERE serial = %s"
                                 " AND revoked_at IS NULL RETURNING serial", (int(serial),))
        revoked = await cur.fetchone() is not None  # not when revoked already (by grace expiry meanwhile, say)
        after = (await _certificates(conn, device_id, [int(serial)]))[0]
        if revoked:
            await audit.record(conn, who, "certificate.revoke", device_id, before.model_dump(mode="json"),
                               after.model_dump(mode="json"))
    await broker_auth.apply_committed(pool)  # again when revoked already: an earlier render may have failed
    return after
