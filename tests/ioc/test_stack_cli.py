"""`ioc stack` and `ioc status` as a user runs them, on a stack of their own."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest
from support import scratch_database

from ioc.stack import StackError, scratch_dir
from ioc.stack.mosquitto import find_binary
from ioc.stack.postgres import find_bin_dir

REPO = Path(__file__).resolve().parents[2]


def ioc(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    for k in ("IOC_DSN", "IOC_MQTT_HOST", "IOC_MQTT_PORT"):
        env.pop(k, None)
    proc = subprocess.run([sys.executable, "-m", "ioc", *args], capture_output=True, text=True, env=env,
                          timeout=120, check=False, cwd=REPO)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


class ApiProcess:
    """`ioc api` on a free port, as a technician's laptop would reach it."""

    def __init__(self, root: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "ioc", "api", "--dir", str(root), "--port", str(port)],
                                     cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not (root / "api-admin-token").exists() or not _answers(self.url):
            assert self.proc.poll() is None, "ioc api exited"
            assert time.monotonic() < deadline, "ioc api did not start"
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(f"{url}/health", timeout=2)
    except OSError:
        return False
    return True


def _start_api(root: Path) -> ApiProcess:
    return ApiProcess(root)


def test_stack_up_is_idempotent_reports_status_and_keeps_data_across_down_and_up() -> None:
    root = scratch_dir("cli-stack-")
    api: ApiProcess | None = None
    try:
        first = ioc("stack", "up", "--dir", str(root))
        assert "mosquitto: started" in first.stdout
        assert "postgres: started" in first.stdout
        assert "postgres backend, 4 migration(s)" in first.stdout or "migration(s) applied" in first.stdout
        again = ioc("stack", "up", "--dir", str(root))
        assert "mosquitto: already running" in again.stdout
        assert "postgres: already running" in again.stdout
        api = _start_api(root)  # `ioc devices` goes through the registry API
        ioc("devices", "register", "gw-cli-1", "--site", "district-01", "--profile", "env-gateway", "--dir", str(root),
            "--api-url", api.url)
        status = ioc("status", "--dir", str(root))
        assert "running" in status.stdout
        assert "devices online" in status.stdout
        assert "0 / 1" in status.stdout
        bad = ioc("devices", "register", "gw-cli-2", "--site", "d", "--profile", "toaster", "--dir", str(root),
                  "--api-url", api.url, check=False)
        assert bad.returncode == 1
        assert "unknown profile 'toaster'" in bad.stdout
        api.stop()
        ioc("stack", "down", "--dir", str(root))
        assert "stopped" in ioc("stack", "status", "--dir", str(root)).stdout
        ioc("stack", "up", "--dir", str(root))
        api = _start_api(root)
        assert "gw-cli-1" in ioc("devices", "list", "--dir", str(root), "--api-url", api.url).stdout  # data survived
    finally:
        if api is not None:
            api.stop()
        subprocess.run([sys.executable, "-m", "ioc", "stack", "down", "--dir", str(root)], capture_output=True,
                       check=False, cwd=REPO)
        shutil.rmtree(root, ignore_errors=True)


def test_commands_without_a_stack_say_how_to_get_one(tmp_path: Path) -> None:
    out = ioc("status", "--dir", str(tmp_path / "none"), check=False)
    assert out.returncode == 1
    assert "ioc stack up" in out.stdout


def test_missing_server_binaries_give_a_one_line_fix() -> None:
    with pytest.raises(StackError, match="apt-get install -y mosquitto"):
        find_binary("/nonexistent/mosquitto")
    with pytest.raises(StackError, match="apt-get install -y postgresql"):
        find_bin_dir("/nonexistent/bin")


def test_a_stale_pid_file_naming_another_program_is_never_signalled(tmp_path: Path) -> None:
    from ioc.stack.procs import read_pid

    pid_file = tmp_path / "mosquitto.pid"
    pid_file.write_text(f"{os.getpid()}\n")  # alive, but it is this test, not a broker
    assert read_pid(pid_file, "mosquitto") is None
    pid_file.write_text("999999999\n")
    assert read_pid(pid_file, "mosquitto") is None


def test_commands_on_a_database_without_schema_say_to_migrate(stack: object) -> None:
    with scratch_database(stack, "empty") as dsn:  # type: ignore[arg-type]
        out = ioc("ingest", "--stats", "--dsn", dsn, check=False)
        assert out.returncode == 1
        assert "ioc db migrate" in out.stdout


def test_stack_backend_choice_status_jobs_and_a_server_that_does_not_preload_timescale(backend: str) -> None:
    """`--backend` picks the server's setup and the schema; `ioc status` shows every background job's last run,
    outcome and lag; asking a non-preloading server for TimescaleDB is one line saying what to change."""
    root = scratch_dir(f"cli-{backend}-")
    try:
        up = ioc("stack", "up", "--dir", str(root), "--backend", backend)
        assert f"schema: {backend} backend" in up.stdout
        ioc("db", "maintain", "--dir", str(root))
        status = ioc("status", "--dir", str(root)).stdout
        assert "Background jobs" in status
        if backend == "timescale":
            for job in ("Columnstore Policy", "Retention Policy", "Refresh Continuous Aggregate Policy"):
                assert job in status
            assert "upkeep: ok" in status or "worker: success" in status
        else:
            assert "Partitions, retention and rollups" in status
            assert "upkeep: ok" in status
            up = ioc("stack", "up", "--dir", str(root), "--no-migrate").stdout
            dsn = ioc("stack", "dsn", "--dir", str(root)).stdout.strip()
            assert dsn.split("@")[0].rsplit(":", 1)[1] not in up  # a person sees no password
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("CREATE DATABASE fresh")
            refused = ioc("db", "migrate", "--dsn", dsn.rsplit("/", 1)[0] + "/fresh", "--backend", "timescale",
                          check=False)
            assert refused.returncode == 1
            out = refused.stdout + refused.stderr
            assert "connection is closed" not in out
            assert "shared_preload_libraries" in out or "not installed" in out
            assert len([ln for ln in out.splitlines() if ln.strip()]) <= 3  # a message, not a traceback
    finally:
        subprocess.run([sys.executable, "-m", "ioc", "stack", "down", "--dir", str(root)], capture_output=True,
                       check=False, cwd=REPO)
        shutil.rmtree(root, ignore_errors=True)
