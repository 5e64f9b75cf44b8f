"""Turn one MQTT message into rows, or into a dead letter with a readable reason.

Pure apart from the device lookup. Rows for COPY are built here as text lines, the cheapest form for
the hot path; timestamps are written as timestamptz text, formatted once per second (copy_timestamp).

Nothing a client sends may stop ingest: JSON is parsed only by pydantic-core's parser, which refuses
nesting deeper than its recursion limit with a ValueError (Python's json module raises RecursionError),
every value is made safe for COPY's text format and for jsonb before it leaves here, and any
unexpected exception while decoding one message dead-letters that message with its reason.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg
from pydantic import ValidationError
from pydantic_core import from_json

from cloud.ingest.deadletters import DeadLetterLimiter
from cloud.ingest.registry import KnownDevice
from contract import SCHEMA_VERSION, topics
from contract.messages import (
    COUNTS_STREAM,
    LABEL_PATTERN,
    CountsMessage,
    Envelope,
    EventsMessage,
    StatusMessage,
    TelemetryMessage,
)
from contract.twin import ReportedConfig

log = logging.getLogger(__name__)

MAX_REASON_CHARS = 2000  # a reason quotes the client's input; a hostile one must not make it huge


@dataclass(slots=True)
class DeadLetter:
    topic: str
    reason: str
    payload: bytes  # as stored: possibly truncated (see DeadLetterLimiter)
    device_id: str | None = None
    size: int = -1  # bytes of the payload as received; -1: len(payload)


@dataclass(slots=True)
class Decoded:
    """What one message contributes to a batch. A message may be partly valid: its bad points become
    one dead letter, its good points are stored."""

    topic: str
    payload: bytes
    device_id: str | None = None
    telemetry: list[str] = field(default_factory=list)  # COPY lines: ts, device, metric, value
    counts: list[str] = field(default_factory=list)  # COPY lines: ts, device, line, cls, dir, interval, n, boot
    minutes: set[int] = field(default_factory=set)  # epoch minutes holding readings or counts: rollups to refresh
    key: tuple[str, int] | None = None  # the envelope's (boot_id, seq): what the watermark acknowledges
    events: list[tuple[int, str, str, str, str]] = field(default_factory=list)
    status: StatusMessage | None = None
    config: tuple[int | None, str, int | None] | None = None  # reported config: version, json, device ts (ms)
    dead: DeadLetter | None = None
    sent_at: int | None = None
    newest_ts: int | None = None
    oldest_reading_ts: int | None = None  # of the readings stored: how far back this commit reaches (alarms)

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


_COPY_SPECIAL = re.compile(r"[\\\n\r\t]")
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"})


def copy_text(value: str) -> str:
    """A string as COPY's text format reads it back unchanged: backslash, newline, carriage return and
    tab escaped (one unescaped carriage return fails the whole COPY). NUL never gets here (refused)."""
    return value.translate(_COPY_ESCAPES) if _COPY_SPECIAL.search(value) else value


def jsonb_text(value: object, what: str) -> str:
    """JSON text a jsonb column accepts: NaN and Infinity (pydantic-core reads 1e400 as inf) are not JSON."""
    try:
        return json.dumps(value, allow_nan=False)
    except ValueError:
        raise _RejectError(f"{what} holds NaN or Infinity, which JSON (and a jsonb column) cannot store") from None


def _validation_reason(e: ValidationError) -> str:
    parts = []
    for err in e.errors(include_input=False, include_url=False)[:5]:
        loc = ".".join(str(x) for x in err["loc"]) or "payload"
        if err["type"] == "string_pattern_mismatch" and (err.get("ctx") or {}).get("pattern") == LABEL_PATTERN:
            parts.append(f"{loc}: must not contain control characters (tab, newline, carriage return, ...)")
        else:
            parts.append(f"{loc}: {err['msg']}")
    more = f" (+{e.error_count() - 5} more)" if e.error_count() > 5 else ""
    return "schema: " + "; ".join(parts) + more


def _printable(text: str) -> str:
    """Text PostgreSQL can store whatever the client put in it (NUL and lone surrogates escaped)."""
    if "\x00" in text or not text.isprintable():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
    return text[:MAX_REASON_CHARS]


class Decoder:
    def __init__(
        self,
        lookup: Callable[[str], KnownDevice | None],
        max_payload_bytes: int,
        max_future_ms: int,
        max_age_ms: int,
        limiter: DeadLetterLimiter | None = None,
    ) -> None:
        self._lookup = lookup
        self._max_payload = max_payload_bytes
        self._max_future_ms = max_future_ms
        self._max_age_ms = max_age_ms
        self._limiter = limiter or DeadLetterLimiter()

    def decode(self, topic: str, payload: bytes, now_ms: int) -> Decoded:
        out = Decoded(topic, payload)
        try:
            self._decode(out, topic, payload, now_ms)
        except _RejectError as r:
            self._reject(out, str(r))
        except psycopg.Error:
            raise  # the device lookup found the database away: the caller retries the batch
        except Exception as e:  # a payload must never stop ingest, whatever it triggers in the code below
            log.warning("decoding a message on %r failed unexpectedly; dead-lettering it", topic, exc_info=True)
            self._reject(out, f"could not decode ({type(e).__name__}: {e})")
        if out.dead is not None:
            out.dead = self._limiter.bound(out.dead, now_ms)
        return out

    @staticmethod
    def _reject(out: Decoded, reason: str) -> None:
        out.telemetry.clear()
        out.counts.clear()
        out.minutes.clear()
        out.oldest_reading_ts = None
        out.events.clear()
        out.status = None
        out.config = None
        dev = None if out.device_id is None else _printable(out.device_id)
        out.dead = DeadLetter(_printable(out.topic), _printable(reason), out.payload, dev)

    def _decode(self, out: Decoded, topic: str, payload: bytes, now_ms: int) -> None:
        try:
            t = topics.parse(topic)
        except topics.TopicError as e:
            raise _RejectError(str(e)) from None
        if "\x00" in topic:  # never reaches the device lookup: the database would refuse it and we'd retry forever
            raise _RejectError("topic contains a NUL character")
        out.device_id = t.device_id  # first: every dead letter of a device carries its id
        if len(payload) > self._max_payload:
            raise _RejectError(f"oversize payload: {len(payload)} bytes > limit {self._max_payload}")
        if b"\\u0000" in payload or b"\x00" in payload:  # PostgreSQL text cannot hold NUL
            raise _RejectError("payload contains a NUL character")
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
            assert t.leaf is not None  # topics.parse: tlm topics have five levels
            if t.leaf not in known.profile.streams():
                raise _RejectError(f"stream {t.leaf!r} is not one of profile {known.profile.profile}: "
                                   f"{', '.join(sorted(known.profile.streams()))}")
            self._telemetry(out, _validate(TelemetryMessage, payload, t.device_id), t.leaf, known, now_ms)
        elif t.kind == "evt":
            self._events(out, _validate(EventsMessage, payload, t.device_id), now_ms)
        elif t.kind == "state":
            status = _validate(StatusMessage, payload, t.device_id)
            if (why := self._check_ts(status.ts, now_ms)) is not None:
                raise _RejectError(f"status {why}")  # a far-future one would pin the device's state
            out.status = status
        elif t.kind == "cfg" and t.leaf == "reported":
            self._reported_config(out, payload, t.device_id, now_ms)
        else:
            raise _RejectError(f"topic {topic!r} is not one ingest stores")

    def _check_ts(self, ts: int, now_ms: int) -> str | None:
        if ts > now_ms + self._max_future_ms:
            return f"ts {ts} is {(ts - now_ms) / 1000:.0f}s in the future (device clock?)"
        if ts < now_ms - self._max_age_ms:
            return f"ts {ts} is older than the retention window"
        return None

    def _telemetry(self, out: Decoded, msg: TelemetryMessage, stream: str, known: KnownDevice, now_ms: int) -> None:
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
                if spec is not None and spec.min <= value <= spec.max and spec.stream == stream:
                    lines.append(f"{head}{name}\t{value!r}\n")
                elif spec is None:
                    rejected.append(f"unknown metric {name[:64]!r} for profile {known.profile.profile}")
                elif spec.stream != stream:
                    rejected.append(f"metric {name!r} belongs on stream {spec.stream!r}, not {stream!r}")
                else:
                    rejected.append(spec.check(name, value) or f"{name}={value} rejected")
        if lines:
            out.oldest_reading_ts = min(s.ts for s in msg.samples if lo <= s.ts <= hi)
        self._finish(out, msg, rejected, max(s.ts for s in msg.samples))

    def _counts(self, out: Decoded, msg: CountsMessage, known: KnownDevice, now_ms: int) -> None:
        spec = known.profile.counts
        assert spec is not None  # checked by the caller
        boot = copy_text(msg.boot_id)
        rejected: list[str] = []
        for c in msg.counts:
            why = self._check_ts(c.ts, now_ms)
            if why is None and c.cls not in spec.classes:
                why = f"unknown class {c.cls!r}; known: {', '.join(spec.classes)}"
            if why is None and c.direction not in spec.directions:
                why = f"unknown direction {c.direction!r}; known: {', '.join(spec.directions)}"
            if why is None and c.count > spec.max_per_interval:
                why = f"count {c.count} above the plausible maximum {spec.max_per_interval}"
            if why:
                rejected.append(why)
                continue
            out.minutes.add(c.ts // 60_000)  # the hourly counts rollup recomputes its hours from these
            out.counts.append(f"{copy_timestamp(c.ts)}\t{msg.device_id}\t{copy_text(c.line)}\t{c.cls}\t{c.direction}"
                              f"\t{c.interval_s}\t{c.count}\t{boot}\n")
        self._finish(out, msg, rejected, max(c.ts for c in msg.counts))

    def _events(self, out: Decoded, msg: EventsMessage, now_ms: int) -> None:
        rejected: list[str] = []
        for e in msg.events:
            why = self._check_ts(e.ts, now_ms)
            if why is None:
                try:
                    details = jsonb_text(e.details, f"details of event {e.kind!r}")
                except _RejectError as r:
                    why = str(r)
            if why:
                rejected.append(why)
                continue
            out.events.append((e.ts, msg.device_id, e.kind, e.severity, details))
        self._finish(out, msg, rejected, max(e.ts for e in msg.events))

    def _reported_config(self, out: Decoded, payload: bytes, device_id: str, now_ms: int) -> None:
        """The contract's ReportedConfig, strictly: the twin and the silence check read its settings."""
        report = _validate(ReportedConfig, payload, device_id)
        if (why := self._check_ts(report.ts, now_ms)) is not None:
            raise _RejectError(f"reported config {why}")  # one from the future would block every later one
        out.config = (report.version, jsonb_text(report.model_dump(mode="json"), "reported config"), report.ts)

    def _finish(self, out: Decoded, msg: Envelope, rejected: list[str], newest: int) -> None:
        out.sent_at = msg.sent_at
        out.key = (msg.boot_id, msg.seq)
        out.newest_ts = newest
        if rejected:
            shown = "; ".join(rejected[:5]) + (f" (+{len(rejected) - 5} more)" if len(rejected) > 5 else "")
            total = len(rejected) + len(out.telemetry) + len(out.counts) + len(out.events)
            out.dead = DeadLetter(out.topic, _printable(f"rejected {len(rejected)} of {total} points: {shown}"),
                                  out.payload, msg.device_id)


