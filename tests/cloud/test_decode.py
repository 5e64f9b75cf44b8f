"""Decoder unit tests: every rejection carries a reason a technician can act on."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from cloud.ingest.decode import Decoder, copy_text, copy_timestamp
from cloud.ingest.registry import KnownDevice
from contract.messages import now_ms
from contract.profiles import get_profile

NOW = now_ms()
DEVICES = {"gw-1": KnownDevice("north", get_profile("env-gateway")),
           "cam-1": KnownDevice("north", get_profile("traffic-camera"))}
decoder = Decoder(DEVICES.get, max_payload_bytes=10_000, max_future_ms=300_000, max_age_ms=86_400_000)


def _msg(**over: object) -> bytes:
    body = {"v": 1, "device_id": "gw-1", "boot_id": "b1", "seq": 1, "sent_at": NOW,
            "samples": [{"ts": NOW - 1000, "values": {"pm25": 12.5, "noise": 61.0}}]}
    body.update(over)
    return json.dumps(body).encode()


def _ts(ms: int) -> str:
    """timestamptz text as PostgreSQL's COPY reads it, worked out independently of the decoder."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "+00"


def test_copy_timestamps_keep_the_millisecond_across_second_boundaries() -> None:
    for ms in (0, 999, 1000, 1_764_475_199_999, 1_764_475_200_000, NOW):
        assert copy_timestamp(ms) == _ts(ms)


def test_a_valid_message_becomes_copy_rows() -> None:
    d = decoder.decode("tlm/v1/north/gw-1/env", _msg(), NOW)
    assert d.dead is None
    assert d.telemetry == [f"{_ts(NOW - 1000)}\tgw-1\tpm25\t12.5\n", f"{_ts(NOW - 1000)}\tgw-1\tnoise\t61.0\n"]
    assert d.sent_at == NOW
    assert d.newest_ts == NOW - 1000


def _report(**fields: object) -> bytes:
    """A reported config as the edge agent sends it (contract.twin.ReportedConfig), with fields replaced."""
    body = {"v": 1, "device_id": "gw-1", "boot_id": "b", "ts": NOW, "status": "applied", "version": 4,
            "settings": {"heartbeat_s": 30}, **fields}
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("tlm/v1/north/gw-1/env", b'{"v": 1, "device', "malformed JSON"),
        ("tlm/v1/north/gw-1/env", b"\xff\xfe", "not UTF-8"),
        ("tlm/v1/north/gw-1/env", b"[1, 2]", "must be a JSON object"),
        ("tlm/v1/north/gw-1/env", _msg(v=2), "unsupported schema version 2"),
        ("tlm/v1/north/gw-9/env", _msg(device_id="gw-9"), "unknown device 'gw-9'"),
        ("tlm/v1/north/gw-1/env", _msg(device_id="gw-2"), "does not match topic"),
        ("tlm/v1/south/gw-1/env", _msg(), "registered at 'north'"),
        ("tlm/v1/north/gw-1/env", _msg(samples=[]), "schema: samples"),
        ("tlm/v1/north/gw-1/env", _msg(seq=-1), "schema: seq"),
        ("tlm/v1/north/gw-1/env", b"x" * 10_001, "oversize payload: 10001 bytes"),
        ("telemetry/north/gw-1", _msg(), "unknown topic"),
        ("tlm/v1/north/gw-1/counts", _msg(), "does not count objects"),
        ("evt/v1/north/gw-1/x", b'{"v": 1, "events": [{"kind": "a\\u0000b"}]}', "NUL character"),
        ("cfg/v1/gw-1/reported", _report(version=True), "schema: version"),
        ("cfg/v1/gw-1/reported", _report(settings={"heartbeat_s": "30"}), "schema: settings.heartbeat_s"),
        ("cfg/v1/gw-1/reported", _report(settings={"heartbeat_s": 30, "secret_knob": 1}), "settings.secret_knob"),
        ("cfg/v1/gw-1/reported", _report(v=True), "schema version"),
        ("cfg/v1/gw-1/reported", b'{"v": 1, "device_id": "gw-1", "version": 4, "config": {}}', "schema: boot_id"),
    ],
)
def test_unusable_messages_are_dead_lettered_whole_with_a_reason(topic: str, payload: bytes, reason: str) -> None:
    d = decoder.decode(topic, payload, NOW)
    assert d.dead is not None
    assert reason in d.dead.reason
    assert d.telemetry == []
    assert d.points == 0
    assert d.dead.payload == payload


