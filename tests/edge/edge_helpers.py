"""Helpers for the edge tests: a restartable Mosquitto, an MQTT watcher, pymodbus servers, and a
polling wait with a generous upper bound (never a performance assertion)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
WAIT_S = 30.0  # generous upper bound for "eventually"; never a performance assertion


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(pred: Callable[[], Any], timeout: float = WAIT_S, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class Broker:
    """A Mosquitto process on a fixed loopback port that can be stopped and started again."""

    def __init__(self, workdir: Path, extra_conf: str = "", persistence: bool = False) -> None:
        self.host, self.port = "127.0.0.1", free_port()
        self.conf = workdir / f"mosquitto-{self.port}.conf"
        store = "persistence false"
        if persistence:  # the broker keeps retained and queued messages across a restart
            pdir = Path(tempfile.mkdtemp(prefix="mosq-"))
            pdir.chmod(0o777)
            store = f"persistence true\npersistence_location {pdir}/\nautosave_interval 1"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n{store}\n{extra_conf}\n")
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

        def accepting() -> bool:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self._proc.returncode}; conf {self.conf}")
            with socket.socket() as s:
                return s.connect_ex((self.host, self.port)) == 0

        wait_for(accepting, what="mosquitto to listen")

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(10)
            self._proc = None


class Watcher:
    """A test-side MQTT 5 client that records every message on its filters (resubscribing on reconnect)."""

    def __init__(self, host: str, port: int, persistent: bool = False,
                 login: tuple[str, str] | None = None) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self._filters: list[str] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"watch-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5
        )
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.reconnect_delay_set(0.05, 0.5)
        if login is not None:  # the stack's broker: stack.credentials("admin")
            self.client.username_pw_set(*login)
        props = None
        if persistent:  # keep subscriptions and queued QoS 1 messages while the watcher is away
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 600
        self.client.connect(host, port, clean_start=not persistent, properties=props)
        self.client.loop_start()

    def _on_connect(self, client: mqtt.Client, *args: Any) -> None:
        for f in self._filters:
            client.subscribe(f, qos=1)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(msg)

    def subscribe(self, topic: str) -> None:
        self._filters.append(topic)
        self._subscribed.clear()
        self.client.subscribe(topic, qos=1)
        assert self._subscribed.wait(WAIT_S)

    def on(self, topic: str) -> list[mqtt.MQTTMessage]:
        with self._lock:
            return [m for m in self.messages if mqtt.topic_matches_sub(topic, m.topic)]

    def payloads(self, topic: str) -> list[dict[str, Any]]:
        return [json.loads(m.payload) for m in self.on(topic) if m.payload]

    def request(self, topic: str, payload: dict[str, Any], correlation: bytes) -> None:
        """Publish an MQTT 5 request with response topic + correlation data."""
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.reply_topic
        props.CorrelationData = correlation
        self.client.publish(topic, json.dumps(payload), qos=1, properties=props)

    @property
    def reply_topic(self) -> str:
        # Under rsp/v1/: the only replies the stack's broker lets a device (or the simulator login) write.
        return f"rsp/v1/test/{self.client._client_id.decode()}"

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class ModbusServer:
    """pymodbus' own server (TCP framing, or RTU framing over a socket) in a background loop."""

    def __init__(self, registers: list[int], framer: str = "socket", device_id: int = 1) -> None:
        from pymodbus.framer import FramerType
        from pymodbus.server import ModbusTcpServer
        from pymodbus.simulator import SimData, SimDevice
        from pymodbus.simulator.simdata import DataType

        self.port = free_port()
        device = SimDevice(id=device_id, simdata=[SimData(0, values=registers, datatype=DataType.REGISTERS)])
        self._loop = asyncio.new_event_loop()
        self._server: Any = None
        ready = threading.Event()

        async def serve() -> None:
            self._server = ModbusTcpServer(
                device, address=("127.0.0.1", self.port), framer=FramerType(framer)
            )
            ready.set()
            await self._server.serve_forever()

        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(serve(),), daemon=True)
        self._thread.start()
        ready.wait(WAIT_S)

        def accepting() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        wait_for(accepting, what="modbus server")

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._server.shutdown(), self._loop).result(10)
        self._thread.join(10)


class AgentThread:
    """Runs Agent.run() in a thread; `reason` holds what run() returned."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.reason: str | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.reason = self.agent.run()

    def stop(self) -> str | None:
        self.agent.stop()
        self._thread.join(WAIT_S)
        return self.reason

    def join(self) -> str | None:
        self._thread.join(WAIT_S)
        return self.reason


class RecordingSink:
    """Wraps the agent's sink and remembers every metric value it committed to the outbox."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self._lock = threading.Lock()
        self.points: dict[tuple[str, int], float] = {}

    def metrics(self, stream: str, samples: Any) -> None:
        self.inner.metrics(stream, samples)  # returns after the outbox commit
        with self._lock:
            for s in samples:
                for name, v in s.values.items():
                    self.points[(name, s.ts)] = v

    def counts(self, counts: Any) -> None:
        self.inner.counts(counts)

    def events(self, events: Any) -> None:
        self.inner.events(events)

    def snapshot(self) -> dict[tuple[str, int], float]:
        with self._lock:
            return dict(self.points)


def device_config(
    device_id: str, site: str, host: str, port: int, outbox_path: Path,
    login: tuple[str, str] | None = None, **over: Any
) -> dict[str, Any]:
    """A fast-sampling env-gateway config (pm25 every 100 ms, co2 every 500 ms, heartbeat 0.5 s)."""
    data: dict[str, Any] = {
        "device_id": device_id,
        "site": site,
        "profile": "env-gateway",
        "broker": {"host": host, "port": port, "backoff_min_s": 0.05, "backoff_max_s": 0.5,
                   **({"username": login[0], "password": login[1]} if login else {})},
        "outbox": {"path": str(outbox_path), "sync": "normal"},
        "sensors": [{"type": "simulated", "metrics": ["pm25", "co2"], "seed": 1}],
        "settings": {
            "heartbeat_s": 0.5,
            "metrics": {"pm25": {"interval_s": 0.1}, "co2": {"interval_s": 0.5}},
            "drain": {"messages_per_s": 200},
        },
    }
    data.update(over)
    return data


class TcpGate:
    """A loopback TCP forwarder the test can close and open: the agent's only way to the broker.

    Mosquitto 2.0.11 forgets persisted `$share` subscriptions on restart (checked here), so anything
    published after a broker restart and before ingest resubscribes is lost to ingest. Tests that
    restart the broker keep the agent behind this gate until ingest is back, so they test the edge.
    """

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.login: tuple[str, str] | None = None  # what an agent behind the gate logs in with
        self.is_open = threading.Event()
        self.is_open.set()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._srv = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._srv.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._srv.accept()
            except OSError:
                return
            if not self.is_open.is_set():
                client.close()
                continue
            try:
                up = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            up.settimeout(None)
            with self._lock:
                self._conns += [client, up]
            for a, b in ((client, up), (up, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close_gate(self) -> None:
        self.is_open.clear()
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def open_gate(self) -> None:
        self.is_open.set()

    def stop(self) -> None:
        self.close_gate()
        self._srv.close()
