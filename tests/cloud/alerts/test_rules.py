"""Rule files: every sample validates, unknown fields and bad values are refused with the file named,
a running evaluator reloads on change and keeps its last good rules when an edit is broken."""

from __future__ import annotations

from pathlib import Path

import pytest
from alerts_support import pm25_rule, write_rules

from cloud.alerts.rules import RuleError, ThresholdRule, load_rules
from cloud.alerts.service import RuleSet
from cloud.alerts.settings import DEFAULT_RULES

KINDS = {"threshold", "rate_of_change", "out_of_range", "silent", "aqi_band", "dead_letters"}


def test_every_sample_rule_file_loads_and_every_kind_has_a_sample() -> None:
    rules = load_rules(DEFAULT_RULES)
    assert {r.kind for r in rules} == KINDS
    pm = next(r for r in rules if r.name == "pm25-high")
    assert isinstance(pm, ThresholdRule)
    assert (pm.value, pm.for_s, pm.hysteresis) == (50, 900, 5)
    congestion = next(r for r in rules if r.name == "congestion-high")
    assert (congestion.kind, congestion.for_s) == ("threshold", 300)


@pytest.mark.parametrize(("change", "error"), [
    ({"colour": "red"}, "Extra inputs are not permitted"),
    ({"severity": "urgent"}, "severity"),
    ({"for": "ten minutes"}, "is not a duration"),
    ({"op": "=="}, "op"),
    ({"name": "Has Spaces"}, "name"),
    ({"select": {"profile": ["env-gateway"]}}, "Extra inputs are not permitted"),
])
def test_bad_rules_are_refused_naming_the_file(tmp_path: Path, change: dict, error: str) -> None:
    path = write_rules(tmp_path, {**pm25_rule("r1", "dev-1"), **change})
    with pytest.raises(RuleError, match=error) as e:
        load_rules(tmp_path)
    assert str(path) in str(e.value)


def test_duplicate_rule_names_across_files_are_refused(tmp_path: Path) -> None:
    write_rules(tmp_path, pm25_rule("same", "dev-1"), name="a.yaml")
    write_rules(tmp_path, pm25_rule("same", "dev-2"), name="b.yaml")
    with pytest.raises(RuleError, match="already defined"):
        load_rules(tmp_path)


def test_ruleset_reloads_on_change_and_keeps_the_last_good_rules(tmp_path: Path) -> None:
    write_rules(tmp_path, pm25_rule("r1", "dev-1"))
    rs = RuleSet(tmp_path)
    assert [r.name for r in rs.rules] == ["r1"]
    assert not rs.refresh()
    write_rules(tmp_path, pm25_rule("r2", "dev-1"), name="more.yaml")
    assert rs.refresh()
    assert sorted(r.name for r in rs.rules) == ["r1", "r2"]
    (tmp_path / "more.yaml").write_text("rules: [{name: r2, kind: nope}]")
    assert not rs.refresh()
    assert sorted(r.name for r in rs.rules) == ["r1", "r2"]
    assert rs.error is not None
    assert "more.yaml" in rs.error
    (tmp_path / "more.yaml").unlink()
    assert rs.refresh()
    assert [r.name for r in rs.rules] == ["r1"]
    assert rs.error is None
