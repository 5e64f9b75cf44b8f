"""The end-to-end acknowledgement of wire contract v1: what the database holds of a device's messages.

A PUBACK only says the broker has a message, and Mosquitto acknowledges before it writes to disk, so a
broker crash can lose what it acknowledged. Ingest therefore publishes, after its commits and at most
once a second per device, a retained `Watermark` on `ack/v1/{device_id}`: for the device's newest boots,
the ranges of envelope `seq` it has committed. The device forgets an outbox row only when a watermark
covers the message that last carried it.

The ranges list exactly the committed messages, never a span with holes, so several ingest processes
sharing one subscription (each committing different messages of one device) never claim a message that
is not in the database: each publishes what it committed itself. The retained message keeps only the
latest publisher's view; a device that missed another's sends those rows again, and ingest's idempotent
writes absorb the resend.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from contract.messages import DeviceId, EpochMs

MAX_RANGES = 128  # per boot and message; ingest sends older ones first in messages of their own
MAX_BOOTS = 2  # a restarted device still has rows of its previous boot in its outbox

Seq = Annotated[int, Field(ge=0)]


class BootAck(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    boot_id: Annotated[str, Field(min_length=1, max_length=64)]
    seq: Seq = Field(description="the newest committed seq of this boot")
    ranges: Annotated[list[tuple[Seq, Seq]], Field(min_length=1, max_length=MAX_RANGES)] = Field(
        description="committed seqs as inclusive [first, last] ranges, ascending, disjoint"
    )

    @model_validator(mode="after")
    def _ranges_are_ordered(self) -> BootAck:
        prev = -1
        for lo, hi in self.ranges:
            if lo > hi or lo <= prev:
                raise ValueError(f"ranges must be ascending and disjoint, got {self.ranges}")
            prev = hi
        if self.seq != self.ranges[-1][1]:
            raise ValueError("seq must be the end of the last range")
        return self

    def covers(self, seq: int) -> bool:
        return any(lo <= seq <= hi for lo, hi in self.ranges)


class Watermark(BaseModel):
    """Retained on ack/v1/{device_id}, published by ingest after the commit."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)

    v: Literal[1] = 1
    device_id: DeviceId
    ts: EpochMs = Field(description="when ingest published it")
    instance: str | None = Field(default=None, description="the ingest process that committed these")
    boots: Annotated[list[BootAck], Field(min_length=1, max_length=MAX_BOOTS)]
