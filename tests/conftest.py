"""Session fixtures: a real Mosquitto and a real PostgreSQL on free loopback ports, migrated schema,
and ingest services (in-process or as killable subprocesses). Tests isolate by unique device ids."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from cloud.db.devices import register_devices
from cloud.db.migrate import migrate
from cloud.ingest.service import IngestService
from cloud.ingest.settings import IngestSettings
from ioc.stack import Stack

REPO = Path(__file__).resolve().parent.parent
_counter = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    """Data lives under the project's .ioc/ folder (the postgres service user cannot enter /tmp/pytest-of-root)."""
    base = REPO / ".ioc"
    base.mkdir(exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="test-stack-", dir=base))
    s = Stack.load(root)
    s.up()
    migrate(s.dsn)
    yield s
    s.down()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def db(stack: Stack) -> Iterator[psycopg.Connection]:
    with psycopg.connect(stack.dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def register_device(stack: Stack) -> Callable[..., None]:
    def register(device_id: str, site: str = "district-01", profile: str = "env-gateway") -> None:
        with psycopg.connect(stack.dsn) as conn:
            register_devices(conn, [(device_id, site, profile)])

    return register


def ingest_settings(stack: Stack, **overrides: object) -> IngestSettings:
    n = next(_counter)
    base: dict[str, object] = {
        "dsn": stack.dsn, "mqtt_host": stack.mqtt_host, "mqtt_port": stack.mqtt_port,
        "instance": f"test-ingest-{os.getpid()}-{n}",
        "batch_max_delay_s": 0.05, "session_expiry_s": 600, "stats_interval_s": 1.0,
        "maintenance_interval_s": 2.0,
    }
    return IngestSettings(**{**base, **overrides})  # type: ignore[arg-type]


@pytest.fixture
def ingest(stack: Stack) -> Iterator[IngestService]:
    """A running in-process ingest service (the default plain subscription)."""
    svc = IngestService(ingest_settings(stack))
    svc.start()
    assert svc.wait_connected(10), "ingest could not connect to the test broker"
    yield svc
    svc.stop()


class IngestProcess:
    """`python -m ioc ingest` as a real process, for tests that kill it."""

    def __init__(self, stack: Stack, instance: str, group: str, log_path: Path) -> None:
        self.stack, self.instance, self.group, self.log_path = stack, instance, group, log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "IOC_DSN": self.stack.dsn, "IOC_MQTT_HOST": self.stack.mqtt_host,
               "IOC_MQTT_PORT": str(self.stack.mqtt_port), "IOC_INGEST_SHARE_GROUP": self.group,
               "IOC_INGEST_BATCH_MAX_DELAY_S": "0.05", "IOC_INGEST_SESSION_EXPIRY_S": "600",
               "IOC_INGEST_STATS_INTERVAL_S": "1", "COLUMNS": "200"}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "ioc", "ingest", "--instance", self.instance],
                                         env=env, stdout=log, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def terminate(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def spawn_ingest(stack: Stack, tmp_path: Path) -> Iterator[Callable[..., IngestProcess]]:
    made: list[IngestProcess] = []

    def spawn(group: str = "") -> IngestProcess:
        """group: a $share group name to split load across processes; empty for a plain subscription."""
        n = next(_counter)
        p = IngestProcess(stack, f"test-proc-{os.getpid()}-{n}", group, tmp_path / f"ingest{n}.log")
        made.append(p)
        return p

    yield spawn
    for p in made:
        p.kill()
