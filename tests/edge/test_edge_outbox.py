"""Outbox and drainer: durability, bounds, seq across restarts, live-before-backlog, batching."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contract.messages import CountsMessage, EventsMessage, MetricSample, TelemetryMessage
from edge.config import DrainSettings
from edge.drain import Drainer
from edge.outbox import Outbox, Record


def _rec(ts: int, metric: str = "pm25", value: float = 1.0) -> Record:
    return Record("tlm", "env", ts, MetricSample(ts=ts, values={metric: value}).model_dump_json())


def _open(path: Path, max_bytes: int = 10**9, max_age_s: float = 1e9) -> Outbox:
    return Outbox(path / "ob.sqlite3", max_bytes=max_bytes, max_age_s=max_age_s, sync="normal")


def test_rows_survive_reopen_until_acked(tmp_path: Path) -> None:
    ob = _open(tmp_path)
    ob.put([_rec(i) for i in range(10)], now_ms=0)
    rows = ob.fetch(limit=4)
    ob.ack(r.id for r in rows)
    ob.close()
    ob = _open(tmp_path)
    assert ob.depth == 6
    assert [json.loads(r.body)["ts"] for r in ob.fetch()] == list(range(4, 10))
    assert ob.ack([rows[0].id]) == 0  # acking twice is harmless


def test_byte_bound_drops_oldest_and_counts_persist(tmp_path: Path) -> None:
    one = len(_rec(100).body)  # every ts below has three digits: equal row sizes
    ob = _open(tmp_path, max_bytes=one * 10)
    ob.put([_rec(i) for i in range(100, 110)], now_ms=0)
    assert ob.dropped_total == 0
    dropped = ob.put([_rec(i) for i in range(110, 113)], now_ms=0)
    assert dropped == 3
    assert ob.size_bytes <= one * 10
    assert next(json.loads(r.body)["ts"] for r in ob.fetch()) == 103
    ob.close()
    assert _open(tmp_path, max_bytes=one * 10).dropped_total == 3


def test_age_bound(tmp_path: Path) -> None:
    ob = _open(tmp_path, max_age_s=60)
    ob.put([_rec(1)], now_ms=1_000)
    ob.put([_rec(2)], now_ms=100_000)
    assert ob.enforce_age(now_ms=100_000) == 1
    assert ob.depth == 1
    assert ob.dropped_total == 1


def test_seq_never_repeats_across_restarts(tmp_path: Path) -> None:
    ob = _open(tmp_path)
    first = [ob.next_seq() for _ in range(5)]
    ob.close()  # as if killed: the unused part of the reserved block is skipped
    ob = _open(tmp_path)
    second = ob.next_seq()
    assert first == sorted(first)
    assert second > first[-1]


def _drainer(ob: Outbox, **drain: object) -> Drainer:
    return Drainer(ob, "dev-1", "site-a", "boot-1", DrainSettings.model_validate(drain))


def test_messages_are_valid_contract_batches(tmp_path: Path) -> None:
    ob = _open(tmp_path)
    ob.put([_rec(i) for i in range(3)], now_ms=0)
    ob.put(
        [Record("evt", "threshold", 5, '{"ts":5,"kind":"threshold","severity":"warning","details":{}}')], 0
    )
    ob.put(
        [
            Record(
                "counts",
                "counts",
                6,
                '{"ts":6,"interval_s":60,"line":"a","class":"car","direction":"in","count":3}',
            )
        ],
        0,
    )
    d = _drainer(ob)
    d.reset()
    ob.put([_rec(10)], now_ms=0)
    msgs = {m.topic: m for m in [*d.next_messages(), *d.next_messages()]}
    assert set(msgs) == {
        "tlm/v1/site-a/dev-1/env",
        "evt/v1/site-a/dev-1/threshold",
        "tlm/v1/site-a/dev-1/counts",
    }
    tlm = TelemetryMessage.model_validate_json(msgs["tlm/v1/site-a/dev-1/env"].payload)
    assert tlm.device_id == "dev-1"
    assert tlm.boot_id == "boot-1"
    EventsMessage.model_validate_json(msgs["evt/v1/site-a/dev-1/threshold"].payload)
    assert (
        CountsMessage.model_validate_json(msgs["tlm/v1/site-a/dev-1/counts"].payload).counts[0].cls == "car"
    )


@pytest.mark.parametrize("order", ["oldest", "newest"])
def test_live_goes_before_backlog_which_drains_in_order(tmp_path: Path, order: str) -> None:
    ob = _open(tmp_path)
    ob.put([_rec(i) for i in range(10)], now_ms=0)  # backlog from an outage
    d = _drainer(ob, order=order, batch_size=4, messages_per_s=10_000)
    d.reset()  # connected
    ob.put([_rec(100), _rec(101)], now_ms=0)  # live
    sent: list[list[int]] = []
    while msgs := d.next_messages():
        for m in msgs:
            sent.append([s.ts for s in TelemetryMessage.model_validate_json(m.payload).samples])
            d.acked(m.row_ids)
    assert sent[0] == [100, 101]
    expected = (
        [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]] if order == "oldest" else [[6, 7, 8, 9], [2, 3, 4, 5], [0, 1]]
    )
    assert sent[1:] == expected
    assert ob.depth == 0


def test_backlog_is_throttled_until_flush(tmp_path: Path) -> None:
    ob = _open(tmp_path)
    ob.put([_rec(i) for i in range(10)], now_ms=0)
    d = _drainer(ob, batch_size=2, messages_per_s=0.001)
    d.reset()
    assert len(d.next_messages()) == 1  # one token to start with
    assert d.next_messages() == []  # the bucket refills at 0.001/s
    ob.put([_rec(50)], now_ms=0)
    assert [json.loads(m.payload)["samples"][0]["ts"] for m in d.next_messages()] == [50]  # live not starved
    d.flush()
    batches = 0
    while d.next_messages():
        batches += 1
    assert batches == 4
    assert not d.backlog_pending


def test_unacked_rows_are_sent_again_after_reconnect(tmp_path: Path) -> None:
    ob = _open(tmp_path)
    d = _drainer(ob)
    d.reset()
    ob.put([_rec(1), _rec(2)], now_ms=0)
    (m,) = d.next_messages()
    assert d.next_messages() == []
    d.reset()  # link dropped before the PUBACK
    d.flush()
    (again,) = d.next_messages()
    assert again.row_ids == m.row_ids
    assert json.loads(again.payload)["seq"] > json.loads(m.payload)["seq"]
