"""The MQTT side of ingest: a persistent MQTT 5 session on a shared subscription, manual acks.

The broker keeps unacknowledged messages in our session (clean start off, session expiry set), so a
message is only gone from the broker once we acknowledged it, after the database commit. Receive
Maximum bounds how many are in flight, which is also our back-pressure when the database is slow.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
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


class MqttConsumer:
    def __init__(self, settings: IngestSettings, sink: Callable[[Inbound], None]) -> None:
        self._s = settings
        self._sink = sink
        self.generation = 0
        self.connected = threading.Event()  # set once the broker confirmed our subscriptions
        c = FastPathClient(CallbackAPIVersion.VERSION2, client_id=settings.instance,
                           protocol=mqtt.MQTTv5, manual_ack=True)
        if settings.mqtt_username:
            c.username_pw_set(settings.mqtt_username, settings.mqtt_password)
        c.reconnect_delay_set(min_delay=1, max_delay=int(settings.retry_max_delay_s))
        if log.isEnabledFor(logging.DEBUG):
            c.enable_logger(logging.getLogger("paho"))  # packet trace, only when asked for
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_fast_publish = self._on_fast_publish
        c.on_message = self._on_message  # the rare message paho decodes itself (e.g. one with properties)
        c.on_subscribe = self._on_subscribe
        c.on_connect_fail = lambda *_: log.warning("cannot reach the broker at mqtt://%s:%s; retrying",
                                                   settings.mqtt_host, settings.mqtt_port)
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
        self._client.connect_async(self._s.mqtt_host, self._s.mqtt_port, keepalive=30,
                                   clean_start=False, properties=props)
        self._client.loop_start()

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def ack(self, items: Sequence[Inbound]) -> int:
        """PUBACK in arrival order; items from a previous connection are skipped (the broker resends them)."""
        gen = self.generation
        mids = [it.mid for it in items if it.qos == 1 and it.generation == gen]
        self._client.ack_many(mids)
        return len(mids)

    def _on_connect(self, client: mqtt.Client, _ud: Any, flags: mqtt.ConnectFlags, rc: ReasonCode,
                    _props: Properties | None) -> None:
        if rc.is_failure:
            log.error("broker refused the connection: %s", rc)  # stay disconnected; paho retries
            return
        self.generation += 1
        client.subscribe(self.subscriptions())
        log.info("connected to mqtt://%s:%s as %s (session present: %s)", self._s.mqtt_host,
                 self._s.mqtt_port, self._s.instance, flags.session_present)

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
        if rc.value != 0:
            log.warning("lost the broker (%s); reconnecting", rc)

    def _on_fast_publish(self, mid: int, qos: int, topic: str, payload: bytes) -> None:
        self._sink(Inbound(mid, qos, topic, payload, time.monotonic(), self.generation))

    def _on_message(self, _c: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        self._on_fast_publish(msg.mid, msg.qos, msg.topic, bytes(msg.payload))
