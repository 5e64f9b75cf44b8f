"""Nothing a client sends can stop ingest: a generated corpus of hostile payloads on every device topic.

The corpus (simulators/bad_payloads.hostile_corpus, seeded) mutates valid messages: nesting 1,100 to
20,000 deep, oversize, NUL, control characters in every kind of string field, NaN/Infinity/1e400,
numbers as strings or booleans, floats for integers, missing or boolean `v`, timestamps as strings, 0
or in year 2999, lone surrogates, invalid UTF-8, non-objects, truncated JSON, a metric on the wrong
stream. A few mutations are legal after all (a backslash in a counting line name, CR/LF/tab inside
event details) and must be stored exactly as sent.
"""

from __future__ import annotations

import collections
import random
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
from db_compare import stored_counts, stored_points, total_rows
from paho.mqtt.enums import CallbackAPIVersion
from support import login, wait_until

from cloud.db.devices import register_devices
from cloud.ingest.decode import Decoder
from cloud.ingest.registry import KnownDevice
from contract.messages import now_ms
from contract.profiles import get_profile
from ioc.stack import Stack
from simulators.bad_payloads import Hostile, hostile_corpus
from simulators.fleet import Fleet, FleetSpec
from simulators.publisher import FleetPublisher
from simulators.runner import SimRunner

MAX_PAYLOAD = 256 * 1024  # the ingest default


def test_the_decoder_dead_letters_every_hostile_payload_with_a_reason_and_never_raises() -> None:
    now = now_ms()
    devices = {"gw-1": KnownDevice("north", get_profile("env-gateway")),
               "cam-1": KnownDevice("north", get_profile("traffic-camera"))}
    decoder = Decoder(devices.get, MAX_PAYLOAD, max_future_ms=300_000, max_age_ms=90 * 86_400_000)
    corpus = hostile_corpus([(d, k.site, k.profile) for d, k in devices.items()], per_device=1500, now=now, seed=1)
    assert len({h.mutation for h in corpus}) >= 25, "the generator covers every kind of mutation"
    for h in corpus:
        d = decoder.decode(h.topic, h.payload, now)  # raises nothing, whatever the payload
        if h.expects_dead_letter:
            assert d.dead is not None, (h.mutation, h.payload[:200])
            assert d.dead.reason, h.mutation
            assert (d.points, d.status, d.config) == (0, None, None), (h.mutation, h.payload[:200])
        else:
            assert d.dead is None, (h.mutation, h.payload[:200], d.dead)
            assert d.points or d.config is not None, h.mutation


