"""The registry's MQTT side (aiomqtt): publishes desired config and commands, receives command replies.

One connection with a reconnect loop (jittered, capped backoff, as aiomqtt's own docs advise); a publish
while the broker is away fails at once with BrokerUnavailableError so the API can answer 503 instead of
hanging. Replies come back on `rsp/v1/{device_id}/{client_id}`, a topic only this registry reads.

The API may run as several processes (`ioc api --workers N`): each connects with its own MQTT client id
(`{client_id}-{random}`: one id would make the broker drop the others), and all read the replies through one
MQTT 5 shared subscription (`$share/{client_id}/...`), so each reply reaches exactly one of them, whichever
sent the command (a reply only updates the command's row in the database).
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from collections.abc import Awaitable, Callable

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud.api.settings import ApiSettings
from contract import topics

log = logging.getLogger(__name__)

ReplyHandler = Callable[[str, bytes | None, bytes], Awaitable[None]]  # device id, correlation data, payload


class BrokerUnavailableError(RuntimeError):
    """The broker is not connected right now; nothing was published."""


class Broker:
    def __init__(self, settings: ApiSettings, on_reply: ReplyHandler) -> None:
        self._settings = settings
        self._on_reply = on_reply
        self._client: aiomqtt.Client | None = None
        self._identifier = f"{settings.client_id}-{secrets.token_hex(4)}"  # no session is kept: any id will do
        self.connected = asyncio.Event()

    @property
    def reply_filter(self) -> str:
        s = self._settings
        return f"$share/{s.client_id}/" + topics.command_response(topics.SINGLE_LEVEL, s.client_id)

    @property
    def identifier(self) -> str:
        """This process's MQTT client id; `client_id` names the registry (its reply topics) for all of them."""
        return self._identifier

    def response_topic(self, device_id: str) -> str:
        return topics.command_response(device_id, self._settings.client_id)

    async def run(self) -> None:
        """Connect, subscribe to replies, dispatch them; reconnect until cancelled."""
        s = self._settings
        attempt = 0
        while True:
            try:
                async with aiomqtt.Client(
                    s.mqtt_host, s.mqtt_port, username=s.mqtt_username, password=s.mqtt_password,
                    identifier=self.identifier, protocol=aiomqtt.ProtocolVersion.V5, keepalive=30,
                ) as client:
                    await client.subscribe(self.reply_filter, qos=1)
                    self._client = client
                    self.connected.set()
                    attempt = 0
                    log.info("registry connected to mqtt://%s:%d", s.mqtt_host, s.mqtt_port)
                    async for message in client.messages:
                        await self._dispatch(message)
            except aiomqtt.MqttError as exc:
                log.warning("registry mqtt connection: %s", exc)
            finally:
                self._client = None
                self.connected.clear()
            attempt += 1
            await asyncio.sleep(min(30.0, 0.5 * 2 ** min(attempt, 6)) * random.uniform(0.5, 1.0))

    async def _dispatch(self, message: aiomqtt.Message) -> None:
        parts = message.topic.value.split("/")
        if len(parts) != 4:
            return
        props = message.properties
        correlation = getattr(props, "CorrelationData", None) if props is not None else None
        payload = message.payload if isinstance(message.payload, bytes | bytearray) else b""
        try:
            await self._on_reply(parts[2], correlation, bytes(payload))
        except Exception:  # a bad reply must never end the listener
            log.exception("command reply on %s could not be handled", message.topic.value)

    async def publish(self, topic: str, payload: bytes | str, *, retain: bool = False,
                      expiry_s: int | None = None, response_topic: str | None = None,
                      correlation: bytes | None = None, timeout_s: float = 10.0) -> None:
        """QoS 1; returns once the broker acknowledged."""
        client = self._client
        if client is None:
            raise BrokerUnavailableError("the MQTT broker is not reachable from the registry right now")
        props = Properties(PacketTypes.PUBLISH)
        if expiry_s is not None:
            props.MessageExpiryInterval = expiry_s
        if response_topic is not None:
            props.ResponseTopic = response_topic
        if correlation is not None:
            props.CorrelationData = correlation
        try:
            await client.publish(topic, payload, qos=1, retain=retain, properties=props, timeout=timeout_s)
        except aiomqtt.MqttError as exc:
            raise BrokerUnavailableError(f"publish to the broker failed: {exc}") from None
