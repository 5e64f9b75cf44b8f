"""MQTT topic names of wire contract v1.

The device id always sits at a fixed level so a broker ACL can pin it to the client's username.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

_SEGMENT_FORBIDDEN = set("/+#\x00")


class TopicError(ValueError):
    """A topic that does not follow the contract."""


def check_segment(value: str, what: str) -> str:
    """Reject ids that would break topic structure (slashes, wildcards, empty)."""
    if not value or len(value) > 64 or any(c in _SEGMENT_FORBIDDEN for c in value):
        raise TopicError(f"invalid {what} {value!r}: 1-64 chars, no '/', '+', '#'")
    return value


@dataclass(frozen=True, slots=True)
class Topic:
    """A parsed contract topic: `kind` is tlm, evt, state, cfg, cmd or ack."""

    kind: str
    device_id: str
    site: str | None = None
    leaf: str | None = None  # stream (tlm), event kind (evt), desired/reported (cfg), command (cmd)


def telemetry(site: str, device_id: str, stream: str) -> str:
    return f"tlm/v1/{site}/{device_id}/{stream}"


def events(site: str, device_id: str, kind: str) -> str:
    return f"evt/v1/{site}/{device_id}/{kind}"


def state(device_id: str) -> str:
    """Retained birth / last-will topic."""
    return f"state/v1/{device_id}"


def config_desired(device_id: str) -> str:
    return f"cfg/v1/{device_id}/desired"


def config_reported(device_id: str) -> str:
    return f"cfg/v1/{device_id}/reported"


def command(device_id: str, name: str) -> str:
    return f"cmd/v1/{device_id}/{name}"


SINGLE_LEVEL = "+"


def command_response(device_id: str, requester: str) -> str:
    """Response topic of a command: the device publishes its reply here; only `requester` reads it."""
    return f"rsp/v1/{device_id}/{requester}"


def watermark(device_id: str) -> str:
    """Retained, published by ingest after its commits: what the database holds of this device's messages
    (`contract.watermark.Watermark`). Per device, so a broker ACL can let each device read only its own."""
    return f"ack/v1/{device_id}"


# Filters the cloud subscribes to.
TELEMETRY_FILTER = "tlm/v1/+/+/+"
EVENTS_FILTER = "evt/v1/+/+/+"
STATE_FILTER = "state/v1/+"
CONFIG_REPORTED_FILTER = "cfg/v1/+/reported"


@lru_cache(maxsize=65_536)  # ingest sees the same few topics per device over and over: parse each once
def parse(topic: str) -> Topic:
    """Parse a contract topic (the result is immutable and cached); raises TopicError naming what is wrong."""
    parts = topic.split("/")
    if len(parts) < 2 or parts[1] != "v1":
        raise TopicError(f"unknown topic {topic!r}: expected '<kind>/v1/...'")
    kind = parts[0]
    if kind in ("tlm", "evt") and len(parts) == 5:
        return Topic(kind, device_id=parts[3], site=parts[2], leaf=parts[4])
    if kind in ("state", "ack") and len(parts) == 3:
        return Topic(kind, device_id=parts[2])
    if kind in ("cfg", "cmd") and len(parts) == 4:
        return Topic(kind, device_id=parts[2], leaf=parts[3])
    raise TopicError(f"unknown topic {topic!r}")
