"""Small process helpers for the local stack: free ports, readiness, running as a service user."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path


class StackError(RuntimeError):
    """A local-stack step failed; the message says how to fix it."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_port(host: str, port: int, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(host, port):
            return
        time.sleep(0.05)
    raise StackError(f"{what} did not open {host}:{port} within {timeout:.0f}s")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_pid(path: Path, program: str) -> int | None:
    """The pid in a pid file, if that process is alive and really runs `program` (a stale file after a
    reboot may name an unrelated process, which we must never signal)."""
    try:
        pid = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return pid if program.encode() in cmdline and pid_alive(pid) else None


def service_user() -> str | None:
    """PostgreSQL refuses to run as root: when we are root, run it as the Debian 'postgres' user."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise StackError(
            "running as root but there is no 'postgres' user: apt-get install -y postgresql"
        ) from None
    return "postgres"


def as_user(cmd: list[str], user: str | None) -> list[str]:
    return ["runuser", "-u", user, "--", *cmd] if user else cmd


def chown_tree(path: Path, user: str | None) -> None:
    if user:
        for p in [path, *path.rglob("*")]:
            shutil.chown(p, user, user)


def run(cmd: list[str], what: str, timeout: float = 120) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise StackError(f"{what} failed ({' '.join(cmd)}):\n{proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout
