"""Alarm rules as YAML: one pydantic model per kind (a discriminated union on `kind`), strict about unknown
fields, each compiled to one set-based SQL query that evaluates the rule over every selected device at once.

A file holds `rules: [...]`; cloud/alerts/rules/ has one sample per kind. Durations are seconds or a string
such as "90s", "15m", "1h".
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from cloud.alerts.aqi import BAND_KEYS, band_by_key

Severity = Literal["critical", "major", "minor", "warning"]
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def _seconds(v: Any) -> Any:
    if isinstance(v, str):
        m = _DURATION.match(v)
        if not m:
            raise ValueError(f"{v!r} is not a duration: use seconds or e.g. '90s', '15m', '1h'")
        return float(m.group(1)) * _UNITS[m.group(2)]
    return v


Seconds = Annotated[float, BeforeValidator(_seconds), Field(ge=0)]
RuleName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$", description="unique; part of the MQTT topic")]


class RuleError(ValueError):
    """A rule file that cannot be used, naming the file and what is wrong."""


class Selector(BaseModel):
    """Which devices a rule watches. Empty lists select everything; lists are ORed within, ANDed across."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    profiles: list[str] = Field(default_factory=list)
    sites: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list, description="devices.metadata->'tags' holds any of these")
    devices: list[str] = Field(default_factory=list)

    def sql(self) -> tuple[str, dict[str, Any]]:
        where = ["(cardinality(%(sel_profiles)s::text[]) = 0 OR d.profile = ANY(%(sel_profiles)s))",
                 "(cardinality(%(sel_sites)s::text[]) = 0 OR d.site = ANY(%(sel_sites)s))",
                 "(cardinality(%(sel_tags)s::text[]) = 0 OR d.metadata->'tags' ?| %(sel_tags)s)",
                 "(cardinality(%(sel_devices)s::text[]) = 0 OR d.device_id = ANY(%(sel_devices)s))"]
        return " AND ".join(where), {"sel_profiles": self.profiles, "sel_sites": self.sites,
                                     "sel_tags": self.tags, "sel_devices": self.devices}

    def matches(self, device_id: str, site: str, profile: str, tags: frozenset[str]) -> bool:
        """The same test as sql(), for devices already read (threshold rules are evaluated in Python)."""
        return ((not self.profiles or profile in self.profiles) and (not self.sites or site in self.sites)
                and (not self.tags or not tags.isdisjoint(self.tags))
                and (not self.devices or device_id in self.devices))


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: RuleName
    severity: Severity
    description: str = ""
    enabled: bool = True
    select: Selector = Field(default_factory=Selector)
    for_s: Seconds = Field(default=0.0, alias="for", description="how long the condition must hold to raise")
    every_s: Seconds = Field(default=0.0, alias="every", description="evaluate at most this often (0: every cycle)")

    def message(self, value: float | None) -> str:
        return f"{self.description or self.name}" + (f" (value {value:g})" if value is not None else "")

    def query(self) -> tuple[str, dict[str, Any]]:
        """SQL yielding (device_id, site, value, value_ts, cond, clr) for every selected device whose
        condition holds or which is in %(tracked)s (pending or alarmed): for any other device neither value
        changes anything (a device in the hysteresis band that is not alarmed stays as it is)."""
        raise NotImplementedError

    def _wrap(self, body: str, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        sel, sel_params = self.select.sql()
        sql = (f"WITH sel AS (SELECT d.device_id, d.site FROM devices d WHERE {sel}), v AS ({body}) "
               "SELECT device_id, site, value, value_ts, cond, clr FROM v "
               "WHERE cond OR device_id = ANY(%(tracked)s)")
        return sql, {**sel_params, **params}


class ThresholdRule(_Rule):
    """The latest reading of a metric beyond a value (PM2.5 > 50 µg/m³ for 15 min, congestion >= 3 for
    5 min). Clears once the reading is back past the threshold by `hysteresis`.

    The evaluator reads the readings of all threshold rules at once and tests them in Python
    (cloud/alerts/thresholds.py); query() is the same test in SQL, for `ioc alerts test --db`."""

    kind: Literal["threshold"]
    metric: str
    op: Literal[">", ">=", "<", "<="]
    value: float
    hysteresis: float = Field(default=0.0, ge=0)
    stale_s: Seconds = Field(default=120.0, gt=0, description="readings older than this are no reading")

    def query(self) -> tuple[str, dict[str, Any]]:
        upward = self.op in (">", ">=")
        clr = "l.value <= %(clear_at)s" if upward else "l.value >= %(clear_at)s"
        cond = f"l.value {self.op} %(threshold)s"
        body = (f"SELECT sel.device_id, sel.site, l.value, l.ts AS value_ts, {cond} AS cond, {clr} AS clr"
                " FROM sel CROSS JOIN LATERAL (SELECT t.value, t.ts FROM telemetry t"
                " WHERE t.device_id = sel.device_id AND t.metric = %(metric)s"
                " AND t.ts > now() - %(stale)s * interval '1 second' ORDER BY t.ts DESC LIMIT 1) l")
        clear_at = self.value - self.hysteresis if upward else self.value + self.hysteresis
        return self._wrap(body, {"metric": self.metric, "threshold": self.value, "clear_at": clear_at,
                                 "stale": self.stale_s})


class RateOfChangeRule(_Rule):
    """A metric moving by more than `change` within `window` (water level rising > 0.10 m in 10 min);
    a negative change watches falls."""

    kind: Literal["rate_of_change"]
    metric: str
    change: float = Field(description="newest minus oldest reading in the window")
    window_s: Seconds = Field(alias="window", gt=0)
    hysteresis: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _change_not_zero(self) -> RateOfChangeRule:
        if self.change == 0:
            raise ValueError("change must be positive (rise) or negative (fall), not 0")
        return self

    def query(self) -> tuple[str, dict[str, Any]]:
        sign = 1.0 if self.change > 0 else -1.0
        body = ("SELECT sel.device_id, sel.site, r.delta AS value, r.ts AS value_ts, "
                "%(sign)s * r.delta > %(limit)s AS cond, %(sign)s * r.delta <= %(clear_at)s AS clr "
                "FROM sel CROSS JOIN LATERAL (SELECT (array_agg(t.value ORDER BY t.ts DESC))[1]"
                " - (array_agg(t.value ORDER BY t.ts))[1] AS delta, max(t.ts) AS ts FROM telemetry t"
                " WHERE t.device_id = sel.device_id AND t.metric = %(metric)s"
                " AND t.ts > now() - %(window)s * interval '1 second' HAVING count(*) >= 2) r")
        limit = abs(self.change)
        return self._wrap(body, {"metric": self.metric, "sign": sign, "limit": limit,
                                 "clear_at": limit - self.hysteresis, "window": self.window_s})


class _DeadLetterCount(_Rule):
    window_s: Seconds = Field(alias="window", gt=0)

    def _count_query(self, reason_like: str, limit: float, clear_at: float) -> tuple[str, dict[str, Any]]:
        body = ("SELECT sel.device_id, sel.site, c.n::float8 AS value, now() AS value_ts, "
                "c.n > %(limit)s AS cond, c.n <= %(clear_at)s AS clr FROM sel CROSS JOIN LATERAL ("
                "SELECT count(*) AS n FROM dead_letters x WHERE x.device_id = sel.device_id"
                " AND x.received_at > now() - %(window)s * interval '1 second' AND x.reason LIKE %(like)s) c")
        return self._wrap(body, {"limit": limit, "clear_at": clear_at, "window": self.window_s,
                                 "like": reason_like})


class OutOfRangeRule(_DeadLetterCount):
    """Readings outside the profile's valid range. Ingest refuses them into dead_letters with the reason
    "<metric>=<value> outside [min, max]", so this counts those per device over the window."""

    kind: Literal["out_of_range"]
    metric: str | None = Field(default=None, description="one metric, or any metric of the profile")
    min_count: int = Field(default=1, ge=1)

    def query(self) -> tuple[str, dict[str, Any]]:
        like = f"{self.metric}=% outside [%" if self.metric else "%=% outside [%"
        return self._count_query(like, self.min_count - 1, 0)


class DeadLettersRule(_DeadLetterCount):
    """More than `max_count` dead letters of any reason from one device within the window."""

    kind: Literal["dead_letters"]
    max_count: int = Field(ge=0)
    clear_count: int | None = Field(default=None, ge=0, description="clear at or below; default max_count // 2")

    def query(self) -> tuple[str, dict[str, Any]]:
        clear = self.clear_count if self.clear_count is not None else self.max_count // 2
        return self._count_query("%", self.max_count, min(clear, self.max_count))


class SilentRule(_Rule):
    """A device that has not been heard for `heartbeats` heartbeat intervals (its last_seen, which ingest
    updates on every message); a registered device never heard since registration counts from then."""

    kind: Literal["silent"]
    heartbeats: int = Field(ge=1)
    heartbeat_s: Seconds = Field(default=30.0, gt=0, description="the health stream interval (health.yaml)")

    def query(self) -> tuple[str, dict[str, Any]]:
        seen = "coalesce(st.last_seen, d.created_at)"
        sel, sel_params = self.select.sql()
        sql = (f"SELECT * FROM (SELECT d.device_id, d.site, extract(epoch FROM now() - {seen})::float8 AS value,"
               f" {seen} AS value_ts, now() - {seen} > %(limit)s * interval '1 second' AS cond,"
               f" now() - {seen} <= %(heartbeat)s * interval '1 second' AS clr"
               f" FROM devices d LEFT JOIN device_status st ON st.device_id = d.device_id WHERE {sel}) v"
               " WHERE cond OR device_id = ANY(%(tracked)s)")
        return sql, {**sel_params, "limit": self.heartbeats * self.heartbeat_s, "heartbeat": self.heartbeat_s}


class AqiBandRule(_Rule):
    """The station's latest hourly VN_AQI (NowCast, migration 0031) reached a band; clears once it is
    `hysteresis` AQI points below the band's lower bound."""

    kind: Literal["aqi_band"]
    band: Literal[BAND_KEYS]  # type: ignore[valid-type]
    hysteresis: float = Field(default=5.0, ge=0)
    every_s: Seconds = Field(default=60.0, alias="every", description="hourly values: once a minute is plenty")

    def query(self) -> tuple[str, dict[str, Any]]:
        low = band_by_key(self.band).low
        body = ("SELECT sel.device_id, sel.site, a.aqi::float8 AS value, a.hour AS value_ts,"
                " a.aqi >= %(low)s AS cond, a.aqi < %(clear_at)s AS clr FROM sel"
                " JOIN (SELECT DISTINCT ON (q.device_id) q.device_id, q.aqi, q.hour"
                "  FROM ioc_vn_aqi_hourly(now() - interval '1 hour', now()) q WHERE q.aqi IS NOT NULL"
                "  ORDER BY q.device_id, q.hour DESC) a ON a.device_id = sel.device_id")
        return self._wrap(body, {"low": low, "clear_at": low - self.hysteresis})


Rule = Annotated[ThresholdRule | RateOfChangeRule | OutOfRangeRule | DeadLettersRule | SilentRule | AqiBandRule,
                 Field(discriminator="kind")]


class RuleFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rules: list[Rule]


_FILE = TypeAdapter(RuleFile)


def load_file(path: Path) -> list[Rule]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        return _FILE.validate_python(data).rules
    except (OSError, yaml.YAMLError, ValidationError) as e:
        raise RuleError(f"{path}: {e}") from None


def rule_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.yaml") if p.is_file()) + sorted(
        p for p in directory.glob("*.yml") if p.is_file())


def load_rules(directory: Path) -> list[Rule]:
    """Every enabled rule of every *.yaml file; names must be unique across files."""
    if not directory.is_dir():
        raise RuleError(f"{directory}: no such rules folder")
    rules: list[Rule] = []
    where: dict[str, Path] = {}
    for path in rule_files(directory):
        for rule in load_file(path):
            if rule.name in where:
                raise RuleError(f"{path}: rule {rule.name!r} is already defined in {where[rule.name]}")
            where[rule.name] = path
            if rule.enabled:
                rules.append(rule)
    return rules


def fingerprint(directory: Path) -> tuple[tuple[str, int, int], ...]:
    """What changes when a rule file is edited, added or removed (checked every cycle, cheaply)."""
    out = []
    for p in rule_files(directory):
        try:
            st = p.stat()
        except OSError:
            continue
        out.append((p.name, st.st_mtime_ns, st.st_size))
    return tuple(out)
