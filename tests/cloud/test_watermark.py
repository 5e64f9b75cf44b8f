"""The watermark ingest publishes after its commits (ack/v1/{device}): exact, coalesced, never ahead of
the database -- also with two ingest processes splitting one device's messages in a share group."""

from __future__ import annotations

import json
import random
import threading
import uuid
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from support import login, wait_until

from cloud.ingest.watermark import BURST_S, WatermarkTracker, add_range, add_seq, envelope_key, runs
from contract import topics
from contract.messages import now_ms
from contract.watermark import MAX_RANGES, Watermark
from ioc.stack import Stack

SITE = "district-01"


def test_ranges_merge_and_stay_bounded() -> None:
    r: list[list[int]] = []
    for s in [5, 3, 4, 10, 1, 2, 2, 12]:
        add_seq(r, s)
    assert r == [[1, 5], [10, 10], [12, 12]]
    add_seq(r, 11)
    assert r == [[1, 5], [10, 12]]
    for s in range(100, 100 + 2 * MAX_RANGES, 2):  # every other seq: one range each
        add_seq(r, s)
    assert len(r) == MAX_RANGES
    assert r[-1] == [100 + 2 * MAX_RANGES - 2] * 2  # the newest kept, the oldest fell off


def test_merging_runs_matches_merging_one_seq_at_a_time() -> None:
    rng = random.Random(8)
    for _ in range(300):
        seqs = [rng.randrange(60) for _ in range(rng.randrange(1, 40))]
        one: list[list[int]] = []
        batched: list[list[int]] = []
        for s in seqs:
            add_seq(one, s, bound=None)
        for lo, hi in runs(sorted(seqs)):
            add_range(batched, lo, hi, bound=None)
        expect = [list(r) for r in runs(sorted(set(seqs)))]
        assert one == batched == expect, seqs


def test_the_envelope_is_read_from_the_top_level_only() -> None:
    plain = b'{"v":1,"device_id":"d","boot_id":"b1","seq":7,"samples":[]}'
    nested_first = b'{"v":1,"device_id":"d","events":[{"details":{"seq":3,"boot_id":"x"}}],"boot_id":"b1","seq":7}'
    assert envelope_key(plain) == ("b1", 7)
    assert envelope_key(nested_first) == ("b1", 7)
    assert envelope_key(b'{"v":1,"seq":7}') is None
    assert envelope_key(b'{"boot_id":"b","seq":1,"x":{"seq":2}' + b"[" * 5000) is None  # hostile: no crash


def test_watermarks_are_coalesced_per_device_and_rate_bounded() -> None:
    clock = [100.0]
    t = WatermarkTracker("i1", min_interval_s=1.0, clock=lambda: clock[0])
    t.committed([("d1", ("b", i)) for i in (5, 1, 3, 2)])  # any order within a batch
    t.committed([("d2", ("c", 9))])
    first = {tp: Watermark.model_validate_json(p) for tp, p in t.due()}
    assert set(first) == {topics.watermark("d1"), topics.watermark("d2")}
    assert first[topics.watermark("d1")].boots[0].ranges == [(1, 3), (5, 5)]
    t.committed([("d1", ("b", 4))])
    assert t.due() == []  # within the interval: held back, not lost
    clock[0] += 1.0
    ((_, payload),) = t.due()
    assert Watermark.model_validate_json(payload).boots[0].ranges == [(1, 5)]
    t.committed([("d1", ("b2", 100))])  # the device restarted
    clock[0] += 1.0
    ((_, payload),) = t.due()
    assert [b.boot_id for b in Watermark.model_validate_json(payload).boots] == ["b2", "b"]


def _device_of(topic: str) -> str:
    return topic.rsplit("/", 1)[-1]


