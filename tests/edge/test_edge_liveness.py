"""Liveness with the real edge agent as its own process: what `device_status` says must be true.

SIGKILL: the broker sees the socket close and publishes the agent's last will, which carries the same
connection timestamp as its birth, so ingest's ordering guard applies it: the device is offline.
SIGSTOP: the socket stays open and no will comes (for 1.5 keepalives); ingest's upkeep marks the device
silent once its heartbeats stop, and clears the mark when it is heard again.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from edge_helpers import device_config, wait_for

from ioc.status import read_status

pytestmark = pytest.mark.slow
SITE = "edge-live"
HERE = Path(__file__).resolve().parent


@pytest.fixture
def device(register_device: Callable[..., None]) -> str:
    dev = f"live-{uuid.uuid4().hex[:8]}"
    register_device(dev, SITE, "env-gateway")
    return dev


@pytest.fixture
def agent_proc(stack: Any, device: str, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    cfg = device_config(device, SITE, stack.mqtt_host, stack.mqtt_port, tmp_path / "outbox.sqlite3")
    cfg["broker"]["keepalive_s"] = 120  # the broker would publish the will of a stopped agent after 180 s
    path = tmp_path / "device.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "edge_agent_proc.py"), str(path), str(tmp_path / "journal.txt")],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "agent.log").open("ab"),
    )
    yield proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
    proc.wait(30)


def _status(db: psycopg.Connection, device: str) -> tuple[Any, ...] | None:
    return db.execute(
        "SELECT online, reason, silent_since, boot_id, status_ts FROM device_status WHERE device_id = %s",
        (device,),
    ).fetchone()


def test_sigkill_marks_the_agent_offline_through_its_will(
    *, ingest: Any, db: psycopg.Connection, device: str, agent_proc: subprocess.Popen[bytes]
) -> None:
    born = wait_for(lambda: (s := _status(db, device)) and s[0] and s, what="birth stored: online")
    agent_proc.kill()
    agent_proc.wait(30)
    _online, reason, _silent, boot, status_ts = wait_for(
        lambda: (s := _status(db, device)) and not s[0] and s, what="will stored: offline"
    )
    assert reason == "connection lost"
    assert boot == born[3]
    assert status_ts == born[4]  # the will and the birth carry one connection timestamp


def test_a_stopped_agent_is_marked_silent_and_unmarked_when_it_resumes(
    *, ingest: Any, db: psycopg.Connection, device: str, agent_proc: subprocess.Popen[bytes]
) -> None:
    wait_for(lambda: (s := _status(db, device)) and s[0], what="birth stored: online")
    wait_for(lambda: db.execute("SELECT 1 FROM device_config_reported WHERE device_id = %s", (device,)).fetchone(),
             what="reported config (its heartbeat period) stored")
    agent_proc.send_signal(signal.SIGSTOP)  # hung: no heartbeat, no will, socket still open
    online, _reason, _silent_since, *_ = wait_for(
        lambda: (s := _status(db, device)) and s[2] is not None and s, timeout=90, what="marked silent"
    )
    assert online, "no will came: the status still says online, the silence mark says otherwise"
    assert read_status(db).silent >= 1  # what `ioc status` shows as "online but silent"
    agent_proc.send_signal(signal.SIGCONT)
    wait_for(lambda: (s := _status(db, device)) and s[0] and s[2] is None, timeout=60,
             what="heard again: no longer silent")
