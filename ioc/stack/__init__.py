"""The local stack: a real Mosquitto and a real PostgreSQL as ordinary processes on loopback.

State (ports, password, paths) lives in `<dir>/stack.json` so every `ioc` command finds the same
servers. Used by `ioc stack`, the demo and the test suite alike.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ioc.stack.mosquitto import Mosquitto
from ioc.stack.mosquitto import find_binary as find_mosquitto
from ioc.stack.postgres import TIMESCALE_HINT, Postgres, timescale_installed
from ioc.stack.postgres import find_bin_dir as find_pg_bin
from ioc.stack.procs import StackError, free_port

__all__ = ["BACKENDS", "Stack", "StackError", "default_dir", "scratch_dir"]

BACKENDS = ("auto", "timescale", "postgres")


def default_dir() -> Path:
    return Path(os.environ.get("IOC_STACK_DIR", ".ioc")).resolve()


def scratch_dir(prefix: str) -> Path:
    """A new folder for a throw-away stack (tests, benchmarks) under the checkout's .ioc/, created if a
    fresh clone has none: the postgres service user cannot enter /tmp/pytest-of-root or a private /tmp."""
    base = Path(__file__).resolve().parents[2] / ".ioc"
    base.mkdir(exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


@dataclass
class Stack:
    root: Path
    postgres: Postgres
    mosquitto: Mosquitto
    backend: str = "auto"  # what `ioc stack up --backend` asked for; migrations follow it

    @property
    def state_file(self) -> Path:
        return self.root / "stack.json"

    @property
    def dsn(self) -> str:
        return self.postgres.dsn

    @property
    def mqtt_host(self) -> str:
        return self.mosquitto.host

    @property
    def mqtt_port(self) -> int:
        return self.mosquitto.port

    @classmethod
    def load(cls, root: Path | None = None, mqtt_port: int | None = None, pg_port: int | None = None,
             backend: str | None = None) -> Stack:
        """Read stack.json if present; otherwise choose free ports (or the given ones) and a password.

        backend: auto (TimescaleDB when its files are installed), timescale or postgres; kept in stack.json."""
        root = (root or default_dir()).resolve()
        state_path = root / "stack.json"
        state = json.loads(state_path.read_text()) if state_path.exists() else {}
        saved_backend = state.get("backend")
        backend = backend or saved_backend or os.environ.get("IOC_STACK_BACKEND") or "auto"
        if backend not in BACKENDS:
            raise StackError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
        pg_bin = find_pg_bin(os.environ.get("IOC_PG_BIN"))
        has_timescale = timescale_installed(pg_bin)
        if backend == "timescale" and not has_timescale:
            raise StackError(TIMESCALE_HINT)
        mosq = Mosquitto(
            root=root / "mosquitto",
            port=mqtt_port or state.get("mqtt_port") or free_port(),
            binary=find_mosquitto(os.environ.get("IOC_MOSQUITTO_BIN")),
            auth=bool(state.get("broker_auth", os.environ.get("IOC_BROKER_AUTH", "1") != "0")),
        )
        if mosq.auth:  # devices' TLS ports (password, and mutual TLS): only with logins required
            mosq.tls_port = int(state.get("mqtt_tls_port") or free_port())
            mosq.mtls_port = int(state.get("mqtt_mtls_port") or free_port())
        pg = Postgres(
            root=root / "postgres",
            port=pg_port or state.get("pg_port") or free_port(),
            password=state.get("pg_password") or secrets.token_urlsafe(18),
            bin_dir=pg_bin,
            preload_timescale=has_timescale and backend != "postgres",
        )
        stack = cls(root=root, postgres=pg, mosquitto=mosq, backend=backend)
        if saved_backend and backend != saved_backend and pg.pid() is not None:
            raise StackError(f"postgres already runs with backend {saved_backend}: `ioc stack down` first to change it")
        for name, server, asked, saved in (("mosquitto", mosq, mqtt_port, state.get("mqtt_port")),
                                            ("postgres", pg, pg_port, state.get("pg_port"))):
            if asked and saved and asked != saved and server.pid() is not None:
                raise StackError(f"{name} already runs on port {saved}: `ioc stack down` first to change its port")
        return stack

    @classmethod
    def existing(cls, root: Path | None = None) -> Stack:
        """The stack that `ioc stack up` created; a clear error when there is none."""
        root = (root or default_dir()).resolve()
        if not (root / "stack.json").exists():
            raise StackError(f"no local stack under {root}: run `ioc stack up` first")
        return cls.load(root)

    def save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        state = {"mqtt_port": self.mqtt_port, "pg_port": self.postgres.port, "pg_password": self.postgres.password,
                 "backend": self.backend, "broker_auth": self.mosquitto.auth,
                 "mqtt_tls_port": self.mosquitto.tls_port, "mqtt_mtls_port": self.mosquitto.mtls_port}
        self.state_file.write_text(json.dumps(state, indent=2))
        self.state_file.chmod(0o600)

    @property
    def broker_auth(self) -> bool:
        return self.mosquitto.auth

    def credentials(self, service: str) -> tuple[str, str] | None:
        """(username, password) a stack service logs in with, or None when the broker lets anyone in.
        service: ingest, registry, alerts, simulator, bench or admin."""
        logins = self.mosquitto.services()
        if not logins:
            return None
        if service not in logins:
            raise StackError(f"no broker login {service!r}: choose one of {', '.join(sorted(logins))}")
        return logins[service].username, logins[service].password

    def up(self) -> dict[str, bool]:
        """Start what is not running; returns which services were already up."""
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)  # the postgres service user must traverse it
        self.save()
        already = {"mosquitto": self.mosquitto.running(), "postgres": self.postgres.running()}
        self.mosquitto.start()
        self.postgres.init()
        self.postgres.start()
        return already

    def down(self) -> None:
        self.mosquitto.stop()
        self.postgres.stop()

    # Fault injection for tests and drills: stop or restart one server mid-stream.
    def stop_broker(self) -> None:
        self.mosquitto.stop()

    def start_broker(self) -> None:
        self.mosquitto.start()

    def stop_postgres(self) -> None:
        self.postgres.stop()

    def start_postgres(self) -> None:
        self.postgres.start()

    def status(self) -> list[dict[str, object]]:
        return [
            {"service": "mosquitto", "running": self.mosquitto.running(), "pid": self.mosquitto.pid(),
             "address": f"mqtt://{self.mqtt_host}:{self.mqtt_port}", "data": str(self.mosquitto.root)},
            {"service": "postgres", "running": self.postgres.running(), "pid": self.postgres.pid(),
             "address": f"postgresql://{self.postgres.host}:{self.postgres.port}/{self.postgres.database}",
             "data": str(self.postgres.data_dir)},
        ]
