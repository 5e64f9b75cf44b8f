"""Session fixtures: a real Mosquitto and a real PostgreSQL on free loopback ports, migrated schema,
and ingest services (in-process or as killable subprocesses). Tests isolate by unique device ids.

Every test that uses the stack runs twice: on a TimescaleDB server (which preloads the extension) and on a
plain PostgreSQL server (which does not); the TimescaleDB half skips, with the reason, where the extension
is not installed. The run ends with a line that counts what ran on each backend."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from support import mqtt_env, mqtt_login

from cloud.db.devices import register_devices
from cloud.db.migrate import migrate
from cloud.ingest.service import IngestService
from cloud.ingest.settings import IngestSettings
from ioc.stack import Stack, scratch_dir
from ioc.stack.postgres import find_bin_dir, timescale_installed

REPO = Path(__file__).resolve().parent.parent
_counter = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


BACKENDS = ("postgres", "timescale")
TIMESCALE_MISSING = ("TimescaleDB is not installed for this PostgreSQL server: run ../shared/timescaledb/install.sh "
                     "(what .ci/run does) to run the TimescaleDB half of the suite")


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The time-series backend of the session's stack: each backend gets a server of its own."""
    if request.param == "timescale" and not timescale_installed(find_bin_dir(os.environ.get("IOC_PG_BIN"))):
        pytest.skip(TIMESCALE_MISSING)
    return str(request.param)


@pytest.fixture(scope="session")
def stack(backend: str) -> Iterator[Stack]:
    """Data lives under the project's .ioc/ folder (the postgres service user cannot enter /tmp/pytest-of-root).
    Whatever started is stopped, even when start-up or migration fails half-way."""
    root = scratch_dir(f"test-{backend}-")
    s = Stack.load(root, backend=backend)
    try:
        s.up()
        assert migrate(s.dsn, backend)[0] == backend
        yield s
    finally:
        s.down()
        shutil.rmtree(root, ignore_errors=True)


_by_backend: dict[str, dict[str, int]] = {b: {} for b in BACKENDS}
_backend_of: dict[str, str] = {}  # test node id -> backend, for the tests that use the stack


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`@pytest.mark.backend_only("postgres")`: a test of one path is not collected for the other
    (deselected, not skipped: a skip on the TimescaleDB side must always mean the extension is missing)."""
    kept, dropped = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        b = callspec.params.get("backend") if callspec is not None else None
        only = item.get_closest_marker("backend_only")
        if b is not None and only is not None and b not in only.args:
            dropped.append(item)
            continue
        if b is not None:
            _backend_of[item.nodeid] = b
        kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Count each test once per backend: its call outcome, or its set-up outcome when it never got that far."""
    b = _backend_of.get(report.nodeid)
    if b and (report.when == "call" or (report.when == "setup" and not report.passed)):
        _by_backend[b][report.outcome] = _by_backend[b].get(report.outcome, 0) + 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for b, label in (("timescale", "TimescaleDB"), ("postgres", "plain PostgreSQL")):
        counts = _by_backend[b]
        ran = counts.get("passed", 0) + counts.get("failed", 0)
        terminalreporter.write_line(f"{label}: {ran} tests ran ({counts.get('passed', 0)} passed, "
                                    f"{counts.get('failed', 0)} failed), {counts.get('skipped', 0)} skipped")


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
        "maintenance_interval_s": 2.0, **mqtt_login(stack, "ingest"),
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
               "IOC_INGEST_STATS_INTERVAL_S": "1", "COLUMNS": "200", **mqtt_env(self.stack, "ingest")}
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
