"""The local stack's own certificate authority: a CA, the broker's server certificate, and device
certificates signed from a CSR (the device keeps its private key; only the CSR leaves the box).

The broker's mutual-TLS listener takes the certificate's CN as the username (`use_identity_as_username`),
so the CN is always the device id, whatever the CSR asked for: the ACL patterns (`%u`) then hold a
certificate-authenticated device to its own topics exactly as a password-authenticated one.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from contract.topics import check_segment

CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY, CRL = "ca.crt", "ca.key", "server.crt", "server.key", "crl.pem"
# Device keys the registry signs: a weaker one would supersede the box's working certificate with one an
# attacker can forge (RSA-512 is factored in hours), and DSA or a rare curve fails in some TLS stacks.
ACCEPTED_KEYS = "EC P-256 or P-384, RSA of at least 2048 bits, or Ed25519"
_CURVES = ("secp256r1", "secp384r1")
_MIN_RSA_BITS = 2048
_HASHES = ("sha256", "sha384", "sha512")


class CsrError(ValueError):
    """The CSR cannot be signed (not PEM, bad signature, unsupported key); the message says which."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write(path: Path, data: bytes, private: bool) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def ensure(root: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> None:
    """Make the CA and the broker's certificate once; later calls keep them (devices trust this CA)."""
    root.mkdir(parents=True, exist_ok=True)
    if not (root / CA_CERT).exists():
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "IOC local stack CA")])
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(_now() - dt.timedelta(minutes=5))
                .not_valid_after(_now() + dt.timedelta(days=3650))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False,
                                             encipher_only=False, decipher_only=False), critical=True)
                .sign(key, hashes.SHA256()))
        _write(root / CA_KEY, _key_pem(key), private=True)
        _write(root / CA_CERT, cert.public_bytes(serialization.Encoding.PEM), private=False)
        (root / SERVER_CERT).unlink(missing_ok=True)  # signed by the CA it replaces
    if not (root / SERVER_CERT).exists():
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = []
        for h in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                sans.append(x509.DNSName(h))
        pem = _sign(root, key.public_key(), hosts[0], 825, ExtendedKeyUsageOID.SERVER_AUTH, sans)
        _write(root / SERVER_KEY, _key_pem(key), private=True)
        _write(root / SERVER_CERT, pem, private=False)
    if not (root / CRL).exists():
        render_crl(root, [])


def render_crl(root: Path, serials: list[int]) -> None:
    """The revoked device certificates, signed by the CA. Mosquitto 2.0.11 reads it again on SIGHUP
    (measured: a revoked certificate's next handshake fails)."""
    ca_key = serialization.load_pem_private_key((root / CA_KEY).read_bytes(), password=None)
    ca = x509.load_pem_x509_certificate((root / CA_CERT).read_bytes())
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the stack CA key is not an EC key")
    now = _now()
    b = (x509.CertificateRevocationListBuilder().issuer_name(ca.subject)
         .last_update(now - dt.timedelta(minutes=5)).next_update(now + dt.timedelta(days=3650)))
    for serial in serials:
        b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(serial)
                                      .revocation_date(now - dt.timedelta(minutes=5)).build())
    _write(root / CRL, b.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM), private=False)


def certificate_serial(pem: str) -> tuple[int, dt.datetime]:
    cert = x509.load_pem_x509_certificate(pem.encode())
    return cert.serial_number, cert.not_valid_after_utc


def _sign(root: Path, public_key: ec.EllipticCurvePublicKey | object, cn: str, days: int,
          usage: x509.ObjectIdentifier, sans: list[x509.GeneralName] | None = None) -> bytes:
    ca_key = serialization.load_pem_private_key((root / CA_KEY).read_bytes(), password=None)
    ca = x509.load_pem_x509_certificate((root / CA_CERT).read_bytes())
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the stack CA key is not an EC key")
    b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
         .issuer_name(ca.subject).public_key(public_key)  # type: ignore[arg-type]
         .serial_number(x509.random_serial_number()).not_valid_before(_now() - dt.timedelta(minutes=5))
         .not_valid_after(_now() + dt.timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return b.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def sign_device_csr(root: Path, csr_pem: str, device_id: str, days: int = 365) -> str:
    """A client certificate for this device from its CSR; the CN is set to the device id."""
    check_segment(device_id, "device id")
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
    except ValueError as e:
        raise CsrError(f"not a PEM certificate signing request: {e}") from None
    try:
        key = csr.public_key()
        digest = csr.signature_hash_algorithm  # None for Ed25519, which hashes by itself
    except UnsupportedAlgorithm as e:
        raise CsrError(f"unsupported key or signature ({e}); accepted keys: {ACCEPTED_KEYS}") from None
    _check_key(key)
    if digest is not None and digest.name not in _HASHES:
        raise CsrError(f"the CSR is signed with {digest.name.upper()}, which is refused; sign it with "
                       f"{', '.join(h.upper() for h in _HASHES)}")
    if not csr.is_signature_valid:
        raise CsrError("the CSR's signature does not match its key")
    return _sign(root, key, device_id, days, ExtendedKeyUsageOID.CLIENT_AUTH).decode()


def _check_key(key: CertificatePublicKeyTypes) -> None:
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name in _CURVES:
            return
        raise CsrError(f"unsupported key: EC curve {key.curve.name}; accepted: {ACCEPTED_KEYS}")
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size >= _MIN_RSA_BITS:
            return
        raise CsrError(f"unsupported key: RSA of {key.key_size} bits; accepted: {ACCEPTED_KEYS}")
    if isinstance(key, ed25519.Ed25519PublicKey):
        return
    raise CsrError(f"unsupported key: {type(key).__name__.removesuffix('PublicKey').lstrip('_')}; "
                   f"accepted: {ACCEPTED_KEYS}")


def listener_lines(root: Path, require_certificate: bool) -> str:
    """Lines under a `listener` for TLS with these files; mutual TLS takes the CN as the username."""
    lines = f"cafile {root / CA_CERT}\ncertfile {root / SERVER_CERT}\nkeyfile {root / SERVER_KEY}\n"
    if require_certificate:
        lines += f"require_certificate true\nuse_identity_as_username true\ncrlfile {root / CRL}\n"
    return lines
