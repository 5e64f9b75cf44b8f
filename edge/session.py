"""The device's one MQTT 5 session: connect, birth, last will, reconnect, and the in-flight window.

Lifecycle (modelled on aiomqtt's reconnect loop): a dedicated thread owns a paho client per
connection attempt and drives it with `loop()`. A fresh client per attempt means paho never
replays its own in-memory queue after a reconnect -- the outbox is the queue; paho only ever holds
the `inflight_window` messages the drainer handed it. Between attempts the thread sleeps a jittered
exponential backoff capped at `backoff_max_s`.

`connected` becomes true only on a successful CONNACK (a refused CONNECT is logged with its reason
code and retried with backoff), and false as soon as the link drops. On connect: subscribe to the
device's desired-config and command topics and its watermark (`ack/v1/{id}`, handed to the drainer),
publish the retained birth (`StatusMessage` online, the will's timestamp),
and reset the drainer so unacknowledged rows are sent again. The last will (retained offline
status) is set on every client; a clean `stop()` publishes the offline status itself.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from contract import topics
from contract.messages import StatusMessage, now_ms
from edge.config import BrokerConfig
from edge.drain import Drainer, OutMessage

log = logging.getLogger(__name__)

IDLE_TICK_S = 0.1  # how often the session thread looks for new outbox rows
STABLE_AFTER_S = 10.0  # a connection that lasted this long resets the backoff


def backoff_delay(attempt: int, lo: float, hi: float, rng: random.Random) -> float:
    """Jittered ("equal jitter") exponential backoff: half fixed, half random, capped."""
    ceiling = min(hi, lo * (2 ** min(attempt, 30)))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


class Session:
    def __init__(
        self,
        *,
        device_id: str,
        broker: BrokerConfig,
        drainer: Drainer,
        birth: Callable[[], StatusMessage],
        on_message: Callable[[mqtt.MQTTMessage], None],
        on_connected: Callable[[], None] | None = None,
    ) -> None:
        self.device_id = device_id
        self._watermark_topic = topics.watermark(device_id)
        self.broker = broker
        self.drainer = drainer
        self._birth = birth
        self._on_message = on_message
        self._on_connected = on_connected
        self._client: mqtt.Client | None = None
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._rebirth = threading.Event()
        self._stop_reason = "shutdown"
        self._inflight: dict[int, OutMessage] = {}
        self._thread: threading.Thread | None = None
        self._rng = random.Random()
        self.connects = 0
        self.connection_ts = now_ms()  # the ts of this connection's will and birth (see _new_client)
        self.last_refusal: str | None = None

    # -- public API ------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float | None = None) -> bool:
        return self._connected.wait(timeout)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"mqtt-session-{self.device_id}", daemon=True)
        self._thread.start()

    def stop(self, reason: str = "shutdown", timeout: float = 5.0) -> None:
        """Publish the offline status (retained), disconnect cleanly and join the thread."""
        self._stop_reason = reason
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> Session:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def rebirth(self) -> None:
        """Publish a fresh birth (e.g. a new config version) by starting a new connection: a clean
        DISCONNECT (the broker drops the old will unsent), then CONNECT with a new will and a birth that
        share a new timestamp. Re-publishing the birth on the same connection could not do it: with the
        old ts ingest keeps the status it has, with a newer ts ingest would drop the will that carries
        the old one."""
        self._rebirth.set()

    def publish_direct(
        self, topic: str, payload: bytes | str, *, retain: bool = False, properties: Properties | None = None
    ) -> bool:
        """QoS 1 publish outside the outbox (status, reported config, command replies); False if offline."""
        client = self._client
        if client is None or not self.connected:
            return False
        info = client.publish(topic, payload, qos=1, retain=retain, properties=properties)
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    # -- connection loop -----------------------------------------------------------------------

    def _new_client(self) -> mqtt.Client:
        b = self.broker
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.device_id, protocol=mqtt.MQTTv5)
        if b.password is not None:
            client.username_pw_set(b.username or self.device_id, b.password.get_secret_value())
        elif b.username:
            client.username_pw_set(b.username)
        if b.tls is not None:
            client.tls_set(
                ca_certs=str(b.tls.ca_file) if b.tls.ca_file else None,
                certfile=str(b.tls.cert_file) if b.tls.cert_file else None,
                keyfile=str(b.tls.key_file) if b.tls.key_file else None,
            )
            client.tls_insecure_set(b.tls.insecure)
        # One timestamp for this connection's will, birth and every re-birth: ingest applies a status only
        # when its ts is newer, or equal and offline, so the will must never look older than the birth.
        self.connection_ts = now_ms()
        birth = self._birth()
        will = StatusMessage(
            device_id=self.device_id,
            status="offline",
            boot_id=birth.boot_id,
            ts=self.connection_ts,
            firmware=birth.firmware,
            profile=birth.profile,
            config_version=birth.config_version,
            reason="connection lost",
        )
        client.will_set(
            topics.state(self.device_id), will.model_dump_json(exclude_none=True), qos=1, retain=True
        )
        # The drainer bounds what is in flight; paho must never queue on its own account.
        client.max_inflight_messages_set(b.inflight_window + 32)
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_publish = self._handle_publish
        client.on_message = self._handle_message
        return client

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            client = self._new_client()
            self._client = client
            started = time.monotonic()
            try:
                client.connect(
                    self.broker.host, self.broker.port, keepalive=self.broker.keepalive_s, clean_start=True
                )
            except (OSError, ValueError) as exc:
                log.warning("mqtt connect to %s:%d failed: %s", self.broker.host, self.broker.port, exc)
            else:
                self._serve(client)
            self._connected.clear()
            self._inflight.clear()
            if self._stop.is_set():
                break
            if self._rebirth.is_set():
                self._rebirth.clear()
                continue  # asked for: reconnect at once
            attempt = 0 if time.monotonic() - started > STABLE_AFTER_S else attempt + 1
            delay = backoff_delay(attempt, self.broker.backoff_min_s, self.broker.backoff_max_s, self._rng)
            log.info("mqtt reconnect in %.2f s (attempt %d)", delay, attempt)
            self._stop.wait(delay)
        self._client = None

    def _serve(self, client: mqtt.Client) -> None:
        """Run one connection until it drops or stop() is called."""
        while not self._stop.is_set():
            rc = client.loop(timeout=IDLE_TICK_S)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                if self.connected:
                    log.warning("mqtt connection lost: %s", mqtt.error_string(rc))
                break
            if self.connected:
                if self._rebirth.is_set():
                    client.disconnect()  # reason 0: the will is discarded; _run connects again at once
                    client.loop(timeout=IDLE_TICK_S)
                    break
                self.drainer.tick()
                self._pump(client)
        else:
            self._goodbye(client)
        with contextlib.suppress(OSError):
            client.disconnect()  # closes the socket if the loop left it open (refused CONNACK)

    def _pump(self, client: mqtt.Client) -> None:
        """Top the in-flight window up from the outbox."""
        window = self.broker.inflight_window
        while len(self._inflight) < window:
            messages = self.drainer.next_messages()
            if not messages:
                return
            for m in messages:
                info = client.publish(m.topic, m.payload, qos=1)
                if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    return  # link is going down; the rows are resent after the reconnect
                self._inflight[info.mid] = m

    def _goodbye(self, client: mqtt.Client) -> None:
        """Clean stop: retained offline status, wait briefly for its PUBACK, DISCONNECT (no will)."""
        if not self.connected:
            return
        birth = self._birth()
        status = birth.model_copy(update={"status": "offline", "ts": now_ms(), "reason": self._stop_reason})
        info = client.publish(
            topics.state(self.device_id), status.model_dump_json(exclude_none=True), qos=1, retain=True
        )
        deadline = time.monotonic() + 2.0
        while not info.is_published() and time.monotonic() < deadline:
            if client.loop(timeout=0.05) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
        client.disconnect()
        self._connected.clear()

    # -- paho callbacks (session thread) ---------------------------------------------------------

    def _handle_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            # Never mark ourselves connected after a refused CONNECT (bad credentials, ACL, ...).
            self.last_refusal = str(reason_code)
            log.error("mqtt CONNECT refused by %s:%d: %s", self.broker.host, self.broker.port, reason_code)
            return
        self.connects += 1
        self.last_refusal = None
        subs = [(topics.config_desired(self.device_id), 1), (topics.command(self.device_id, "+"), 1)]
        if self.drainer.forget_on == "watermark":
            subs.append((self._watermark_topic, 1))
        client.subscribe(subs)
        birth = self._birth().model_copy(update={"ts": self.connection_ts})
        client.publish(
            topics.state(self.device_id), birth.model_dump_json(exclude_none=True), qos=1, retain=True
        )
        self._inflight.clear()
        self.drainer.reset()
        self._connected.set()
        log.info("mqtt connected to %s:%d (connection %d)", self.broker.host, self.broker.port, self.connects)
        if self._on_connected is not None:
            self._on_connected()

    def _handle_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._connected.clear()

    def _handle_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        sent = self._inflight.pop(mid, None)
        if sent is None:
            return  # a direct publish (status, reported, reply)
        if reason_code.is_failure:
            self.drainer.rejected(sent, str(reason_code))
        else:
            self.drainer.acked(sent)

    def _handle_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            if message.topic == self._watermark_topic:
                self.drainer.watermark(bytes(message.payload))
                return
            self._on_message(message)
        except Exception:
            log.exception("handler failed for message on %s", message.topic)


def reply_properties(correlation: bytes | None) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    if correlation is not None:
        props.CorrelationData = correlation
    return props
