import pytest

from contract import topics


@pytest.mark.parametrize(
    ("topic", "kind", "device", "site", "leaf"),
    [
        ("tlm/v1/district-01/gw-7/env", "tlm", "gw-7", "district-01", "env"),
        ("evt/v1/d2/cam-1/congestion_start", "evt", "cam-1", "d2", "congestion_start"),
        ("state/v1/gw-7", "state", "gw-7", None, None),
        ("cfg/v1/gw-7/reported", "cfg", "gw-7", None, "reported"),
        ("cmd/v1/gw-7/ping", "cmd", "gw-7", None, "ping"),
    ],
)
def test_contract_topics_parse_to_their_parts(topic: str, kind: str, device: str, site: str | None,
                                               leaf: str | None) -> None:
    t = topics.parse(topic)
    assert (t.kind, t.device_id, t.site, t.leaf) == (kind, device, site, leaf)


def test_builders_and_parser_agree() -> None:
    assert topics.parse(topics.telemetry("s", "d", "env")) == topics.Topic("tlm", "d", "s", "env")
    assert topics.parse(topics.state("d")).device_id == "d"
    assert topics.parse(topics.config_desired("d")).leaf == "desired"


@pytest.mark.parametrize("bad", ["tlm/v2/s/d/env", "tlm/v1/s/d", "foo", "state/v1/a/b", ""])
def test_unknown_topics_are_refused_with_the_topic_named(bad: str) -> None:
    with pytest.raises(topics.TopicError, match="topic"):
        topics.parse(bad)


@pytest.mark.parametrize("bad", ["", "a/b", "a+b", "#", "x" * 65])
def test_ids_that_would_break_topic_levels_are_refused(bad: str) -> None:
    with pytest.raises(topics.TopicError):
        topics.check_segment(bad, "device id")
