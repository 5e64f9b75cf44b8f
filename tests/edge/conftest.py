"""Edge test fixtures. They do not depend on the root stack fixtures, so the unit and protocol tiers
run alone; the end-to-end tests (test_edge_e2e.py) use the lead's `stack`/`db`/`ingest` fixtures."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from edge_helpers import Broker, ModbusServer, Watcher


@pytest.fixture
def mqtt_broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path)
    b.start()
    yield b
    b.stop()


@pytest.fixture
def watcher(mqtt_broker: Broker) -> Iterator[Watcher]:
    w = Watcher(mqtt_broker.host, mqtt_broker.port)
    yield w
    w.close()


@pytest.fixture
def modbus_server() -> Iterator[Callable[..., ModbusServer]]:
    servers: list[ModbusServer] = []

    def make(registers: list[int], framer: str = "socket") -> ModbusServer:
        servers.append(ModbusServer(registers, framer))
        return servers[-1]

    yield make
    for s in servers:
        s.stop()
