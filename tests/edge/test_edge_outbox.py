"""Outbox and drainer: durability, bounds, seq across restarts, live-before-backlog, batching."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from contract.messages import CountsMessage, EventsMessage, MetricSample, TelemetryMessage
from contract.watermark import BootAck, Watermark
from edge.config import DrainSettings
from edge.drain import Drainer, OutMessage
from edge.outbox import Outbox, Record, Row


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
            d.acked(m)
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


# -- end-to-end acknowledgement: rows stay after PUBACK until ingest's watermark covers them -------------


def _watermark(boot: str, *ranges: tuple[int, int], device: str = "dev-1") -> bytes:
    return Watermark(
        device_id=device, ts=1, boots=[BootAck(boot_id=boot, seq=ranges[-1][1], ranges=list(ranges))]
    ).model_dump_json().encode()


def _wm_drainer(ob: Outbox, boot: str = "boot-1", resend_after_s: float = 0.2) -> Drainer:
    d = Drainer(ob, "dev-1", "site-a", boot, DrainSettings(batch_size=1, messages_per_s=10_000),
                forget_on="watermark", resend_after_s=resend_after_s)
    d.reset()
    d.flush()
    return d


def _send_all(d: Drainer) -> list[OutMessage]:
    sent: list[OutMessage] = []
    while msgs := d.next_messages():
        for m in msgs:
            d.acked(m)  # the broker's PUBACK
            sent.append(m)
    return sent


def _seqs(ms: list[OutMessage]) -> list[int]:
    return [json.loads(m.payload)["seq"] for m in ms]


def test_a_row_is_forgotten_only_when_a_watermark_covers_its_message(tmp_path: Path) -> None:
    ob = _open(tmp_path)
    d = _wm_drainer(ob, resend_after_s=3600)
    ob.put([_rec(i) for i in range(5)], now_ms=0)
    seqs = _seqs(_send_all(d))
    assert ob.depth == 5  # at the broker: kept...
    assert d.next_messages() == []  # ...but not sent again
    assert d.watermark(_watermark("boot-1", (seqs[0], seqs[1]), (seqs[3], seqs[3]))) == 3
    assert sorted(json.loads(r.body)["ts"] for r in _all_rows(ob)) == [2, 4]
    assert d.watermark(_watermark("other-boot", (0, 10**6))) == 0  # another boot's seqs are other messages
    assert d.watermark(_watermark("boot-1", (0, 10**6), device="dev-2")) == 0  # not ours
    assert d.watermark(b'{"v":1,"device_id":"dev-1","boots":"junk"}') == 0  # refused, logged
    assert ob.depth == 2


def test_rows_the_watermark_skipped_are_sent_again(tmp_path: Path) -> None:
    """A later message is in the database, this one is not (lost by a crashed broker): send it again."""
    ob = _open(tmp_path)
    d = _wm_drainer(ob)
    ob.put([_rec(i) for i in range(3)], now_ms=0)
    first = _seqs(_send_all(d))
    d.watermark(_watermark("boot-1", (first[2], first[2])))  # the message of ts 0 and 1 were lost
    again: list[OutMessage] = []
    deadline = time.monotonic() + 10
    while len(again) < 2 and time.monotonic() < deadline:
        d.tick()
        again += _send_all(d)
        time.sleep(0.05)
    assert sorted(json.loads(m.payload)["samples"][0]["ts"] for m in again) == [0, 1]
    assert min(_seqs(again)) > first[2]  # new messages, new seqs
    d.watermark(_watermark("boot-1", (first[2], first[2]), (min(_seqs(again)), max(_seqs(again)))))
    assert ob.depth == 0


def test_after_a_reconnect_rows_no_watermark_covers_are_sent_again_once(tmp_path: Path) -> None:
    ob = _open(tmp_path)
    d = _wm_drainer(ob)
    ob.put([_rec(i) for i in range(3)], now_ms=0)
    _send_all(d)
    ob.close()
    ob = _open(tmp_path)  # the device restarted: a new boot, the old boot's rows at the broker
    d = _wm_drainer(ob, boot="boot-2")
    assert d.next_messages() == []  # held while a watermark may still come
    again: list[OutMessage] = []
    deadline = time.monotonic() + 10
    while len(again) < 3 and time.monotonic() < deadline:
        d.tick()
        again += _send_all(d)
        time.sleep(0.05)
    assert sorted(json.loads(m.payload)["samples"][0]["ts"] for m in again) == [0, 1, 2]
    assert {json.loads(m.payload)["boot_id"] for m in again} == {"boot-2"}
    time.sleep(0.5)
    d.tick()
    assert _send_all(d) == []  # sent again once per connection, not on every tick
    d.watermark(_watermark("boot-2", (min(_seqs(again)), max(_seqs(again)))))
    assert ob.depth == 0


def test_an_old_boots_rows_are_forgotten_by_its_watermark_after_a_restart(tmp_path: Path) -> None:
    ob = _open(tmp_path)
    d = _wm_drainer(ob, resend_after_s=3600)
    ob.put([_rec(i) for i in range(3)], now_ms=0)
    seqs = _seqs(_send_all(d))
    ob.close()
    ob = _open(tmp_path)
    d = _wm_drainer(ob, boot="boot-2", resend_after_s=3600)
    d.watermark(_watermark("boot-1", (seqs[0], seqs[-1])))  # the retained watermark, on subscribe
    assert ob.depth == 0


def _all_rows(ob: Outbox) -> list[Row]:
    """Rows in any state, read from the file as another process would."""
    with sqlite3.connect(ob.path) as db:
        return [Row(*r) for r in db.execute("SELECT id, kind, leaf, body FROM outbox ORDER BY id")]


def test_the_byte_bound_lets_go_of_rows_the_broker_has_before_unsent_ones(tmp_path: Path) -> None:
    one = len(_rec(100).body)
    ob = _open(tmp_path, max_bytes=one * 6)
    d = _wm_drainer(ob, resend_after_s=3600)
    ob.put([_rec(i) for i in range(100, 104)], now_ms=0)
    _send_all(d)  # four rows at the broker, waiting for a watermark
    ob.put([_rec(i) for i in range(200, 204)], now_ms=0)  # four unsent: over the bound by two
    assert ob.dropped_total == 0  # rows at the broker went first: nothing lost yet
    assert sorted(json.loads(r.body)["ts"] for r in _all_rows(ob)) == [102, 103, 200, 201, 202, 203]
    ob.put([_rec(i) for i in range(300, 305)], now_ms=0)
    assert ob.dropped_total == 3  # then the oldest unsent ones, counted
    assert sorted(json.loads(r.body)["ts"] for r in _all_rows(ob)) == [203, 300, 301, 302, 303, 304]


# -- the tail: rows above every covered seq, with no later message to show them missing ------------------


class _Clock:
    """The drainer's clock, moved by the test: resend timing without sleeping."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _clocked_drainer(ob: Outbox, clock: _Clock, resend_after_s: float = 2.0, resend_max_s: float = 60.0) -> Drainer:
    d = Drainer(ob, "dev-1", "site-a", "boot-1", DrainSettings(batch_size=1, messages_per_s=10_000),
                forget_on="watermark", resend_after_s=resend_after_s, resend_max_s=resend_max_s, clock=clock)
    d.reset()
    d.flush()
    return d