M = TypeVar("M", bound=Envelope | StatusMessage | ReportedConfig)


class _RejectError(Exception):
    """The whole message is unusable."""


def _parse_json(payload: bytes) -> dict[str, Any]:
    """pydantic-core's parser: bounded nesting (a ValueError beyond its recursion limit), no NaN."""
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        raise _RejectError("payload is not UTF-8 text") from None
    try:
        raw = from_json(payload, allow_inf_nan=False)
    except ValueError as e:
        raise _RejectError(f"malformed JSON: {e}") from None
    if not isinstance(raw, dict):
        raise _RejectError(f"payload must be a JSON object, got {type(raw).__name__}")
    return raw


def _check_header(raw: dict[str, Any], topic_device: str) -> None:
    v = raw.get("v")
    if type(v) is not int or v != SCHEMA_VERSION:  # `true == 1` in Python: check the type first
        raise _RejectError(f"unsupported schema version {v!r}: this ingest speaks v{SCHEMA_VERSION}")
    if raw.get("device_id") != topic_device:
        raise _RejectError(f"device_id {raw.get('device_id')!r} in payload does not match topic ({topic_device!r})")


def _validate(model: type[M], payload: bytes, topic_device: str) -> M:
    """pydantic's own JSON parser on the fast path; on failure, parse again only to explain why."""
    try:
        msg = model.model_validate_json(payload, strict=True)
    except ValidationError as e:
        raw = _parse_json(payload)
        _check_header(raw, topic_device)
        raise _RejectError(_validation_reason(e)) from None
    if "v" not in msg.model_fields_set:  # the models default v for senders; on the wire it is required
        raise _RejectError(f"missing schema version 'v': this ingest speaks v{SCHEMA_VERSION}")
    if msg.device_id != topic_device:
        raise _RejectError(f"device_id {msg.device_id!r} in payload does not match topic ({topic_device!r})")
    return msg  # type: ignore[return-value]  # mypy loses the TypeVar through model_validate_json
