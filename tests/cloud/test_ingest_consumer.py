"""Ingest's broker connection under the threads that share it: watermarks published from their own thread
while the network thread reconnects, and a bug in the network thread ending the process instead of leaving
it up and reading nothing."""

from __future__ import annotations

import os
import signal
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from support import mqtt_login, wait_until

from cloud.ingest.consumer import MAX_UNACKED_PUBLISHES, Inbound, MqttConsumer
from ioc.stack import Stack
from tests.conftest import ingest_settings


def take_over(stack: Stack, client_id: str) -> None:
    """Connect with the consumer's client id: the broker drops the consumer's connection (session takeover)."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    creds = mqtt_login(stack, "ingest")
    c.username_pw_set(creds["mqtt_username"], creds["mqtt_password"])
    c.connect(stack.mqtt_host, stack.mqtt_port)
    c.loop_start()
    time.sleep(0.1)
    c.disconnect()
    c.loop_stop()


def test_the_consumer_survives_takeovers_while_another_thread_publishes(stack: Stack) -> None:
    settings = ingest_settings(stack, retry_max_delay_s=1.0)
    crashes: list[str] = []
    consumer = MqttConsumer(settings, lambda _m: None, on_crash=crashes.append)
    consumer.start()
    assert consumer.connected.wait(10)
    stop = threading.Event()
    published = 0

    def hammer() -> None:
        nonlocal published
        while not stop.wait(0.01):  # ~2,000 a second, ingest's watermark bound
            for _ in range(20):
                consumer.publish(f"ack/v1/hammer-{published % 500}", b'{"v":1}')
                published += 1

    t = threading.Thread(target=hammer, daemon=True)
    t.start()
    try:
        for _ in range(6):
            take_over(stack, settings.instance)
            wait_until(lambda: not consumer.connected.is_set() or crashes, timeout=10, what="the takeover")
            wait_until(lambda: consumer.connected.is_set() or crashes, timeout=15, what="the reconnect")
            assert not crashes, "the network thread died while another thread published"
    finally:
        stop.set()
        t.join(5)
        consumer.stop()
    assert published > 1000


def test_a_bug_in_the_network_thread_is_reported_as_a_crash(stack: Stack) -> None:
    crashes: list[str] = []

    def broken_sink(m: Inbound) -> None:  # only for the probe: the session may hold earlier tests' messages
        if "crash-probe" in m.topic:
            raise ZeroDivisionError("a bug, not anything a client sent")

    settings = ingest_settings(stack)
    consumer = MqttConsumer(settings, broken_sink, on_crash=crashes.append)
    consumer.start()
    try:
        assert consumer.connected.wait(10)
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        creds = mqtt_login(stack, "simulator")
        pub.username_pw_set(creds["mqtt_username"], creds["mqtt_password"])
        pub.connect(stack.mqtt_host, stack.mqtt_port)
        pub.loop_start()
        pub.publish("tlm/v1/district-01/crash-probe/env", b"{}", qos=1).wait_for_publish(5)
        wait_until(lambda: crashes, timeout=10, what="the crash report")
        pub.loop_stop()
    finally:
        consumer.stop()
    assert crashes == ["mqtt"]



def test_large_publishes_from_another_thread_reach_the_broker_intact(stack: Stack) -> None:
    """Publishes bigger than the socket takes at once: paho writes what fits from the publishing thread and the
    network thread writes the rest. Neither may start a packet while the other is mid-way through one (the
    broker would see interleaved bytes and drop the connection, or store a corrupt message). A race: before the
    fix (one writer at a time, cloud/ingest/consumer.py) it failed in 1 of 6 runs here, never after it."""
    consumer = MqttConsumer(ingest_settings(stack), lambda _m: None)
    consumer.start()
    assert consumer.connected.wait(10)
    topics_sent = 40
    body = {i: bytes([65 + i % 26]) * (150_000 + i) for i in range(topics_sent)}  # each payload tells its topic
    try:
        infos = [consumer.publish(f"ack/v1/big-{i % topics_sent}", body[i % topics_sent]) for i in range(600)]
        for info in infos:
            info.wait_for_publish(30)
        assert consumer.generation == 1, "the broker dropped the connection: it received a corrupt stream"
    finally:
        consumer.stop()
    got: dict[str, bytes] = {}
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    creds = mqtt_login(stack, "admin")
    sub.username_pw_set(creds["mqtt_username"], creds["mqtt_password"])
    sub.on_message = lambda _c, _u, m: got.__setitem__(m.topic, bytes(m.payload))
    sub.connect(stack.mqtt_host, stack.mqtt_port)
    sub.subscribe("ack/v1/+", 1)
    sub.loop_start()
    try:
        wait_until(lambda: sum(t.startswith("ack/v1/big-") for t in got) == topics_sent, timeout=15,
                   what="every retained message")
    finally:
        sub.disconnect()
        sub.loop_stop()
    for i in range(topics_sent):
        assert got[f"ack/v1/big-{i}"] == body[i]


def test_publishes_the_broker_has_not_acknowledged_stay_bounded(stack: Stack) -> None:
    """A broker that stops acknowledging (here: frozen; in the field: saving a backlog) stops the watermarks at
    publish_room(): before, paho queued every one without bound (58,000 at 10,000 devices) and walked them all
    on each PUBACK. Once the broker acknowledges again the room comes back."""
    consumer = MqttConsumer(ingest_settings(stack), lambda _m: None)
    assert consumer.publish_room() == 0  # no session yet: nothing may go out before paho's resends
    consumer.start()
    assert consumer.connected.wait(10)
    full = consumer.publish_room()
    assert 0 < full <= MAX_UNACKED_PUBLISHES
    pid = stack.mosquitto.pid()
    assert pid is not None
    sent = 0
    os.kill(pid, signal.SIGSTOP)
    try:
        while consumer.publish_room() > 0 and sent < 10 * full:
            consumer.publish(f"ack/v1/frozen-{sent % 50}", b'{"v":1}')
            sent += 1
        assert sent == full
        assert consumer.publish_room() == 0
    finally:
        os.kill(pid, signal.SIGCONT)
    try:
        wait_until(lambda: consumer.publish_room() == full, timeout=15, what="the broker's acknowledgements")
    finally:
        consumer.stop()
