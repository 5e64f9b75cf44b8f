"""Publish a fleet over MQTT: one connection per virtual device, with birth and last will.

Every message is QoS 1; the publisher records what the broker acknowledged so tests and the demo can
compare the database against exactly what the devices handed over.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from contract import topics
from contract.messages import now_ms
from simulators.fleet import Fleet, OutMessage, SimDevice

log = logging.getLogger(__name__)


@dataclass
class SentLog:
    """What the broker acknowledged (PUBACK), by message."""

    acked: list[OutMessage] = field(default_factory=list)
    published: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, msg: OutMessage) -> None:
        with self._lock:
            self.acked.append(msg)

    def points(self) -> dict[tuple[str, str, int], float]:
        with self._lock:
            return {k: v for m in self.acked for k, v in m.accepted.items()}

    def counts(self) -> dict[tuple[str, str, str, str, int], int]:
        with self._lock:
            return {k: v for m in self.acked for k, v in m.counts.items()}

    def dead_letters_expected(self) -> int:
        with self._lock:
            return sum(1 for m in self.acked if m.expects_dead_letter)


class _DeviceLink:
    def __init__(self, fleet: Fleet, dev: SimDevice, host: str, port: int, sent: SentLog, inflight: int,
                 login: tuple[str, str] | None) -> None:
        self.dev = dev
        self._fleet = fleet
        self._sent = sent
        self._pending: dict[int, OutMessage | None] = {}  # None: a status message, not recorded
        self._early: dict[int, bool] = {}
        self._lock = threading.Lock()
        self.connected = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=dev.device_id, protocol=mqtt.MQTTv5)
        c.max_inflight_messages_set(inflight)
        c.max_queued_messages_set(0)
        if login is not None:
            c.username_pw_set(*login)
        self.client = c
        self._new_session()
        c.on_connect = self._on_connect
        c.on_publish = self._on_publish
        c.on_disconnect = self._on_disconnect
        c.connect_async(host, port, keepalive=30)

    def _new_session(self) -> None:
        """Birth and will of one connection share its start time (see StatusMessage.ts)."""
        self.session_ts = now_ms()
        self.client.will_set(topics.state(self.dev.device_id),
                             self._fleet.status(self.dev, online=False, ts_ms=self.session_ts), qos=1, retain=True)

    def _on_disconnect(self, *_a: Any) -> None:
        self.connected.clear()
        self._new_session()  # paho reconnects with the will set here

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        if rc.is_failure:
            log.warning("%s: broker refused connection: %s", self.dev.device_id, rc)
            return
        self.publish(None, topics.state(self.dev.device_id),
                     self._fleet.status(self.dev, online=True, ts_ms=self.session_ts), retain=True)
        self.connected.set()

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, rc: ReasonCode, _p: Any) -> None:
        with self._lock:
            if mid not in self._pending:  # acknowledged before publish() registered it
                self._early[mid] = not rc.is_failure
                return
            msg = self._pending.pop(mid)
        if msg is not None and not rc.is_failure:
            self._sent.add(msg)

    def publish(self, msg: OutMessage | None, topic: str = "", payload: bytes = b"", retain: bool = False) -> None:
        # Our lock is never held across client.publish: paho calls on_publish under its own lock.
        if msg is not None:
            topic, payload = msg.topic, msg.payload
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        with self._lock:
            ok = self._early.pop(info.mid, None)
            if ok is None:
                self._pending[info.mid] = msg
                return
        if ok and msg is not None:
            self._sent.add(msg)

    def unacked(self) -> int:
        with self._lock:
            return len(self._pending)


class FleetPublisher:
    """Connects every device of the fleet; `publish` routes a message over its device's connection."""

    def __init__(self, fleet: Fleet, host: str, port: int, inflight: int = 100,
                 login: tuple[str, str] | None = None) -> None:
        """login: the simulator's broker login (one account speaks for the whole simulated fleet), or None
        for a broker that lets clients in anonymously."""
        self.fleet = fleet
        self.sent = SentLog()
        self._links = {d.device_id: _DeviceLink(fleet, d, host, port, self.sent, inflight, login)
                       for d in fleet.devices}

    def __enter__(self) -> FleetPublisher:
        for link in self._links.values():
            link.client.loop_start()
        deadline = time.monotonic() + 30
        for link in self._links.values():
            if not link.connected.wait(max(0.1, deadline - time.monotonic())):
                raise TimeoutError(f"{link.dev.device_id} could not connect to the broker")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def publish(self, msg: OutMessage, via: str | None = None) -> None:
        """`via` sends over another device's connection (an unknown-device message has none)."""
        self._links[via or msg.device_id].publish(msg)
        self.sent.published += 1

    def drain(self, timeout: float = 60) -> bool:
        """Wait until the broker acknowledged everything published."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(link.unacked() == 0 for link in self._links.values()):
                return True
            time.sleep(0.02)
        return False

    def cut_link(self, device_id: str) -> None:
        """Fault: drop the TCP connection without DISCONNECT, as a power cut would; the broker then
        publishes the device's last will."""
        link = self._links[device_id]
        link.client.loop_stop()
        sock = link.client.socket()
        if sock is not None:
            sock.close()
        link.connected.clear()

    def online(self) -> int:
        return sum(1 for link in self._links.values() if link.connected.is_set())

    def close(self, graceful: bool = True) -> None:
        """graceful: publish an offline status, as a device shutting down cleanly would."""
        for link in self._links.values():
            if graceful and link.connected.is_set():
                link.publish(None, topics.state(link.dev.device_id),
                             self.fleet.status(link.dev, online=False, ts_ms=link.session_ts), retain=True)
            link.client.disconnect()
        for link in self._links.values():
            link.client.loop_stop()
