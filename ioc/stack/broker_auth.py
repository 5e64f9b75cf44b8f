"""Per-device broker identity for Mosquitto 2.0: a password file and an ACL file generated from the
registry, applied with SIGHUP (no restart, sessions kept).

Why files and not the dynamic-security plugin: Mosquitto 2.0's dynsec has no `%u`/`%c` in its ACLs, so
every device needs its own role, and it rewrites its whole JSON file on every change. Why `pattern`
rules (username = device id) and not a `user` block per device, measured with 10,000 devices on this
machine (Mosquitto 2.0.11, load average 13): per-user blocks take 21 s to load at start and at every
SIGHUP (the loader is quadratic in users); the same password file with pattern rules loads in 0.25 s.
(Re-measured 2026-12-02 by bench/broker_grace.py, load average 5-10: a reload of 10,000 pattern devices
plus 10,000 `user` blocks takes 2.6 s against 1.0 s without, plus 20,000 blocks 6.0 s: superlinear, less
than first measured.)
The price: a pattern pins the device id, not the site, so a device publishing under its own id at
another site passes the broker; ingest refuses that into dead letters (the registry knows its site).
Hashes are Mosquitto's own `$7$` format (PBKDF2-SHA512, 12-byte salt), checked against
`mosquitto_passwd`; only hashes are stored, the password is shown once.

The local stack switches this on (`ioc/stack/mosquitto.py`): it generates one password per service
(`services.json` beside the two files, mode 0600, never printed) and every client it starts uses them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import signal
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

from contract.topics import check_segment

ITERATIONS = 101  # mosquitto_passwd's default in 2.0
PASSWORD_FILE, ACL_FILE = "passwords", "acl"
SERVICES_FILE = "services.json"
ServiceRole = Literal["ingest", "registry", "alerts", "fleet", "admin"]
# The stack's own service accounts and their roles. `fleet` publishes as any device: the simulator and the
# benchmarks' load generators speak for thousands of devices through one connection each.
STACK_SERVICES: dict[str, ServiceRole] = {"ingest": "ingest", "registry": "registry", "alerts": "alerts",
                                          "simulator": "fleet", "bench": "fleet", "admin": "admin"}


@dataclass(frozen=True, slots=True)
class DeviceGrant:
    username: str
    password_hash: str
    device_id: str
    site: str


@dataclass(frozen=True, slots=True)
class ServiceGrant:
    username: str
    password_hash: str
    role: ServiceRole


def new_password() -> str:
    return secrets.token_urlsafe(24)


def hash_password(password: str, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


# What the issue allows a device, pinned to its own id (its username).
DEVICE_PATTERNS = ["pattern write tlm/v1/+/%u/#", "pattern write evt/v1/+/%u/#",
                   "pattern readwrite state/v1/%u",  # retained birth, and the last will the broker publishes
                   "pattern write cfg/v1/%u/reported", "pattern read cfg/v1/%u/desired",
                   "pattern read cmd/v1/%u/#", "pattern write rsp/v1/%u/#",
                   "pattern read ack/v1/%u"]  # ingest's watermark, for this device alone


SERVICE_ACL: dict[ServiceRole, list[str]] = {
    "ingest": ["topic read tlm/v1/#", "topic read evt/v1/#", "topic read state/v1/#", "topic read cfg/v1/+/reported",
               "topic write ack/v1/+"],  # the watermark: the one thing ingest writes
    "registry": ["topic write cfg/v1/+/desired", "topic write cmd/v1/#", "topic read rsp/v1/#"],
    "alerts": ["topic write alr/v1/#"],
    "fleet": ["topic write tlm/v1/#", "topic write evt/v1/#", "topic readwrite state/v1/#",
              "topic write cfg/v1/+/reported", "topic read cfg/v1/+/desired", "topic read cmd/v1/#",
              "topic write rsp/v1/#", "topic read ack/v1/+"],
    "admin": ["topic readwrite #", "topic read $SYS/#"],
}


@dataclass(frozen=True, slots=True)
class ServiceLogin:
    """A stack service's own login: the password lives only in the stack folder (0600)."""
    username: str
    password: str
    role: ServiceRole

    def __repr__(self) -> str:  # never in a log or a traceback
        return f"ServiceLogin({self.username!r}, role={self.role!r})"