def test_a_large_fleet_gets_its_watermarks_within_the_total_rate_oldest_first() -> None:
    """1,000 busy devices, 100 publishes/s: each device's interval stretches to about 10 s instead of one
    publish per device a second, the oldest waiting go first, and no commit goes unacknowledged."""
    clock = [0.0]
    t = WatermarkTracker("i1", min_interval_s=1.0, max_rate=100.0, clock=lambda: clock[0])
    devices = [f"d{i:04d}" for i in range(1000)]
    seq = dict.fromkeys(devices, 0)
    last_claim: dict[str, int] = {}
    first_wm: dict[str, float] = {}
    order: list[str] = []
    for _tick in range(int(30 / 0.25)):  # 30 s, the publisher's 0.25 s tick
        clock[0] += 0.25
        for d in devices:  # every device commits a message each tick
            seq[d] += 1
            t.committed([(d, ("b", seq[d]))])
        out = t.due()
        assert len(out) <= 100 * BURST_S  # never more than the rate allows (a burst of BURST_S at most)
        for topic, payload in out:
            d = _device_of(topic)
            (boot,) = Watermark.model_validate_json(payload).boots
            assert boot.ranges == [(1, seq[d])]  # everything committed so far, nothing more
            last_claim[d] = boot.seq
            first_wm.setdefault(d, clock[0])
            order.append(d)
    assert t.published <= 100 * 30 + 100 * BURST_S
    assert set(first_wm) == set(devices)
    assert max(first_wm.values()) <= 1000 / 100 + 1  # the last of the first round waited its turn, no longer
    assert order[:1000] == devices  # committed first (all in one tick, in this order), published first
    assert t.max_wait_s <= 1000 / 100 + 1
    assert t.oldest_wait_s() <= 1000 / 100 + 1
    for _ in range(int(12 / 0.25)):  # the fleet goes quiet: the queue drains, every commit is acknowledged
        clock[0] += 0.25
        for topic, payload in t.due():
            last_claim[_device_of(topic)] = Watermark.model_validate_json(payload).boots[0].seq
    assert last_claim == seq
    assert t.oldest_wait_s() == 0.0


def test_a_device_committing_again_keeps_its_place_in_the_queue() -> None:
    clock = [0.0]
    t = WatermarkTracker("i1", min_interval_s=0.0, max_rate=1 / BURST_S, clock=lambda: clock[0])  # a burst of 1
    t.committed([("a", ("b", 1)), ("b", ("b", 1)), ("c", ("b", 1))])
    assert [_device_of(tp) for tp, _ in t.due()] == ["a"]
    t.committed([("b", ("b", 2)), ("a", ("b", 2))])  # b waits already; a joins at the back
    published = []
    for _ in range(3):
        clock[0] += BURST_S  # one more publish allowed
        published += [_device_of(tp) for tp, _ in t.due()]
    assert published == ["b", "c", "a"]


def test_the_final_flush_publishes_every_waiting_device_whatever_the_rate() -> None:
    t = WatermarkTracker("i1", min_interval_s=1.0, max_rate=1.0, clock=lambda: 0.0)
    t.committed([(f"d{i}", ("b", 1)) for i in range(50)])
    assert len(t.due()) == 1  # the rate allows one now
    assert len(t.due(force=True)) == 49  # stopping: the rest at once
    assert t.due(force=True) == []


def test_a_device_the_contract_cannot_address_costs_no_one_else_their_watermark() -> None:
    t = WatermarkTracker("i1", min_interval_s=0.0)
    t.committed([("x" * 200, ("b", 1)), ("d1", ("b", 1))])  # a dead-lettered message of an over-long id
    assert [tp for tp, _ in t.due()] == [topics.watermark("d1")]


