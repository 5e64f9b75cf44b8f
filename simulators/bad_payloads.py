"""Deliberately broken messages, one of each kind ingest must dead-letter with a reason."""

from __future__ import annotations

import json
import random

from contract import topics
from simulators.fleet import OutMessage, SimDevice

BAD_KINDS = ("malformed-json", "wrong-version", "unknown-device", "out-of-range", "oversize")


def make_bad(kind: str, good: OutMessage, dev: SimDevice, rng: random.Random) -> OutMessage:
    """A broken variant of a good gateway message. `out-of-range` keeps the other points valid:
    ingest stores them and dead-letters only the bad one."""
    body = json.loads(good.payload)
    topic = good.topic
    accepted = {}
    rejected = 0
    if kind == "malformed-json":
        payload = good.payload[: len(good.payload) // 2]
    elif kind == "wrong-version":
        payload = json.dumps({**body, "v": 99}).encode()
    elif kind == "unknown-device":
        ghost = f"ghost-{rng.randrange(10**6):06d}"
        topic = topics.telemetry(dev.site, ghost, "env")
        payload = json.dumps({**body, "device_id": ghost}).encode()
    elif kind == "out-of-range":
        sample = body["samples"][-1]
        name = sorted(sample["values"])[0]
        sample["values"][name] = dev.profile.metrics[name].max * 100 + 1
        payload = json.dumps(body).encode()
        ts = sample["ts"]
        accepted = {k: v for k, v in good.accepted.items() if not (k[1] == name and k[2] == ts)}
        rejected = 1 + good.rejected_points
    elif kind == "oversize":
        payload = json.dumps({**body, "padding": "x" * (300 * 1024)}).encode()
    else:
        raise ValueError(f"unknown bad kind {kind!r}; known: {BAD_KINDS}")
    return OutMessage(good.device_id, topic, payload, accepted=accepted, rejected_points=rejected, bad=kind)