def ensure_services(root: Path) -> dict[str, ServiceLogin]:
    """The stack's service logins, generated on first use and kept (clients keep working across restarts)."""
    path = root / SERVICES_FILE
    saved: dict[str, dict[str, str]] = json.loads(path.read_text()) if path.exists() else {}
    changed = False
    for name, role in STACK_SERVICES.items():
        if name not in saved:
            pw = new_password()
            saved[name] = {"password": pw, "hash": hash_password(pw), "role": role}
            changed = True
    if changed:
        root.mkdir(parents=True, exist_ok=True)
        _write_private(path, json.dumps(saved, indent=2))
    return {n: ServiceLogin(n, v["password"], cast(ServiceRole, v["role"])) for n, v in saved.items()}


# Where a deployment (docker-compose.yml) gives each service's password; `ioc stack broker-logins` hashes them.
PASSWORD_ENV = {"ingest": "IOC_BROKER_PASSWORD_INGEST", "registry": "IOC_BROKER_PASSWORD_REGISTRY",
                "alerts": "IOC_BROKER_PASSWORD_ALERTS", "simulator": "IOC_BROKER_PASSWORD_SIMULATOR",
                "admin": "IOC_BROKER_PASSWORD_ADMIN"}


def install_service_logins(root: Path, passwords: dict[str, str]) -> list[str]:
    """For a broker the stack does not run: services.json with hashes only (no password kept), and the
    password and ACL files when there are none yet (the registry adds devices later). Returns the names."""
    unknown = set(passwords) - set(STACK_SERVICES)
    if unknown:
        raise ValueError(f"unknown service login(s) {sorted(unknown)}: choose from {sorted(STACK_SERVICES)}")
    saved = {n: {"hash": hash_password(pw), "role": STACK_SERVICES[n]} for n, pw in passwords.items() if pw}
    root.mkdir(parents=True, exist_ok=True)
    _write_private(root / SERVICES_FILE, json.dumps(saved, indent=2))
    grants = service_grants(root)
    if not (root / PASSWORD_FILE).exists():
        install(root, [], grants)
    return sorted(saved)


def service_grants(root: Path) -> list[ServiceGrant]:
    """What the password and ACL files need of the stack's services (hashes only); empty without the file."""
    path = root / SERVICES_FILE
    if not path.exists():
        return []
    saved: dict[str, dict[str, str]] = json.loads(path.read_text())
    return [ServiceGrant(n, v["hash"], cast(ServiceRole, v["role"])) for n, v in sorted(saved.items())]


def render_passwords(devices: Iterable[DeviceGrant], services: Iterable[ServiceGrant]) -> str:
    for g in devices:
        if g.username != g.device_id:
            raise ValueError(f"device {g.device_id}: the username must be the device id (ACL patterns use %u)")
        check_segment(g.device_id, "device id")
    grants: list[DeviceGrant | ServiceGrant] = [*services, *devices]
    lines = [f"{g.username}:{g.password_hash}" for g in grants]
    return "\n".join(lines) + "\n"


def render_acl(services: Iterable[ServiceGrant]) -> str:
    """Nothing before the first `user` line, so an anonymous client (were one let in) may do nothing;
    the device patterns apply to every authenticated client, keyed by its username."""
    out = ["# Generated from the registry by ioc.stack.broker_auth; edits are overwritten.", *DEVICE_PATTERNS]
    for svc in services:
        out += ["", f"user {svc.username}", *SERVICE_ACL[svc.role]]
    return "\n".join(out) + "\n"


def _write_private(path: Path, text: str) -> None:
    """Write beside, then rename: the broker never reads a half-written file."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def install(root: Path, devices: Iterable[DeviceGrant], services: Iterable[ServiceGrant]) -> None:
    devices, services = list(devices), list(services)  # both files from the same snapshot
    root.mkdir(parents=True, exist_ok=True)
    _write_private(root / PASSWORD_FILE, render_passwords(devices, services))
    _write_private(root / ACL_FILE, render_acl(services))


def reload(pid: int) -> None:
    """Mosquitto re-reads both files on SIGHUP, keeping connections and sessions."""
    os.kill(pid, signal.SIGHUP)


def config_lines(root: Path) -> str:
    """The lines a listener block needs to require these credentials."""
    return (f"allow_anonymous false\npassword_file {root / PASSWORD_FILE}\nacl_file {root / ACL_FILE}\n")
