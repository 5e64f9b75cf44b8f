"""The MQTT side of ingest: a persistent MQTT 5 session on a shared subscription, manual acks.

The broker keeps unacknowledged messages in our session (clean start off, session expiry set), so a message is
only gone from the broker once we acknowledged it, after the database commit.

Back-pressure is ours, not the broker's: Mosquitto 2.0.11 let 44,000 messages be unacknowledged with a Receive
Maximum of 20,000 (upstream #2306: a session with a backlog gets all of it, docs/operations.md). So our own
network thread stops reading the socket while `in_flight()` (the messages received and not yet acknowledged)
is at `receive_maximum`, and reads again below 90 % of it: TCP flow control then holds the rest at the broker.
One read takes at most ~1 MiB, the overshoot. A long pause reads once every half keepalive so the broker's
PINGRESP gets in and the session stays up, but only below twice the bound; beyond it paho drops the connection
after a keepalive and we reconnect (the broker sends the unacknowledged messages again; ingest's idempotent
writes absorb them).
"""

from __future__ import annotations

import logging
import select
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from cloud.ingest.paho_fastpath import FastPathClient
from cloud.ingest.settings import IngestSettings
from contract import topics

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Inbound:
    mid: int
    qos: int
    topic: str
    payload: bytes
    received: float  # time.monotonic()
    generation: int  # connection it arrived on; acks for an older connection are meaningless


RESUME_AT = 0.9  # of the bound: read again below this
MAX_UNACKED_PUBLISHES = 1000  # our own publishes the broker has not acknowledged (lowered to its Receive Maximum)