class _AckWatcher:
    """Subscribes to a device's watermark topic; on every watermark, records which claimed seqs the
    database did not have at that moment."""

    def __init__(self, stack: Stack, device: str, stored_seqs: Callable[[], set[int]]) -> None:
        self.claimed: set[int] = set()
        self.ahead: set[int] = set()
        self.count = 0
        self._stored = stored_seqs
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        login(self.client, stack).connect(stack.mqtt_host, stack.mqtt_port)
        self.client.subscribe(topics.watermark(device), qos=1)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        wm = Watermark.model_validate_json(msg.payload)
        claimed = {s for b in wm.boots for lo, hi in b.ranges for s in range(lo, hi + 1)}
        stored = self._stored()
        with self._lock:
            self.count += 1
            self.claimed |= claimed
            self.ahead |= claimed - stored

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _payload(device: str, seq: int, ts: int, valid: bool = True) -> str:
    value = 12.5 if valid else "junk"
    return json.dumps({"v": 1, "device_id": device, "boot_id": "boot-a", "seq": seq, "sent_at": now_ms(),
                       "samples": [{"ts": ts, "values": {"pm25": value}}]})


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_the_watermark_names_exactly_the_committed_messages(
    stack: Stack, db: psycopg.Connection, register_device: Callable[..., None],
    spawn_ingest: Callable[..., Any], processes: int,
) -> None:
    device = f"wm-{uuid.uuid4().hex[:8]}"
    register_device(device, SITE, "env-gateway")
    group = f"g{uuid.uuid4().hex[:6]}" if processes > 1 else ""
    procs = [spawn_ingest(group) for _ in range(processes)]
    for p in procs:
        p.start()
    base = now_ms() - 600_000

    def stored_seqs() -> set[int]:  # seq n carries ts base + n
        rows = db.execute("SELECT (extract(epoch FROM ts) * 1000)::bigint - %s FROM telemetry WHERE device_id = %s",
                          (base, device)).fetchall()
        dead = db.execute("SELECT payload FROM dead_letters WHERE device_id = %s", (device,)).fetchall()
        return {int(r[0]) for r in rows} | {json.loads(bytes(p))["seq"] for (p,) in dead}

    watcher = _AckWatcher(stack, device, stored_seqs)
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    login(pub, stack).connect(stack.mqtt_host, stack.mqtt_port)
    pub.loop_start()
    try:
        wait_until(lambda: all("connected to mqtt" in p.log() for p in procs), what="ingest processes connected")
        birth = {"v": 1, "device_id": device, "status": "online", "boot_id": "boot-a", "ts": now_ms()}
        pub.publish(topics.state(device), json.dumps(birth), qos=1).wait_for_publish(10)
        wait_until(lambda: db.execute("SELECT online FROM device_status WHERE device_id = %s", (device,)).fetchone(),
                   what="ingest subscribed (birth stored)")
        seqs = range(300)
        for n in seqs:
            pub.publish(topics.telemetry(SITE, device, "env"), _payload(device, n, base + n, valid=n % 50 != 7),
                        qos=1).wait_for_publish(10)
        wait_until(lambda: watcher.claimed >= set(seqs), timeout=60,
                   what=f"every message acknowledged end to end ({processes} processes)")
    finally:
        pub.loop_stop()
        pub.disconnect()
        watcher.close()
    assert watcher.ahead == set(), f"watermarks claimed messages the database did not have: {sorted(watcher.ahead)}"
    assert watcher.claimed == set(seqs)
    assert stored_seqs() == set(seqs)  # the invalid ones as dead letters: in the database, not to be resent


def test_a_broker_without_room_holds_watermarks_back_coalesced_not_lost() -> None:
    """due(room=...) hands out no more than the broker connection can take unacknowledged; the devices left
    out keep their place, and what they commit meanwhile goes out in their one next watermark."""
    clock = [0.0]
    t = WatermarkTracker("i1", min_interval_s=0.0, max_rate=10_000, clock=lambda: clock[0])
    t.committed([(f"d{i}", ("b", 1)) for i in range(10)])
    assert [_device_of(tp) for tp, _ in t.due(room=3)] == ["d0", "d1", "d2"]
    assert t.due(room=0) == []
    t.committed([("d3", ("b", 2)), ("d3", ("b", 3))])
    clock[0] += 1
    out = t.due(room=2)
    assert [_device_of(tp) for tp, _ in out] == ["d3", "d4"]  # oldest waiting first, as before
    assert Watermark.model_validate_json(out[0][1]).boots[0].ranges == [(1, 3)]  # one message for all three
    assert [_device_of(tp) for tp, _ in t.due(room=100)] == [f"d{i}" for i in range(5, 10)]


def test_room_is_not_exceeded_by_a_device_with_several_messages_unless_it_is_alone() -> None:
    """A device whose commits since its last watermark fell out of the bounded history needs several messages;
    it waits for room for all of them rather than overfilling the broker's window (alone, it goes anyway)."""
    t = WatermarkTracker("i1", min_interval_s=0.0, max_rate=10_000, clock=lambda: 0.0)
    t.committed([("many", ("b", s)) for s in range(0, 4 * MAX_RANGES, 2)])  # every other seq: 2x MAX_RANGES ranges
    t.committed([("one", ("b", 1))])
    out = t.due(room=2)
    assert [_device_of(tp) for tp, _ in out] == ["many"] * 2  # alone: not split, however large
    t.committed([("many", ("b", s)) for s in range(4 * MAX_RANGES, 8 * MAX_RANGES, 2)])  # 2 messages again
    assert [_device_of(tp) for tp, _ in t.due(room=2)] == ["one"]  # "many" no longer fits behind it
    assert [_device_of(tp) for tp, _ in t.due(room=2)] == ["many"] * 2
