"""The readings every threshold rule needs this cycle, in one query for all of them, evaluated in Python.

A device's state under a threshold rule can change only if it is tracked (pending or alarmed: its clear
condition or its clock matter) or if a reading beyond the rule's threshold arrived. So each cycle reads:
the devices with a reading beyond the loosest threshold of its metric among the telemetry stamped since the
previous read (a filtered scan of the newest rows: no sort, no write), plus the tracked devices, and for
those only their latest reading (one primary-key probe each). The work follows the hot readings, not the
fleet nor the message rate's square; 200 rules cost one round trip instead of 200.

"Since the previous read" is by commit, not by time stamp: ingest records, in the transaction that writes
them, the oldest time stamp of each batch of readings (telemetry_commits), and the window reaches back to the
oldest one among the commits this reader has not seen yet (never past the rules' staleness: an older reading
is no reading). A reading committed late, when ingest is behind or a device replays its outbox, is read on
the next cycle, not on the next full read.

A full read (every selected device's latest reading, one probe per device and metric) runs when the rules
change and every `full_every_s`: the net for readings written by something other than ingest later than
`overlap_s` after their time stamp, and for a transaction open longer than COMMIT_SLACK_S.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import psycopg

from cloud.alerts.rules import ThresholdRule

Row = tuple[str, str, float | None, datetime | None, bool, bool]  # (device, site, value, value_ts, cond, clr)


@dataclass(frozen=True)
class Reading:
    device_id: str
    site: str
    profile: str
    tags: frozenset[str]
    value: float
    ts: datetime


# The loosest threshold per metric: readings at or above `above`, or at or below `below`, can raise something.
_WATCH = "unnest(%(metrics)s::text[], %(above)s::float8[], %(below)s::float8[]) AS w(metric, above, below)"
_LATEST = ("CROSS JOIN LATERAL (SELECT t.value, t.ts FROM telemetry t WHERE t.device_id = c.device_id"
           " AND t.metric = c.metric AND t.ts > now() - %(stale)s * interval '1 second'"
           " ORDER BY t.ts DESC LIMIT 1) l")
_OUT = ("SELECT c.metric, d.device_id, d.site, d.profile,"
        " coalesce(ARRAY(SELECT jsonb_array_elements_text(CASE WHEN jsonb_typeof(d.metadata->'tags') = 'array'"
        " THEN d.metadata->'tags' END)), '{}'), l.value, l.ts FROM cand c JOIN devices d USING (device_id) ")
_TRACKED = "SELECT * FROM unnest(%(t_metrics)s::text[], %(t_devices)s::text[]) AS k(metric, device_id)"
INCREMENTAL = (
    f"WITH cand AS (SELECT DISTINCT t.metric, t.device_id FROM telemetry t JOIN {_WATCH} ON t.metric = w.metric"
    " WHERE t.ts > %(start)s AND (t.value >= w.above OR t.value <= w.below)"
    f" UNION {_TRACKED}) {_OUT}{_LATEST}")
FULL = (f"WITH cand AS (SELECT w.metric, d.device_id, w.above, w.below FROM devices d CROSS JOIN {_WATCH})"
        f" {_OUT}{_LATEST} WHERE l.value >= c.above OR l.value <= c.below"
        f" OR (c.metric, c.device_id) IN ({_TRACKED})")


# Commits recorded since the previous read began, minus the slack: a transaction's row carries its start, and
# one may commit up to this long after it started and still be seen.
_COMMITS = "SELECT id, oldest_ts FROM telemetry_commits WHERE committed_at > %s"
COMMIT_SLACK_S = 60.0


def _loosest(rules: Sequence[ThresholdRule]) -> tuple[list[str], list[float], list[float]]:
    metrics = sorted({r.metric for r in rules})
    above = [min((r.value for r in rules if r.metric == m and r.op in (">", ">=")), default=math.inf)
             for m in metrics]
    below = [max((r.value for r in rules if r.metric == m and r.op in ("<", "<=")), default=-math.inf)
             for m in metrics]
    return metrics, above, below


class ThresholdReader:
    """Keeps the window's start between cycles; one instance per evaluation connection's evaluator."""

    def __init__(self, overlap_s: float = 3.0, full_every_s: float = 300.0) -> None:
        # Each read covers readings stamped since the previous read began minus overlap_s, and back to the
        # oldest reading of every commit not seen yet.
        self.overlap_s = overlap_s
        self.full_every_s = full_every_s
        self._prev_at: datetime | None = None
        self._seen_commits: set[int] = set()  # ids returned by the previous read's look at telemetry_commits
        self._full_at = -math.inf
        self._rules: list[ThresholdRule] = []
        self.last_full = False

    def read(self, conn: psycopg.Connection, rules: Sequence[ThresholdRule], now: datetime,
             tracked: Iterable[tuple[str, str]]) -> dict[str, list[Reading]]:
        """Latest reading per metric of every device that is hot or tracked ((metric, device) pairs)."""
        self.last_full = False
        if not rules:
            self._prev_at = None
            return {}
        metrics, above, below = _loosest(rules)
        pairs = sorted(set(tracked))
        stale_s = max(r.stale_s for r in rules)
        params = {"metrics": metrics, "above": above, "below": below, "stale": stale_s,
                  "t_metrics": [m for m, _ in pairs], "t_devices": [d for _, d in pairs]}
        full = (self._prev_at is None or list(rules) != self._rules
                or time.monotonic() - self._full_at > self.full_every_s)
        unseen_oldest = self._new_commits(conn, now)
        if full:
            sql = FULL
            self._full_at = time.monotonic()
        else:
            assert self._prev_at is not None
            sql = INCREMENTAL
            start = self._prev_at - timedelta(seconds=self.overlap_s)
            if unseen_oldest is not None:  # no further back than the staleness: an older reading is no reading
                oldest = unseen_oldest - timedelta(milliseconds=1)  # the window is open: ts > start
                start = min(start, max(oldest, now - timedelta(seconds=stale_s)))
            params["start"] = start
        with conn.cursor() as cur:
            rows = cur.execute(sql, params, prepare=False).fetchall()
        self._prev_at, self._rules, self.last_full = now, list(rules), full
        out: dict[str, list[Reading]] = {}
        for metric, dev, site, profile, tags, value, ts in rows:
            out.setdefault(metric, []).append(Reading(dev, site, profile, frozenset(tags), value, ts))
        return out

    def _new_commits(self, conn: psycopg.Connection, now: datetime) -> datetime | None:
        """The oldest reading among ingest's commits this reader has not seen (None: none new). Read before
        the readings: a commit in between is read again next cycle, which only repeats a reading."""
        since = (self._prev_at or now) - timedelta(seconds=COMMIT_SLACK_S)
        rows = conn.execute(_COMMITS, (since,)).fetchall()
        unseen = [oldest for i, oldest in rows if i not in self._seen_commits]
        self._seen_commits = {i for i, _ in rows}
        return min(unseen, default=None)


def threshold_rows(rule: ThresholdRule, readings: Iterable[Reading], now: datetime,
                   tracked: set[str]) -> list[Row]:
    """The rows the rule's SQL would return: selected devices whose reading is fresh and either in condition
    or tracked."""
    upward = rule.op in (">", ">=")
    clear_at = rule.value - rule.hysteresis if upward else rule.value + rule.hysteresis
    fresh = now - timedelta(seconds=rule.stale_s)
    sel = rule.select
    out: list[Row] = []
    for r in readings:
        if r.ts <= fresh or not sel.matches(r.device_id, r.site, r.profile, r.tags):
            continue
        v = r.value
        cond = {">": v > rule.value, ">=": v >= rule.value, "<": v < rule.value, "<=": v <= rule.value}[rule.op]
        clr = v <= clear_at if upward else v >= clear_at
        if cond or r.device_id in tracked:
            out.append((r.device_id, r.site, v, r.ts, cond, clr))
    return out
