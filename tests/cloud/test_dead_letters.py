"""Dead letters stay bounded: a payload budget per device, topic and minute, retention, size in `ioc status`."""

from __future__ import annotations

import io
import uuid

import psycopg
from rich.console import Console

from cloud.db.maintenance import run_maintenance
from cloud.ingest.deadletters import DEAD_PAYLOAD_KEEP, TRUNCATED_KEEP, DeadLetterLimiter
from cloud.ingest.decode import DeadLetter, Decoded, Decoder
from cloud.ingest.registry import KnownDevice
from cloud.ingest.writer import BatchWriter
from contract.messages import now_ms
from contract.profiles import get_profile
from ioc.stack import Stack
from ioc.status import read_status
from ioc.views import status_view

MINUTE = 60_000


def test_beyond_the_rate_limit_payloads_are_stored_truncated_with_the_count() -> None:
    limiter = DeadLetterLimiter(per_device_per_minute=3, per_topic_per_minute=100, total_per_minute=1000)
    t0 = 100 * MINUTE
    junk = b"j" * 100_000
    kept = [limiter.bound(DeadLetter("tlm/v1/s/d1/env", "malformed JSON", junk, "d1"), t0 + i) for i in range(5)]
    assert [len(d.payload) for d in kept] == [DEAD_PAYLOAD_KEEP] * 3 + [TRUNCATED_KEEP] * 2
    assert all(d.size == 100_000 for d in kept)
    assert "malformed JSON [payload truncated to 256 of 100000 bytes: dead letter 5 this minute from device 'd1'" \
        in kept[4].reason
    other = limiter.bound(DeadLetter("tlm/v1/s/d2/env", "x", junk, "d2"), t0 + 10)
    assert len(other.payload) == DEAD_PAYLOAD_KEEP, "another device has its own budget"
    later = limiter.bound(DeadLetter("tlm/v1/s/d1/env", "x", junk, "d1"), t0 + MINUTE)
    assert len(later.payload) == DEAD_PAYLOAD_KEEP, "a new minute, a new budget"


def test_a_flood_under_made_up_device_ids_is_bounded_by_topic_and_in_total() -> None:
    limiter = DeadLetterLimiter(per_device_per_minute=60, per_topic_per_minute=5, total_per_minute=20)
    same_topic = [limiter.bound(DeadLetter("state/v1/x", "r", b"p" * 1000, None), 0) for _ in range(6)]
    assert len(same_topic[-1].payload) == TRUNCATED_KEEP
    ghosts = [limiter.bound(DeadLetter(f"tlm/v1/s/g{i}/env", "unknown device", b"p" * 1000, f"g{i}"), 1)
              for i in range(30)]
    assert sum(len(d.payload) == 1000 for d in ghosts) == 20 - 6


def test_junk_from_one_device_takes_a_bounded_amount_of_disk(
    stack: Stack, db: psycopg.Connection, register_device: object
) -> None:
    """The issue's attack: 1,000 junk payloads of 100 KB. Without the budget they took 68.6 MB."""
    dev = f"dl-{uuid.uuid4().hex[:8]}"
    register_device(dev)  # type: ignore[operator]
    known = {dev: KnownDevice("district-01", get_profile("env-gateway"))}
    decoder = Decoder(known.get, max_payload_bytes=256 * 1024, max_future_ms=300_000, max_age_ms=86_400_000)
    now = now_ms()
    topic = f"tlm/v1/district-01/{dev}/env"
    batch = [decoder.decode(topic, b"{" + uuid.uuid4().bytes.hex().encode() * 3200, now) for _ in range(1000)]
    writer = BatchWriter(stack.dsn, "test-dl", mark_rollups=False)
    try:
        assert writer.write(batch) == 1000
    finally:
        writer.close()
    stored, originals, rows = db.execute(
        "SELECT sum(length(payload)), sum(payload_size), count(*) FROM dead_letters WHERE device_id = %s",
        (dev,)).fetchone()  # type: ignore[misc]
    assert rows == 1000, "every rejected message is still recorded"
    assert originals == 1000 * 102_401
    assert stored == 60 * DEAD_PAYLOAD_KEEP + 940 * TRUNCATED_KEEP  # 4.2 MB, not 102 MB
    truncated = db.execute("SELECT count(*) FROM dead_letters WHERE device_id = %s AND reason LIKE %s",
                           (dev, "%payload truncated%")).fetchone()
    assert truncated == (940,)


def test_dead_letters_past_retention_are_deleted_and_the_size_shows_in_status(
    stack: Stack, db: psycopg.Connection
) -> None:
    tag = uuid.uuid4().hex[:8]
    writer = BatchWriter(stack.dsn, "test-dl", mark_rollups=False)
    try:
        writer.write([Decoded(topic=f"x/{tag}/{i}", payload=b"p", dead=DeadLetter(f"x/{tag}/{i}", "r", b"p" * 500))
                      for i in range(4)])
    finally:
        writer.close()
    db.execute("UPDATE dead_letters SET received_at = now() - interval '20 days' WHERE topic IN (%s, %s)",
               (f"x/{tag}/0", f"x/{tag}/1"))
    before = read_status(db)
    assert before.dead_letter_bytes > 0
    console = Console(width=120, record=True, file=io.StringIO())
    console.print(status_view(before))
    line = next(ln for ln in console.export_text().splitlines() if "dead letters" in ln)
    assert f"({before.dead_letter_bytes / 1e6:,.1f} MB)" in line  # what `ioc status` shows
    assert run_maintenance(db).dead_letters_deleted >= 2  # the default retention: 14 days
    left = db.execute("SELECT topic FROM dead_letters WHERE topic LIKE %s ORDER BY topic", (f"x/{tag}/%",)).fetchall()
    assert left == [(f"x/{tag}/2",), (f"x/{tag}/3",)]
    # The setting lives in ioc_settings, read at every pass.
    db.execute("UPDATE dead_letters SET received_at = now() - interval '11 days' WHERE topic = %s", (f"x/{tag}/2",))
    db.execute("UPDATE ioc_settings SET value = '10' WHERE key = 'dead_letter_retention_days'")
    try:
        run_maintenance(db)
    finally:
        db.execute("UPDATE ioc_settings SET value = '14' WHERE key = 'dead_letter_retention_days'")
    left = db.execute("SELECT topic FROM dead_letters WHERE topic LIKE %s ORDER BY topic", (f"x/{tag}/%",)).fetchall()
    assert left == [(f"x/{tag}/3",)]
