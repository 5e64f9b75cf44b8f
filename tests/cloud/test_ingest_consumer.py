"""Ingest's broker connection under the threads that share it: watermarks published from their own thread
while the network thread reconnects, and a bug in the network thread ending the process instead of leaving
it up and reading nothing."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from support import mqtt_login, wait_until

from cloud.ingest.consumer import Inbound, MqttConsumer
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

