"""Turn one MQTT message into rows, or into a dead letter with a readable reason.

Pure apart from the device lookup. Rows for COPY are built here as text lines, the cheapest form for
the hot path; timestamps are written as timestamptz text, formatted once per second (copy_timestamp).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import ValidationError

from cloud.ingest.registry import KnownDevice
from contract import SCHEMA_VERSION, topics
from contract.messages import (
    COUNTS_STREAM,
    CountsMessage,
    Envelope,
    EventsMessage,
    StatusMessage,
    TelemetryMessage,
)


@dataclass(slots=True)
class DeadLetter:
    topic: str
    reason: str
    payload: bytes
    device_id: str | None = None


@dataclass(slots=True)
class Decoded:
    """What one message contributes to a batch. A message may be partly valid: its bad points become
    one dead letter, its good points are stored."""

    topic: str
    payload: bytes
    device_id: str | None = None
    telemetry: list[str] = field(default_factory=list)  # COPY lines: ts, device, metric, value
    counts: list[str] = field(default_factory=list)  # COPY lines: ts, device, line, cls, dir, interval, n, boot
    minutes: set[int] = field(default_factory=set)  # epoch minutes holding telemetry: rollups to refresh
    events: list[tuple[int, str, str, str, str]] = field(default_factory=list)
    status: StatusMessage | None = None
    config: tuple[int | None, str, int | None] | None = None  # reported config: version, json, device ts (ms)
    dead: DeadLetter | None = None
    sent_at: int | None = None
    newest_ts: int | None = None

    @property
    def points(self) -> int:
        return len(self.telemetry) + len(self.counts) + len(self.events)


_SECONDS: dict[int, str] = {}


def copy_timestamp(ts_ms: int) -> str:
    """Epoch milliseconds as timestamptz text ('2026-11-30 04:15:00.337+00'); the part up to the second
    is formatted once per second and cached, so a sample costs one dict lookup."""
    sec, ms = divmod(ts_ms, 1000)
    head = _SECONDS.get(sec)
    if head is None:
        if len(_SECONDS) > 100_000:
            _SECONDS.clear()
        head = _SECONDS[sec] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(sec))
    return f"{head}.{ms:03d}+00"


def _validation_reason(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:5]:
        loc = ".".join(str(x) for x in err["loc"]) or "payload"
        parts.append(f"{loc}: {err['msg']}")
    more = f" (+{e.error_count() - 5} more)" if e.error_count() > 5 else ""
    return "schema: " + "; ".join(parts) + more


class Decoder:
    def __init__(
        self,
        lookup: Callable[[str], KnownDevice | None],
        max_payload_bytes: int,
        max_future_ms: int,
        max_age_ms: int,
    ) -> None:
        self._lookup = lookup
        self._max_payload = max_payload_bytes
        self._max_future_ms = max_future_ms
        self._max_age_ms = max_age_ms

    def decode(self, topic: str, payload: bytes, now_ms: int) -> Decoded:
        out = Decoded(topic, payload)
        try:
            self._decode(out, topic, payload, now_ms)
        except _RejectError as r:
            out.telemetry.clear()
            out.counts.clear()
            out.minutes.clear()
            out.events.clear()
            out.status = None
            out.config = None
            out.dead = DeadLetter(topic, str(r), payload, out.device_id)
        return out

    def _decode(self, out: Decoded, topic: str, payload: bytes, now_ms: int) -> None:
        if len(payload) > self._max_payload:
            raise _RejectError(f"oversize payload: {len(payload)} bytes > limit {self._max_payload}")
        if b"\\u0000" in payload or b"\x00" in payload:  # PostgreSQL text cannot hold NUL
            raise _RejectError("payload contains a NUL character")
        try:
            t = topics.parse(topic)
        except topics.TopicError as e:
            raise _RejectError(str(e)) from None
        out.device_id = t.device_id
        known = self._lookup(t.device_id)
        if known is None:
            raise _RejectError(f"unknown device {t.device_id!r}: not registered")
        if t.site is not None and t.site != known.site:
            raise _RejectError(f"site {t.site!r} in topic, but device {t.device_id!r} is registered at {known.site!r}")
        if t.kind == "tlm" and t.leaf == COUNTS_STREAM:
            if known.profile.counts is None:
                raise _RejectError(f"profile {known.profile.profile} does not count objects")
            self._counts(out, _validate(CountsMessage, payload, t.device_id), known, now_ms)
        elif t.kind == "tlm":
            self._telemetry(out, _validate(TelemetryMessage, payload, t.device_id), known, now_ms)
        elif t.kind == "evt":
            self._events(out, _validate(EventsMessage, payload, t.device_id))
        elif t.kind == "state":
            out.status = _validate(StatusMessage, payload, t.device_id)
        elif t.kind == "cfg" and t.leaf == "reported":
            raw = _parse_json(payload)
            _check_header(raw, t.device_id)
            version = raw.get("version")
            if version is not None and (type(version) is not int or not 0 <= version < 2**31):
                raise _RejectError(f"reported config version {version!r} is not a whole number")
            ts = raw.get("ts")
            if ts is not None and (type(ts) is not int or not 0 <= ts <= now_ms + self._max_future_ms):
                raise _RejectError(f"reported config ts {ts!r} is not epoch milliseconds up to now")
            out.config = (version, json.dumps(raw.get("config", raw)), ts)
        else:
            raise _RejectError(f"topic {topic!r} is not one ingest stores")

    def _check_ts(self, ts: int, now_ms: int) -> str | None:
        if ts > now_ms + self._max_future_ms:
            return f"ts {ts} is {(ts - now_ms) / 1000:.0f}s in the future (device clock?)"
        if ts < now_ms - self._max_age_ms:
            return f"ts {ts} is older than the retention window"
        return None

    def _telemetry(self, out: Decoded, msg: TelemetryMessage, known: KnownDevice, now_ms: int) -> None:
        specs = known.profile.metrics
        dev = msg.device_id
        lo, hi = now_ms - self._max_age_ms, now_ms + self._max_future_ms
        rejected: list[str] = []
        lines = out.telemetry
        for s in msg.samples:  # the hot loop: comparisons inline, reasons only for the rare bad point
            ts = s.ts
            if not lo <= ts <= hi:
                rejected.append(self._check_ts(ts, now_ms) or f"ts {ts} out of range")
                continue
            head = f"{copy_timestamp(ts)}\t{dev}\t"
            out.minutes.add(ts // 60_000)
            for name, value in s.values.items():
                spec = specs.get(name)
                if spec is not None and spec.min <= value <= spec.max:
                    lines.append(f"{head}{name}\t{value!r}\n")
                elif spec is None:
                    rejected.append(f"unknown metric {name!r} for profile {known.profile.profile}")
                else:
                    rejected.append(spec.check(name, value) or f"{name}={value} rejected")
        self._finish(out, msg, rejected, max(s.ts for s in msg.samples))

    def _counts(self, out: Decoded, msg: CountsMessage, known: KnownDevice, now_ms: int) -> None:
        spec = known.profile.counts
        assert spec is not None  # checked by the caller
        boot = msg.boot_id
        if "\t" in boot or "\n" in boot or "\\" in boot:
            raise _RejectError(f"boot_id {boot!r} has control characters")
        rejected: list[str] = []
        for c in msg.counts:
            why = self._check_ts(c.ts, now_ms)
            if why is None and c.cls not in spec.classes:
                why = f"unknown class {c.cls!r}; known: {', '.join(spec.classes)}"
            if why is None and c.direction not in spec.directions:
                why = f"unknown direction {c.direction!r}; known: {', '.join(spec.directions)}"
            if why is None and c.count > spec.max_per_interval:
                why = f"count {c.count} above the plausible maximum {spec.max_per_interval}"
            if why is None and ("\t" in c.line or "\n" in c.line or "\\" in c.line):
                why = f"line name {c.line!r} has control characters"
            if why:
                rejected.append(why)
                continue
            out.counts.append(f"{copy_timestamp(c.ts)}\t{msg.device_id}\t{c.line}\t{c.cls}\t{c.direction}\t{c.interval_s}\t{c.count}"
                              f"\t{boot}\n")
        self._finish(out, msg, rejected, max(c.ts for c in msg.counts))

    def _events(self, out: Decoded, msg: EventsMessage) -> None:
        for e in msg.events:
            out.events.append((e.ts, msg.device_id, e.kind, e.severity, json.dumps(e.details)))
        out.sent_at = msg.sent_at
        out.newest_ts = max(e.ts for e in msg.events)

    def _finish(self, out: Decoded, msg: Envelope, rejected: list[str], newest: int) -> None:
        out.sent_at = msg.sent_at
        out.newest_ts = newest
        if rejected:
            shown = "; ".join(rejected[:5]) + (f" (+{len(rejected) - 5} more)" if len(rejected) > 5 else "")
            total = len(rejected) + len(out.telemetry) + len(out.counts)
            out.dead = DeadLetter(
                out.topic, f"rejected {len(rejected)} of {total} points: {shown}", out.payload, msg.device_id
            )


M = TypeVar("M", bound=Envelope | StatusMessage)


class _RejectError(Exception):
    """The whole message is unusable."""


def _parse_json(payload: bytes) -> dict[str, Any]:
    try:
        raw = json.loads(payload.decode("utf-8"))  # explicit: json.loads(bytes) would guess UTF-16/32
    except UnicodeDecodeError:
        raise _RejectError("payload is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise _RejectError(f"malformed JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    if not isinstance(raw, dict):
        raise _RejectError(f"payload must be a JSON object, got {type(raw).__name__}")
    return raw


def _check_header(raw: dict[str, Any], topic_device: str) -> None:
    v = raw.get("v")
    if v != SCHEMA_VERSION:
        raise _RejectError(f"unsupported schema version {v!r}: this ingest speaks v{SCHEMA_VERSION}")
    if raw.get("device_id") != topic_device:
        raise _RejectError(f"device_id {raw.get('device_id')!r} in payload does not match topic ({topic_device!r})")


def _validate(model: type[M], payload: bytes, topic_device: str) -> M:
    """pydantic's own JSON parser on the fast path; on failure, parse again only to explain why."""
    try:
        msg = model.model_validate_json(payload)
    except ValidationError as e:
        raw = _parse_json(payload)
        _check_header(raw, topic_device)
        raise _RejectError(_validation_reason(e)) from None
    if msg.device_id != topic_device:
        raise _RejectError(f"device_id {msg.device_id!r} in payload does not match topic ({topic_device!r})")
    return msg  # type: ignore[return-value]  # mypy loses the TypeVar through model_validate_json
