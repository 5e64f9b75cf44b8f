"""Deliberately broken messages: one of each kind ingest must dead-letter with a reason (make_bad), and a
seeded generator of hostile payloads on every device topic (hostile_corpus) for the fuzz tests."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

from contract import topics
from contract.profiles import DeviceProfile
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


# -- a generated corpus of hostile payloads ------------------------------------------------------
# What an attacker or a careless device sends, on every device topic. Each payload is a valid message
# with one mutation drawn at random; `stored` says what ingest must still keep from it (usually nothing:
# the whole message, or every point it carries, must be dead-lettered with a reason).

HOSTILE_CHARS = ("\r", "\n", "\t", "\r\n", "\x1b", "\x7f", "\x01")
DEVICE_TOPICS = ("env", "health", "traffic", "counts", "events", "status", "reported")


@dataclass(frozen=True)
class Hostile:
    topic: str
    payload: bytes
    mutation: str
    stored_counts: dict[tuple[str, str, str, str, int], int] = field(default_factory=dict)
    stored_events: frozenset[tuple[str, str, int]] = frozenset()
    accepted: bool = False  # legal after all (e.g. a tab inside JSON details): stored, no dead letter

    @property
    def expects_dead_letter(self) -> bool:
        return not (self.accepted or self.stored_counts or self.stored_events)


def _deep(depth: int, rng: random.Random) -> str:
    opener, closer = ('{"a":', "}") if rng.random() < 0.5 else ("[", "]")
    return opener * depth + "1" + closer * depth


def _dumps(body: object) -> str:
    return json.dumps(body)


def _valid_body(kind: str, device_id: str, profile: DeviceProfile, now: int, rng: random.Random) -> dict[str, Any]:
    env = {"v": 1, "device_id": device_id, "boot_id": f"boot-{rng.randrange(10**6)}", "seq": rng.randrange(10**6),
           "sent_at": now}
    ts = now - rng.randrange(1, 3_600_000)
    if kind in ("env", "health", "traffic"):
        names = [n for n, m in profile.metrics.items() if m.stream == kind]
        values = {n: profile.metrics[n].min for n in rng.sample(names, min(3, len(names)))}
        return {**env, "samples": [{"ts": ts, "values": values}]}
    if kind == "counts":
        assert profile.counts is not None
        return {**env, "counts": [{"ts": ts - ts % 60_000, "interval_s": 60, "line": "north",
                                   "class": profile.counts.classes[0], "direction": profile.counts.directions[0],
                                   "count": rng.randrange(1, 50)}]}
    if kind == "events":
        return {**env, "events": [{"ts": ts, "kind": "fuzz", "severity": "info", "details": {"note": "x"}}]}
    if kind == "status":
        return {"v": 1, "device_id": device_id, "status": "online", "boot_id": env["boot_id"], "ts": now}
    return {"v": 1, "device_id": device_id, "boot_id": env["boot_id"], "ts": now, "version": 1,
            "status": "applied", "settings": {"heartbeat_s": 30}}


def _topic(kind: str, site: str, device_id: str) -> str:
    if kind in ("env", "health", "traffic", "counts"):
        return topics.telemetry(site, device_id, kind)
    if kind == "events":
        return topics.events(site, device_id, "fuzz")
    if kind == "status":
        return topics.state(device_id)
    return topics.config_reported(device_id)


def _strings(body: Any, path: tuple = ()) -> list[tuple]:
    """Paths of every string value in the body (its string fields)."""
    if isinstance(body, dict):
        return [p for k, v in body.items() for p in _strings(v, (*path, k))]
    if isinstance(body, list):
        return [p for i, v in enumerate(body) for p in _strings(v, (*path, i))]
    return [path] if isinstance(body, str) else []


def _numbers(body: Any, path: tuple = ()) -> list[tuple]:
    if isinstance(body, dict):
        return [p for k, v in body.items() for p in _numbers(v, (*path, k))]
    if isinstance(body, list):
        return [p for i, v in enumerate(body) for p in _numbers(v, (*path, i))]
    return [path] if isinstance(body, int | float) and not isinstance(body, bool) else []


def _set(body: Any, path: tuple, value: Any) -> None:
    for k in path[:-1]:
        body = body[k]
    body[path[-1]] = value


def _get(body: Any, path: tuple) -> Any:
    for k in path:
        body = body[k]
    return body


_MARK = "\x00MARK\x00"  # replaced in the JSON text by a raw (non-JSON) token


def hostile_message(kind: str, device_id: str, site: str, profile: DeviceProfile, now: int,
                    rng: random.Random, max_payload: int = 256 * 1024) -> Hostile:
    """One hostile payload on the `kind` topic of a registered device (see DEVICE_TOPICS)."""
    body = _valid_body(kind, device_id, profile, now, rng)
    topic = _topic(kind, site, device_id)
    strings = [p for p in _strings(body) if p not in (("device_id",), ("status",))]
    numbers = [p for p in _numbers(body) if p != ("v",)]
    if kind == "reported":  # its settings are the device's own, stored as sent: mutate the envelope
        strings, numbers = [("boot_id",)], [("ts",), ("version",)]
    raw: str | None = None
    mutations = ["deep", "deep-ignored", "huge", "nul", "nul-escape", "control", "nan", "infinity", "overflow",
                 "string-number", "bool-number", "float-int", "missing-v", "v-true", "ts-string", "ts-zero",
                 "ts-2999", "surrogate", "bad-utf8", "not-object", "truncated", "empty", "wrong-device",
                 "null-field"]
    if kind in ("env", "health", "traffic"):
        mutations.append("wrong-stream")
    if kind == "counts":
        mutations.append("backslash-line")  # valid: stored with its backslash
    if kind == "events":
        mutations.append("escapes-in-details")  # valid: CR/LF/tab/backslash inside JSON details are fine
    mutation = rng.choice(mutations)
    stored_counts: dict[tuple[str, str, str, str, int], int] = {}
    stored_events: frozenset[tuple[str, str, int]] = frozenset()
    accepted = False
    if mutation == "deep":
        _set(body, rng.choice(strings + numbers), _MARK)
        raw = _dumps(body).replace(json.dumps(_MARK), _deep(rng.choice((1100, 5000, 20_000)), rng))
    elif mutation == "deep-ignored":
        body["extra"] = _MARK
        raw = _dumps(body).replace(json.dumps(_MARK), _deep(5000, rng))
    elif mutation == "huge":
        body["padding"] = "x" * (max_payload + rng.randrange(1, 100_000))
    elif mutation == "nul":
        p = rng.choice(strings)
        _set(body, p, _get(body, p) + "\x00")
    elif mutation == "nul-escape":
        p = rng.choice(strings)
        _set(body, p, _MARK)
        raw = _dumps(body).replace(json.dumps(_MARK), '"a\\u0000b"')
    elif mutation == "control":
        p = rng.choice([s for s in strings if s[-1] in ("boot_id", "line", "class", "direction", "kind")]
                       or strings)
        _set(body, p, _get(body, p) + rng.choice(HOSTILE_CHARS) + "x")
        if kind == "reported" or p[-1] not in ("boot_id", "line", "class", "direction", "kind"):
            mutation = "control-free-text"  # e.g. inside details: legal JSON, must not break the batch
            accepted = True
    elif mutation in ("nan", "infinity", "overflow"):
        token = {"nan": "NaN", "infinity": rng.choice(("Infinity", "-Infinity")), "overflow": "1e400"}[mutation]
        targets = _all_values_or_details(body, kind, numbers)
        for p in targets:
            _set(body, p, _MARK)
        raw = _dumps(body).replace(json.dumps(_MARK), token)
    elif mutation == "string-number":
        p = rng.choice(numbers)
        _set(body, p, str(_get(body, p)))
    elif mutation == "bool-number":
        _set(body, rng.choice(numbers), rng.choice((True, False)))
    elif mutation == "float-int":
        p = rng.choice([n for n in numbers if n[-1] in ("ts", "seq", "count", "interval_s", "version")] or numbers)
        whole = int(_get(body, p))
        _set(body, p, _MARK)
        raw = _dumps(body).replace(json.dumps(_MARK), f"{whole}.5")
    elif mutation == "missing-v":
        del body["v"]
    elif mutation == "v-true":
        body["v"] = True
    elif mutation in ("ts-string", "ts-zero", "ts-2999"):
        for p in [n for n in _numbers(body) if n[-1] == "ts"]:
            _set(body, p, {"ts-string": str(_get(body, p)), "ts-zero": 0, "ts-2999": 32_500_000_000_000}[mutation])
    elif mutation == "surrogate":
        p = rng.choice(strings)
        _set(body, p, _MARK)
        raw = _dumps(body).replace(json.dumps(_MARK), rng.choice(('"\\ud800"', '"x\\udfff"', '"\\ud83d"')))
    elif mutation == "bad-utf8":
        p = rng.choice(strings)
        _set(body, p, _MARK)
        payload = _dumps(body).encode().replace(json.dumps(_MARK).encode(), rng.choice((b'"\xff"', b'"\xed\xa0\x80"')))
        return Hostile(topic, payload, mutation)
    elif mutation == "not-object":
        raw = rng.choice(("[1, 2, 3]", '"a string"', "null", "42", "true"))
    elif mutation == "truncated":
        text = _dumps(body)
        raw = text[: rng.randrange(1, len(text) - 1)]
    elif mutation == "empty":
        raw = rng.choice(("", " ", "{}"))
    elif mutation == "wrong-device":
        body["device_id"] = device_id + "-other"
    elif mutation == "null-field":
        body[rng.choice([k for k in body if k != "sent_at"] if kind != "reported" else ["v", "device_id"])] = None
    elif mutation == "wrong-stream":
        other = rng.choice([n for n, m in profile.metrics.items() if m.stream != kind])
        body["samples"][0]["values"] = {other: profile.metrics[other].min}
    elif mutation == "backslash-line":
        c = body["counts"][0]
        c["line"] = rng.choice(("north\\side", "a\\\\b", "\\", "tram\\N"))
        stored_counts = {(device_id, c["line"], c["class"], c["direction"], c["ts"]): c["count"]}
    elif mutation == "escapes-in-details":
        e = body["events"][0]
        e["details"] = {"text": "".join(rng.choice(("\r", "\n", "\t", "\\", "é", "😀", "\"", "x"))
                                        for _ in range(20)), "nested": {"a": [1, 2.5, None, "\\n"]}}
        stored_events = frozenset({(device_id, e["kind"], e["ts"])})
    text = raw if raw is not None else _dumps(body)
    return Hostile(topic, text.encode(), mutation, stored_counts, stored_events, accepted)


def _all_values_or_details(body: dict[str, Any], kind: str, numbers: list[tuple]) -> list[tuple]:
    """Where a NaN makes the whole message (or every point in it) unusable."""
    if kind in ("env", "health", "traffic"):
        return [("samples", 0, "values", n) for n in body["samples"][0]["values"]]
    if kind == "events":
        return [("events", 0, "details", "note")]
    if kind == "reported":
        return [("settings", "heartbeat_s")]
    return [p for p in numbers if p[-1] in ("ts", "count")][:1] or numbers[:1]


def hostile_corpus(devices: list[tuple[str, str, DeviceProfile]], per_device: int, now: int,
                   seed: int = 8) -> list[Hostile]:
    """`per_device` hostile payloads for each (device_id, site, profile), on every topic the profile has."""
    rng = random.Random(seed)
    out = []
    for device_id, site, profile in devices:
        kinds = [k for k in DEVICE_TOPICS if k not in ("env", "health", "traffic", "counts")
                 or (k == "counts" and profile.counts is not None) or k in profile.streams()]
        out += [hostile_message(kinds[i % len(kinds)], device_id, site, profile, now, rng) for i in range(per_device)]
    rng.shuffle(out)
    return out


# -- hostile variants of a command's arguments or a desired config --------------------------------
BODY_MUTATIONS = ("deep", "deep-ignored", "huge", "nul", "control", "nan", "infinity", "overflow", "string-number",
                  "bool-number", "surrogate", "bad-utf8", "not-object", "truncated", "unknown-field")


def hostile_variant(body: dict[str, Any], rng: random.Random, mutation: str | None = None,
                    huge_bytes: int = 1024 * 1024) -> tuple[str, bytes]:
    """One mutation of a valid JSON object that a strict reader must refuse (and must survive)."""
    body = json.loads(json.dumps(body))
    mutation = mutation or rng.choice(BODY_MUTATIONS)
    strings, numbers = _strings(body), _numbers(body)
    raw: str | None = None
    if mutation in ("deep", "deep-ignored"):
        if mutation == "deep":
            _set(body, rng.choice(strings + numbers), _MARK)
        else:
            body["extra"] = _MARK
        raw = _dumps(body).replace(json.dumps(_MARK), _deep(rng.choice((1100, 5000, 50_000)), rng))
    elif mutation == "huge":
        body["padding"] = "x" * huge_bytes
    elif mutation in ("nul", "control"):
        p = rng.choice(strings)
        _set(body, p, _get(body, p) + ("\x00" if mutation == "nul" else rng.choice(HOSTILE_CHARS)))
    elif mutation in ("nan", "infinity", "overflow"):
        _set(body, rng.choice(numbers), _MARK)
        token = {"nan": "NaN", "infinity": rng.choice(("Infinity", "-Infinity")), "overflow": "1e400"}[mutation]
        raw = _dumps(body).replace(json.dumps(_MARK), token)
    elif mutation == "string-number":
        p = rng.choice(numbers)
        _set(body, p, str(_get(body, p)))
    elif mutation == "bool-number":
        _set(body, rng.choice(numbers), True)
    elif mutation == "surrogate":
        _set(body, rng.choice(strings), _MARK)
        raw = _dumps(body).replace(json.dumps(_MARK), '"\\ud800"')
    elif mutation == "bad-utf8":
        _set(body, rng.choice(strings), _MARK)
        return mutation, _dumps(body).encode().replace(json.dumps(_MARK).encode(), b'"\xff\xfe"')
    elif mutation == "not-object":
        raw = rng.choice(("[1, 2]", '"text"', "null", "7", "not json at all"))
    elif mutation == "truncated":
        text = _dumps(body)
        raw = text[: rng.randrange(1, len(text) - 1)]
    elif mutation == "unknown-field":
        body["self_destruct"] = True
    else:
        raise ValueError(f"unknown mutation {mutation!r}; known: {BODY_MUTATIONS}")
    return mutation, (raw if raw is not None else _dumps(body)).encode()