def test_bad_points_are_rejected_and_good_points_of_the_same_message_kept() -> None:
    samples = [{"ts": NOW - 2000, "values": {"pm25": 12.0, "co2": 99999.0, "bogus": 1.0}},
               {"ts": NOW + 3_600_000, "values": {"pm25": 13.0}}]
    d = decoder.decode("tlm/v1/north/gw-1/env", _msg(samples=samples), NOW)
    assert d.telemetry == [f"{_ts(NOW - 2000)}\tgw-1\tpm25\t12.0\n"]
    assert d.dead is not None
    assert d.dead.reason.startswith("rejected 3 of 4 points")
    assert "co2=99999.0 outside [250, 10000] ppm" in d.dead.reason
    assert "unknown metric 'bogus'" in d.dead.reason
    assert "in the future" in d.dead.reason


def test_counts_are_checked_against_the_profile_classes_and_directions() -> None:
    body = {"v": 1, "device_id": "cam-1", "boot_id": "b", "seq": 3, "counts": [
        {"ts": NOW - 60_000, "interval_s": 60, "line": "north", "class": "car", "direction": "in", "count": 7},
        {"ts": NOW - 60_000, "interval_s": 60, "line": "north", "class": "tank", "direction": "in", "count": 1},
        {"ts": NOW - 60_000, "interval_s": 60, "line": "north", "class": "bus", "direction": "up", "count": 1}]}
    d = decoder.decode("tlm/v1/north/cam-1/counts", json.dumps(body).encode(), NOW)
    assert d.counts == [f"{_ts(NOW - 60_000)}\tcam-1\tnorth\tcar\tin\t60\t7\tb\n"]
    assert d.dead is not None
    assert "unknown class 'tank'" in d.dead.reason
    assert "unknown direction 'up'" in d.dead.reason


def test_status_events_and_reported_config_are_decoded() -> None:
    st = decoder.decode("state/v1/gw-1", json.dumps(
        {"v": 1, "device_id": "gw-1", "status": "online", "boot_id": "b", "ts": NOW, "firmware": "1.2"}).encode(), NOW)
    assert st.status is not None
    assert st.status.firmware == "1.2"
    assert st.dead is None
    ev = decoder.decode("evt/v1/north/gw-1/threshold", json.dumps(
        {"v": 1, "device_id": "gw-1", "boot_id": "b", "seq": 2,
         "events": [{"ts": NOW, "kind": "pm25_high", "severity": "warning", "details": {"value": 80}}]}).encode(), NOW)
    assert ev.events == [(NOW, "gw-1", "pm25_high", "warning", '{"value": 80}')]
    cfg = decoder.decode("cfg/v1/gw-1/reported", _report(), NOW)
    assert cfg.dead is None
    assert cfg.config is not None
    version, stored, ts = cfg.config
    assert (version, ts) == (4, NOW)
    assert json.loads(stored)["settings"]["heartbeat_s"] == 30.0  # what the silence check reads
    future = decoder.decode("cfg/v1/gw-1/reported", _report(ts=NOW + 86_400_000), NOW)
    assert future.dead is not None  # a report from the future would block every later one
    assert "ts" in future.dead.reason