class MqttConsumer:
    def __init__(self, settings: IngestSettings, sink: Callable[[Inbound], None],
                 in_flight: Callable[[], int] | None = None,
                 on_crash: Callable[[str], None] | None = None) -> None:
        self._s = settings
        self._sink = sink
        self._in_flight = in_flight or (lambda: 0)
        self._on_crash = on_crash
        # paho guards its outgoing queue only for its own loop_start() thread: without one, publish() and the
        # PUBACKs write to the socket from the calling thread, unlocked. So every write takes turns on this
        # lock: our network thread's reads, writes and reconnects (but not its select()), publishing and
        # acknowledging. Unlocked, reconnect() walking the queue while a watermark was queued killed the network
        # thread ("deque mutated during iteration", 10,000 devices), and two threads writing into a full
        # socket can interleave their packets' bytes (a partial write by one, then the other's packet).
        self._paho_lock = threading.Lock()
        self.generation = 0
        self.connected = threading.Event()  # set once the broker confirmed our subscriptions
        self._session_up = False  # CONNACK seen on the current socket: only then may reading pause
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self.paused = False
        self.pauses = 0  # how often the in-flight bound stopped reading
        self._last_read = 0.0
        c = FastPathClient(CallbackAPIVersion.VERSION2, client_id=settings.instance,
                           protocol=mqtt.MQTTv5, manual_ack=True)
        if settings.mqtt_username:
            c.username_pw_set(settings.mqtt_username, settings.mqtt_password)
        c.reconnect_delay_set(min_delay=1, max_delay=int(settings.retry_max_delay_s))
        # Our own publishes (retained watermarks) are bounded by publish_room(), not by paho: paho queues what
        # is over its in-flight limit without bound and walks every outstanding message on each PUBACK, which
        # under a slow broker (58,000 queued, 10,000 devices) cost more CPU than the telemetry itself.
        c.max_inflight_messages_set(0)
        self._unacked = 0  # our QoS 1 publishes without PUBACK yet; guarded by _paho_lock
        self._publish_quota = MAX_UNACKED_PUBLISHES
        self._refusal_logged = float("-inf")
        if log.isEnabledFor(logging.DEBUG):
            c.enable_logger(logging.getLogger("paho"))  # packet trace, only when asked for
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_fast_publish = self._on_fast_publish
        c.on_message = self._on_message  # the rare message paho decodes itself (e.g. one with properties)
        c.on_subscribe = self._on_subscribe
        c.on_publish = self._on_publish
        self._client = c

    def subscriptions(self) -> list[tuple[str, int]]:
        share = f"$share/{self._s.share_group}/" if self._s.share_group else ""
        return [
            # High volume: split across the group.
            (f"{share}{topics.TELEMETRY_FILTER}", 1),
            (f"{share}{topics.EVENTS_FILTER}", 1),
            # Low volume, retained and idempotent: every instance takes all, so retained births are seen.
            (topics.STATE_FILTER, 1),
            (topics.CONFIG_REPORTED_FILTER, 1),
        ]

    def start(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self._s.session_expiry_s
        props.ReceiveMaximum = self._s.receive_maximum
        self._client.connect_async(self._s.mqtt_host, self._s.mqtt_port, keepalive=self._s.keepalive_s,
                                   clean_start=False, properties=props)
        self._thread = threading.Thread(target=self._network_loop, name="ingest-mqtt", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._closing.set()
        with self._paho_lock:
            self._client.disconnect()
        if self._thread is not None:
            self._thread.join(5)

    # -- network thread ----------------------------------------------------------------------
    def _network_loop(self) -> None:
        try:
            self._network_loop_body()
        except Exception:
            if self._on_crash is None:
                raise
            self._on_crash("mqtt")

    def _network_loop_body(self) -> None:
        """paho's public loop functions, with reconnect and the in-flight bound (see the module doc)."""
        c = self._client
        delay = 1.0
        while not self._closing.is_set():
            if c.socket() is None:
                try:
                    with self._paho_lock:
                        c.reconnect()
                except OSError as e:
                    log.warning("cannot reach the broker at mqtt://%s:%s (%s); retrying in %.0fs",
                                self._s.mqtt_host, self._s.mqtt_port, e, delay)
                    self._closing.wait(delay)
                    delay = min(delay * 2, self._s.retry_max_delay_s)
                    continue
                self._last_read = time.monotonic()
            rc = self._loop_once(c)
            if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                if self.connected.is_set():
                    delay = 1.0
                continue
            self._session_up = False
            if not self._closing.is_set():
                self._closing.wait(delay)
                delay = min(delay * 2, self._s.retry_max_delay_s)
        # disconnect() was called: let paho write the DISCONNECT (and anything queued before it)
        deadline = time.monotonic() + 2
        while c.socket() is not None and time.monotonic() < deadline:
            if self._io(c, 0.05) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break

    def _loop_once(self, c: mqtt.Client) -> MQTTErrorCode:
        bound = self._s.max_in_flight or self._s.receive_maximum
        if self._session_up:
            waiting = self._in_flight()
            if not self.paused and waiting >= bound:
                self.paused = True
                self.pauses += 1
                log.info("%d messages in flight (bound %d): not reading until the database catches up", waiting, bound)
            elif self.paused and waiting < bound * RESUME_AT:
                self.paused = False
                log.info("%d messages in flight: reading again", waiting)
        else:
            self.paused = False
        if not self.paused:
            self._last_read = time.monotonic()
            return self._io(c, 0.1)
        now = time.monotonic()
        if now - self._last_read >= c.keepalive / 2 and self._in_flight() < 2 * bound:
            self._last_read = now
            return self._io(c, 0)  # one read: lets the PINGRESP in, keeps the session alive
        return self._io(c, 0.01, read=False)  # writes and keepalive only

    def _io(self, c: mqtt.Client, timeout: float, read: bool = True) -> MQTTErrorCode:
        """One turn of paho's loop() from its public parts: select() outside `_paho_lock`, then the reads,
        writes and keepalive inside it (see __init__)."""
        sock = c.socket()
        if sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        pending = read and getattr(sock, "pending", lambda: 0)() > 0  # TLS: bytes already decrypted
        try:
            readable, writable, _ = select.select([sock] if read else [], [sock] if c.want_write() else [], [],
                                                  0.0 if pending else timeout)
        except (OSError, ValueError):  # closed by another thread meanwhile
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        with self._paho_lock:
            if c.socket() is not sock:  # lost or replaced meanwhile: the next turn sees the new state
                return MQTTErrorCode.MQTT_ERR_SUCCESS if c.socket() is not None else MQTTErrorCode.MQTT_ERR_NO_CONN
            if readable or pending:
                rc = c.loop_read()
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or c.socket() is None:
                    return rc
            if writable or c.want_write():
                rc = c.loop_write()
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or c.socket() is None:
                    return rc
            return c.loop_misc()

    def publish(self, topic: str, payload: bytes) -> mqtt.MQTTMessageInfo:
        """Retained QoS 1 (a watermark); paho queues it while the broker is away and sends it on reconnect.
        Callers keep to publish_room(). QoS 0 would cost less CPU, but nothing would then bound what waits
        in paho's output queue while the broker reads slowly (ingest's memory grew ~3.5 MB/s that way)."""
        with self._paho_lock:
            info = self._client.publish(topic, payload, qos=1, retain=True)
            if info.rc != MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:  # else paho kept nothing (its message ids ran out)
                self._unacked += 1
            return info

    def publish_room(self) -> int:
        """How many more publishes the broker may have unacknowledged now: a broker that acknowledges slowly
        (a backlog, a save) slows the watermarks down instead of growing a queue in this process. Zero until
        the broker has confirmed the session: paho resends the older unacknowledged ones then (under the lock), and a
        newer watermark sent before them would be overwritten by an older one as the retained message."""
        with self._paho_lock:
            if not self._session_up:
                return 0
            return max(0, self._publish_quota - self._unacked)

    def ack(self, items: Sequence[Inbound]) -> int:
        """PUBACK in arrival order; items from a previous connection are skipped (the broker resends them)."""
        gen = self.generation
        mids = [it.mid for it in items if it.qos == 1 and it.generation == gen]
        with self._paho_lock:
            self._client.ack_many(mids)
        return len(mids)

    def _on_connect(self, client: mqtt.Client, _ud: Any, flags: mqtt.ConnectFlags, rc: ReasonCode,
                    props: Properties | None) -> None:
        if rc.is_failure:
            log.error("broker refused the connection: %s", rc)  # stay disconnected; paho retries
            return
        self.generation += 1
        self._session_up = True
        server_max = getattr(props, "ReceiveMaximum", None) if props is not None else None
        self._publish_quota = min(MAX_UNACKED_PUBLISHES, server_max or MAX_UNACKED_PUBLISHES)
        client.subscribe(self.subscriptions())
        log.info("connected to mqtt://%s:%s as %s (session present: %s)", self._s.mqtt_host,
                 self._s.mqtt_port, self._s.instance, flags.session_present)

    def _on_publish(self, _c: mqtt.Client, _ud: Any, _mid: int, rc: ReasonCode, _props: Properties) -> None:
        """PUBACK of one of our publishes (called inside loop_read, so under _paho_lock)."""
        self._unacked = max(0, self._unacked - 1)
        if rc.is_failure and time.monotonic() - self._refusal_logged > 60:  # once a minute, not per message
            self._refusal_logged = time.monotonic()
            log.warning("broker refused a watermark publish: %s (check the ACL for this ingest user)", rc)

    def _on_subscribe(self, _c: mqtt.Client, _ud: Any, _mid: int, rcs: list[ReasonCode],
                      _props: Properties | None) -> None:
        refused = [str(rc) for rc in rcs if rc.is_failure]
        if refused:
            log.error("broker refused subscriptions: %s (check the ACL for this ingest user)", ", ".join(refused))
            return
        self.connected.set()

    def _on_disconnect(self, _c: mqtt.Client, _ud: Any, _flags: mqtt.DisconnectFlags, rc: ReasonCode,
                       _props: Properties | None) -> None:
        self.connected.clear()
        self._session_up = False
        if rc.value != 0:
            log.warning("lost the broker (%s); reconnecting", rc)

    def _on_fast_publish(self, mid: int, qos: int, topic: str, payload: bytes) -> None:
        self._sink(Inbound(mid, qos, topic, payload, time.monotonic(), self.generation))

    def _on_message(self, _c: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        self._on_fast_publish(msg.mid, msg.qos, msg.topic, bytes(msg.payload))
