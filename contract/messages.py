"""Payload models of wire contract v1 (JSON).

Every message carries an envelope: schema version `v`, `device_id`, `boot_id` (new on every start of
the device software) and `seq`, which increases by one per message within a boot. Time stamps are
integer milliseconds since the Unix epoch, UTC. A device that was offline sends its backlog as many
samples in one message.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_SAMPLES_PER_MESSAGE = 5000
EpochMs = Annotated[int, Field(ge=0, lt=32503680000000, description="ms since Unix epoch, UTC")]
DeviceId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]
# Not Literal[1]: pydantic accepts `true` and `1.0` for a literal 1 even in strict mode. Senders may leave v
# out when building a model (it defaults), but ingest requires it on the wire (see decode._validate).
# Names and ids a device chooses (boot id, counting line, class, event kind): printable, no control
# characters — a carriage return in one would be stored as a different name than the device meant.
LABEL_PATTERN = r"^[^\x00-\x1f\x7f]+$"
Label = Annotated[str, Field(min_length=1, max_length=64, pattern=LABEL_PATTERN)]
SchemaVersion = Annotated[int, Field(ge=1, le=1, description="== SCHEMA_VERSION")]


def now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


def ms_to_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


class _Wire(BaseModel):
    # Unknown fields are ignored so additive changes stay compatible within v1. Strict: "12.5" or true is
    # not a number, "1700000000000" is not a timestamp (lax mode would convert them silently).
    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)


class Envelope(_Wire):
    v: SchemaVersion = 1
    device_id: DeviceId
    boot_id: Label
    seq: Annotated[int, Field(ge=0)]
    sent_at: EpochMs | None = Field(default=None, description="when the device published this message")


class MetricSample(_Wire):
    ts: EpochMs
    values: Annotated[dict[str, float], Field(min_length=1, max_length=256)]


class TelemetryMessage(Envelope):
    """Topic tlm/v1/{site}/{device_id}/{stream} where stream is env, traffic or health."""

    samples: Annotated[list[MetricSample], Field(min_length=1, max_length=MAX_SAMPLES_PER_MESSAGE)]


class CountSample(_Wire):
    """Objects of one class crossing one counting line in one direction during one interval."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True, populate_by_name=True)

    ts: EpochMs = Field(description="start of the interval")
    interval_s: Annotated[int, Field(gt=0, le=86400)]
    line: Label
    cls: Annotated[Label, Field(alias="class", max_length=32)]
    direction: Annotated[Label, Field(max_length=16)]
    count: Annotated[int, Field(ge=0)]


class CountsMessage(Envelope):
    """Topic tlm/v1/{site}/{device_id}/counts."""

    counts: Annotated[list[CountSample], Field(min_length=1, max_length=MAX_SAMPLES_PER_MESSAGE)]


class Event(_Wire):
    ts: EpochMs
    kind: Label
    severity: Literal["info", "warning", "critical"] = "info"
    details: dict[str, Any] = Field(default_factory=dict)


class EventsMessage(Envelope):
    """Topic evt/v1/{site}/{device_id}/{kind}."""

    events: Annotated[list[Event], Field(min_length=1, max_length=MAX_SAMPLES_PER_MESSAGE)]


class StatusMessage(_Wire):
    """Retained on state/v1/{device_id}: the birth message, or the last will the broker publishes."""

    v: SchemaVersion = 1
    device_id: DeviceId
    status: Literal["online", "offline"]
    boot_id: Label
    ts: EpochMs = Field(description="when this connection was attempted: the birth and the will of one "
                        "connection carry the same value (set the will again before each reconnect). Ingest applies a "
                        "status only if its ts is newer than the stored one, or equal and offline, so a will that "
                        "arrives late never overrides the birth of a newer connection.")
    firmware: Label | None = None
    profile: Label | None = None
    config_version: Annotated[int, Field(ge=0, lt=2**31)] | None = None
    reason: Annotated[str, Field(max_length=256)] | None = None


class CommandReply(_Wire):
    """Published by a device to a command's MQTT 5 response topic, with the request's correlation data."""

    v: SchemaVersion = 1
    device_id: DeviceId
    command: str  # as the topic named it, whatever it was: an unknown command gets its reply too
    ok: bool
    ts: EpochMs
    result: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None


COUNTS_STREAM = "counts"