def _raw(body: str) -> bytes:
    return body.replace("NOW", str(NOW - 1000)).encode()


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [  # strict types: lax mode would have stored every one of these
        ("tlm/v1/north/gw-1/env", _msg(samples=[{"ts": NOW, "values": {"pm25": "12.5"}}]), "valid number"),
        ("tlm/v1/north/gw-1/env", _msg(samples=[{"ts": NOW, "values": {"pm25": True}}]), "valid number"),
        ("tlm/v1/north/gw-1/env", _msg(samples=[{"ts": str(NOW), "values": {"pm25": 1.0}}]), "samples.0.ts"),
        ("tlm/v1/north/gw-1/env", _msg(seq=1.5), "schema: seq"),
        ("tlm/v1/north/gw-1/env", _msg(v=True), "unsupported schema version True"),
        ("tlm/v1/north/gw-1/env", _raw('{"device_id": "gw-1", "boot_id": "b", "seq": 1,'
                                       ' "samples": [{"ts": NOW, "values": {"pm25": 1.0}}]}'), "missing schema"),
        ("state/v1/gw-1", _raw('{"device_id": "gw-1", "status": "online", "boot_id": "b", "ts": NOW}'),
         "missing schema version"),
        ("tlm/v1/north/gw-1/env", _msg(boot_id="b\r1"), "boot_id: must not contain control characters"),
        # the stream level of the topic, against the profile
        ("tlm/v1/north/gw-1/traffic", _msg(), "stream 'traffic' is not one of profile env-gateway: env, health"),
        ("tlm/v1/north/gw-1/health", _msg(), "metric 'pm25' belongs on stream 'env', not 'health'"),
        # every timestamp bounded like telemetry's
        ("evt/v1/north/gw-1/x", json.dumps({"v": 1, "device_id": "gw-1", "boot_id": "b", "seq": 1,
                                            "events": [{"ts": 0, "kind": "k"}]}).encode(), "older than the retention"),
        ("evt/v1/north/gw-1/x", json.dumps({"v": 1, "device_id": "gw-1", "boot_id": "b", "seq": 1,
                                            "events": [{"ts": 32_500_000_000_000, "kind": "k"}]}).encode(), "future"),
        ("state/v1/gw-1", json.dumps({"v": 1, "device_id": "gw-1", "status": "offline", "boot_id": "b",
                                      "ts": NOW + 86_400_000}).encode(), "status ts"),
        ("evt/v1/north/gw-1/x", _raw('{"v": 1, "device_id": "gw-1", "boot_id": "b", "seq": 1,'
                                     ' "events": [{"ts": NOW, "kind": "k", "details": {"x": NaN}}]}'), "NaN or"),
        ("cfg/v1/gw-1/reported", _report(settings={"metrics": {"pm25": {"high": 1e400}}}), "NaN or Infinity"),
        ("cfg/v1/gw-1/reported", _report(ts=0), "older than the retention"),
        # what used to escape as RecursionError and kill ingest, on every kind of topic
        ("tlm/v1/north/gw-1/env", b'{"v": 1, "x": ' + b"[" * 4000 + b"]" * 4000 + b"}", "recursion limit"),
        ("cfg/v1/gw-1/reported", b'{"v": 1, "config": ' + b'{"a":' * 1500 + b"1" + b"}" * 1501, "recursion limit"),
        ("state/v1/gw-1", b"[" * 5000, "recursion limit"),
        # a NUL in the topic would make the device lookup itself fail, and the batch be retried for ever
        ("tlm/v1/north/gw-1\x00/env", _msg(), "topic contains a NUL character"),
    ],
)
def test_the_contract_is_strict_and_every_timestamp_bounded(topic: str, payload: bytes, reason: str) -> None:
    d = decoder.decode(topic, payload, NOW)
    assert d.dead is not None
    assert reason in d.dead.reason
    assert (d.points, d.status, d.config) == (0, None, None)


def test_copy_text_escapes_what_copy_would_misread_and_nothing_else() -> None:
    assert copy_text("north") == "north"
    assert copy_text("a\\b\tc\rd\ne") == "a\\\\b\\tc\\rd\\ne"


def test_a_backslash_in_a_line_name_is_kept_escaped_for_copy() -> None:
    body = {"v": 1, "device_id": "cam-1", "boot_id": "b\\1", "seq": 3, "counts": [
        {"ts": NOW - 60_000, "interval_s": 60, "line": "north\\side", "class": "car", "direction": "in", "count": 7}]}
    d = decoder.decode("tlm/v1/north/cam-1/counts", json.dumps(body).encode(), NOW)
    assert d.dead is None
    assert d.counts == [f"{_ts(NOW - 60_000)}\tcam-1\tnorth\\\\side\tcar\tin\t60\t7\tb\\\\1\n"]


def test_an_unexpected_error_while_decoding_one_message_dead_letters_it() -> None:
    """The per-message guard: a bug met by one payload (here: the device lookup itself) never escapes."""
    def broken(device_id: str) -> KnownDevice | None:
        raise KeyError(device_id)

    d = Decoder(broken, 10_000, 300_000, 86_400_000).decode("tlm/v1/north/gw-1/env", _msg(), NOW)
    assert d.dead is not None
    assert d.dead.reason.startswith("could not decode (KeyError")