def _publish_all(stack: Stack, corpus: list[Hostile]) -> None:
    """QoS 1, waiting for every PUBACK: the broker holds each hostile message for ingest."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"hostile-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5)
    login(c, stack).connect(stack.mqtt_host, stack.mqtt_port)
    c.loop_start()
    try:
        infos = [c.publish(h.topic, h.payload, qos=1) for h in corpus]
        for info in infos:
            info.wait_for_publish(30)
    finally:
        c.loop_stop()
        c.disconnect()


def test_ingest_survives_hostile_payloads_on_every_device_topic_and_stores_every_valid_message_once(
    stack: Stack, db: psycopg.Connection, spawn_ingest: object, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:6]
    fleet = Fleet(FleetSpec(prefix=f"fz{tag}", gateways=6, cameras=2, interval_s=10, seed=5))
    # Hostile senders are registered devices of both profiles; each stays under the dead-letter rate
    # limit (60 a minute), so every payload is stored whole and can be matched below.
    hostile_devs = [(f"fzh{tag}-gw-{i}", "district-01", get_profile("env-gateway")) for i in range(5)]
    hostile_devs += [(f"fzh{tag}-cam-{i}", "district-02", get_profile("traffic-camera")) for i in range(5)]
    with psycopg.connect(stack.dsn) as conn:
        register_devices(conn, fleet.registrations() + [(d, s, p.profile) for d, s, p in hostile_devs])
    now = now_ms()
    corpus = hostile_corpus(hostile_devs, per_device=40, now=now, seed=int(tag, 16))
    # ...and on topics no registered device owns: made-up ids, ids no device could have.
    valid_body = b'{"v": 1, "device_id": "x", "boot_id": "b", "seq": 1, "samples": [{"ts": 1, "values": {"pm25": 1}}]}'
    junk_topics = [f"tlm/v1/district-01/ghost{tag}-{i}/env" for i in range(3)] + [
        f"tlm/v1/district-01/{'g' * 300}{tag}/env", f"state/v1/ghost {tag}", f"evt/v1/s/ghost{tag}/\\",
        f"cfg/v1/ghost{tag}-é😀/reported"]
    corpus += [Hostile(t, valid_body, "unknown-device") for t in junk_topics]
    proc = spawn_ingest()  # type: ignore[operator]
    proc.start()
    wait_until(lambda: "connected to mqtt" in proc.log(), what="ingest connected")
    time.sleep(0.5)  # its subscriptions confirmed: nothing published from here on is missed
    valid_ids = [d.device_id for d in fleet.devices]
    with FleetPublisher(fleet, stack.mqtt_host, stack.mqtt_port, login=stack.credentials("simulator")) as pub:
        runner = SimRunner(fleet, pub, seed=6)
        rng = random.Random(7)
        chunks = [corpus[i::8] for i in range(8)]
        for i, chunk in enumerate(chunks):  # valid and hostile traffic interleaved
            runner.burst(now - 3_600_000 + i * 100_000, rounds=5)
            _publish_all(stack, chunk)
            time.sleep(rng.uniform(0, 0.2))
        assert pub.drain(60), "broker did not acknowledge the valid traffic"
    expected = pub.sent.points()
    expected_counts = pub.sent.counts()
    try:
        wait_until(lambda: total_rows(db, valid_ids) >= len(expected), timeout=120, what="all valid points stored")
    except AssertionError as e:
        raise AssertionError(f"{e}\ningest log:\n{proc.log()[-4000:]}") from None
    wait_until(lambda: len(stored_counts(db, valid_ids)) >= len(expected_counts), timeout=60, what="valid counts")

    hostile_ids = [d for d, _, _ in hostile_devs]
    must_die = [h for h in corpus if h.expects_dead_letter]

    def missing() -> list[Hostile]:
        rows = db.execute("SELECT topic, payload, payload_size FROM dead_letters WHERE device_id = ANY(%s)"
                          " OR topic = ANY(%s)", (hostile_ids, junk_topics)).fetchall()
        seen = {(t, bytes(p), n) for t, p, n in rows}
        return [h for h in must_die if (h.topic, h.payload[:64 * 1024], len(h.payload)) not in seen]

    deadline = time.monotonic() + 60
    while missing() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [(h.mutation, h.topic, h.payload[:100]) for h in missing()] == [], "hostile payloads with no dead letter"
    assert proc.proc is not None
    assert proc.proc.poll() is None, f"ingest exited:\n{proc.log()[-3000:]}"

    # Every valid message stored exactly once, nothing else for those devices.
    assert stored_points(db, valid_ids) == expected
    assert stored_counts(db, valid_ids) == expected_counts
    # From hostile devices, only what the legal mutations carried (exact names, backslashes and all).
    assert stored_points(db, hostile_ids) == {}
    legal_counts = {k: v for h in corpus for k, v in h.stored_counts.items()}
    assert stored_counts(db, hostile_ids) == legal_counts
    legal_events = {e for h in corpus for e in h.stored_events}
    events = db.execute("SELECT device_id, kind, (extract(epoch FROM ts) * 1000)::bigint FROM events"
                        " WHERE device_id = ANY(%s)", (hostile_ids,)).fetchall()
    assert {(d, k, int(t)) for d, k, t in events} == legal_events
    reasons = db.execute("SELECT reason FROM dead_letters WHERE device_id = ANY(%s)", (hostile_ids,)).fetchall()
    assert all(r for (r,) in reasons)
    kinds = collections.Counter(h.mutation for h in must_die)
    assert len(kinds) >= 20, kinds
    # Still taking traffic after all of it: a fresh valid message is stored.
    with FleetPublisher(fleet, stack.mqtt_host, stack.mqtt_port, login=stack.credentials("simulator")) as pub2:
        SimRunner(fleet, pub2, seed=8).burst(now - 60_000, rounds=1)
        assert pub2.drain(30)
        fresh = pub2.sent.points()
    wait_until(lambda: set(fresh) <= set(stored_points(db, valid_ids)), what="fresh traffic stored")
    assert proc.proc.poll() is None
