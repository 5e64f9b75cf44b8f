"""Device certificates for mutual TLS: the registry signs a CSR with the broker's CA. The private key
never leaves the box; the certificate's CN is the device id, which the broker's mutual-TLS listener takes
as the username (so the device's ACL applies as for a password login)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, ConfigDict, Field

from cloud.api import audit
from cloud.api.deps import Conn, Technician
from cloud.api.routes.devices import load_active_device
from ioc.stack import tls

router = APIRouter(prefix="/devices", tags=["credentials"])


class CertificateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    csr: str = Field(min_length=1, max_length=16_384, description="PEM certificate signing request from the box",
                     examples=["-----BEGIN CERTIFICATE REQUEST-----\n...\n-----END CERTIFICATE REQUEST-----\n"])
    days: int = Field(default=365, ge=1, le=825, description="validity")


class CertificateIssued(BaseModel):
    device_id: str
    certificate: str = Field(description="PEM client certificate, CN = device id")
    ca: str = Field(description="PEM CA certificate the broker presents (the box's `tls.ca_file`)")


@router.post("/{device_id}/certificate", response_model=CertificateIssued, status_code=status.HTTP_201_CREATED)
async def sign_certificate(conn: Conn, who: Technician, request: Request, device_id: str,
                           body: CertificateRequest) -> CertificateIssued:
    """Sign the box's CSR for mutual TLS; whatever subject the CSR asks for, the CN is the device id."""
    ca_dir = request.app.state.broker_ca_dir
    if ca_dir is None:
        raise HTTPException(status.HTTP_409_CONFLICT, "this registry does not sign device certificates")
    async with conn.transaction():
        await load_active_device(conn, device_id)
        try:
            cert = await asyncio.to_thread(tls.sign_device_csr, ca_dir, body.csr, device_id, body.days)
        except tls.CsrError as e:
            raise HTTPException(422, str(e)) from None
        serial, not_after = tls.certificate_serial(cert)  # retiring the device puts it on the broker's CRL
        await conn.execute("INSERT INTO device_certificates (serial, device_id, not_after) VALUES (%s, %s, %s)",
                           (serial, device_id, not_after))
        await audit.record(conn, who, "certificate.sign", device_id, None,
                           {"cn": device_id, "days": body.days, "serial": str(serial)})
    return CertificateIssued(device_id=device_id, certificate=cert, ca=(ca_dir / tls.CA_CERT).read_text())