def _run_until(d: Drainer, clock: _Clock, until: float) -> list[tuple[float, OutMessage]]:
    """Tick once a second up to `until`; every message sent again is acknowledged by the broker."""
    again: list[tuple[float, OutMessage]] = []
    while clock.now < until:
        clock.now += 1.0
        d.tick()
        again += [(clock.now, m) for m in _send_all(d)]
    return again


def _ts(m: OutMessage) -> int:
    return int(json.loads(m.payload)["samples"][0]["ts"])


def test_the_tail_no_watermark_covers_is_probed_then_sent_again(tmp_path: Path) -> None:
    """The last messages were lost (broker crash, or ingest died before its watermark) and the device has
    nothing newer to send: the newest goes again, and once it is stored the rest follows."""
    ob, clock = _open(tmp_path), _Clock()
    d = _clocked_drainer(ob, clock)
    ob.put([_rec(i) for i in range(3)], now_ms=0)
    first = _seqs(_send_all(d))
    d.watermark(_watermark("boot-1", (first[0], first[0])))  # ts 1 and 2 never reach the database
    probe = _run_until(d, clock, 5)
    assert [(t, _ts(m)) for t, m in probe] == [(3, 2)]  # the newest (2 s after the first tick that saw it acked)
    probe_seq = _seqs([m for _, m in probe])[0]
    d.watermark(_watermark("boot-1", (first[0], first[0]), (probe_seq, probe_seq)))
    rest = _run_until(d, clock, 8)
    assert [(t, _ts(m)) for t, m in rest] == [(7, 1)]  # now a hole below a stored seq
    d.watermark(_watermark("boot-1", (first[0], first[0]), (probe_seq, probe_seq), (_seqs([rest[0][1]])[0],) * 2))
    assert ob.depth == 0


def test_a_silent_ingest_gets_one_probe_per_doubling_wait(tmp_path: Path) -> None:
    """No watermark at all (ingest stopped): the tail is not resent wholesale every resend_after_s."""
    ob, clock = _open(tmp_path), _Clock()
    d = _clocked_drainer(ob, clock, resend_after_s=2, resend_max_s=60)
    ob.put([_rec(i) for i in range(50)], now_ms=0)
    _send_all(d)
    again = _run_until(d, clock, 400)
    assert [_ts(m) for _, m in again] == [49] * len(again)  # always the newest row, never the other 49
    assert [t for t, _ in again] == [3, 7, 15, 31, 63, 123, 183, 243, 303, 363]  # waits 4, 8, ... 60, 60
    # ingest is back and stores the last probe: the wait starts over and the rest is sent once
    d.watermark(_watermark("boot-1", (_seqs([again[-1][1]])[0],) * 2))
    rest = _run_until(d, clock, 403)  # the holes rule, resend_after_s after that watermark
    assert sorted(_ts(m) for _, m in rest) == list(range(49))
    d.watermark(_watermark("boot-1", *[(s, s) for s in sorted(_seqs([m for _, m in rest]))]))
    assert ob.depth == 0


def test_no_probe_while_watermarks_make_progress(tmp_path: Path) -> None:
    """Ingest behind, draining a queue in order: each watermark covers more, so nothing is sent again."""
    ob, clock = _open(tmp_path), _Clock()
    d = _clocked_drainer(ob, clock)
    ob.put([_rec(i) for i in range(20)], now_ms=0)
    seqs = _seqs(_send_all(d))
    for covered in range(1, 21):
        assert _run_until(d, clock, clock.now + 1) == []
        d.watermark(_watermark("boot-1", (seqs[0], seqs[covered - 1])))
    assert d.resent == 0
    assert ob.depth == 0
