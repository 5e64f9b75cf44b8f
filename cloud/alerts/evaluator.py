"""One evaluation cycle: the readings of all threshold rules in one query (thresholds.py), each other rule's
set-based query over all its devices, then the transitions.

Per (rule, device) the evaluator knows one of: nothing, pending (the condition holds since `since`, not yet
for the rule's duration; persisted in alert_eval_state so a restart or a takeover keeps the clock), or an
active alarm (read from alarms every cycle, so operators' clears are seen). Transitions of one rule commit
in one transaction with the alarm rows and their history (the notification outbox).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import psycopg

from cloud.alerts.rules import Rule, ThresholdRule
from cloud.alerts.store import Raise, clear_alarm, raise_alarms
from cloud.alerts.thresholds import Reading, Row, ThresholdReader, threshold_rows

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (rule, device_id)


@dataclass
class CycleResult:
    raised: int = 0
    cleared: int = 0
    pending: int = 0
    errors: list[str] = field(default_factory=list)
    refresh_s: float = 0.0  # reading what the threshold rules need
    rules_s: float = 0.0    # the other rules' queries and every transition


class Evaluator:
    def __init__(self, actor: str) -> None:
        self.actor = actor
        self.pending: dict[Key, datetime] = {}
        self.thresholds = ThresholdReader()
        self._loaded = False
        self._last_run: dict[str, float] = {}
        # Threshold rules not due this cycle keep the readings they have not seen yet (newest per device).
        self._backlog: dict[str, dict[str, Reading]] = {}

    def load_state(self, conn: psycopg.Connection) -> None:
        """On becoming active: take over the pending clocks the previous evaluator persisted."""
        rows = conn.execute("SELECT rule, device_id, since FROM alert_eval_state").fetchall()
        conn.commit()
        self.pending = {(r, d): s for r, d, s in rows}
        self._loaded = True

    def forget_rules_except(self, conn: psycopg.Connection, names: set[str]) -> None:
        """A rule removed from the files leaves no pending clock behind (its active alarms stay for operators)."""
        stale = [k for k in self.pending if k[0] not in names]
        if stale:
            conn.execute("DELETE FROM alert_eval_state WHERE NOT (rule = ANY(%s))", (sorted(names),))
            conn.commit()
            for k in stale:
                del self.pending[k]
        for name in [n for n in self._backlog if n not in names]:
            del self._backlog[name]

    def _tracked(self, rule: str, active: dict[Key, int]) -> set[str]:
        return {d for (r, d) in self.pending if r == rule} | {d for (r, d) in active if r == rule}

    def cycle(self, conn: psycopg.Connection, rules: Sequence[Rule]) -> CycleResult:
        if not self._loaded:
            self.load_state(conn)
        out = CycleResult()
        t0 = time.perf_counter()
        (now,) = conn.execute("SELECT now()").fetchone() or (None,)
        assert now is not None
        active = {(r, d): i for i, r, d in conn.execute(
            "SELECT id, rule, device_id FROM alarms WHERE cleared_at IS NULL").fetchall()}
        tracked = {r.name: self._tracked(r.name, active) for r in rules}
        watched = [r for r in rules if isinstance(r, ThresholdRule)]
        read_ok = True
        try:
            readings = self.thresholds.read(conn, watched, now,
                                            ((r.metric, d) for r in watched for d in tracked[r.name]))
        except psycopg.errors.Error as e:
            if conn.closed or conn.broken:
                raise
            conn.rollback()
            out.errors.append(f"threshold readings: {type(e).__name__}: {e}".strip())
            log.error("%s", out.errors[-1])
            read_ok, readings = False, {}
        for r in watched:
            seen = self._backlog.setdefault(r.name, {})
            for reading in readings.get(r.metric, ()):
                seen[reading.device_id] = reading
        out.refresh_s = time.perf_counter() - t0
        mono = time.monotonic()
        for rule in rules:
            if isinstance(rule, ThresholdRule) and not read_ok:
                continue  # its readings could not be read this cycle
            if rule.every_s and mono - self._last_run.get(rule.name, -1e18) < rule.every_s:
                continue
            self._last_run[rule.name] = mono
            try:
                if isinstance(rule, ThresholdRule):
                    rows = threshold_rows(rule, self._backlog.pop(rule.name, {}).values(), now, tracked[rule.name])
                else:
                    sql, params = rule.query()
                    # Never a prepared (generic) plan: the selector decides the plan.
                    rows = conn.execute(sql, {**params, "tracked": sorted(tracked[rule.name])},
                                        prepare=False).fetchall()
                self._apply(conn, rule, rows, active, now, out)
            except psycopg.errors.Error as e:
                if conn.closed or conn.broken:
                    raise
                conn.rollback()
                msg = f"rule {rule.name}: {type(e).__name__}: {e}".strip()
                log.error("%s", msg)
                out.errors.append(msg)
        conn.commit()
        out.rules_s = time.perf_counter() - t0 - out.refresh_s
        out.pending = len(self.pending)
        return out

    def _apply(self, conn: psycopg.Connection, rule: Rule, rows: Sequence[Row], active: dict[Key, int],
               now: datetime, out: CycleResult) -> None:
        """Pending clocks, raises and clears from the rule's rows (device, site, value, value_ts, cond, clr)."""
        with conn.cursor() as cur:
            seen: set[str] = set()
            start: list[tuple[str, str, datetime, float | None]] = []
            stop: list[str] = []
            raises: list[Raise] = []
            clears: list[tuple[int, float | None]] = []
            hold = timedelta(seconds=rule.for_s)
            for device_id, site, value, value_ts, cond, clr in rows:
                seen.add(device_id)
                key = (rule.name, device_id)
                if key in active:
                    if clr:
                        clears.append((active[key], value))
                    continue
                if not cond:
                    if key in self.pending:
                        stop.append(device_id)
                    continue
                since = self.pending.get(key)
                if since is None:
                    # The condition's clock starts at the reading that first showed it (not at our poll).
                    since = min(value_ts, now) if isinstance(value_ts, datetime) else now
                    start.append((rule.name, device_id, since, value))
                if now - since >= hold:
                    raises.append(Raise(rule.name, device_id, site, rule.kind, rule.severity, rule.message(value),
                                        value, since))
                    stop.append(device_id)
            # Pending devices that returned no row have no current reading: the condition is not observed.
            stop += [d for (r, d) in self.pending if r == rule.name and d not in seen]
            starting = {d for _, d, _, _ in start}
            stop = [d for d in dict.fromkeys(stop) if (rule.name, d) in self.pending or d in starting]
            if not (start or stop or raises or clears):
                return  # nothing to write: the read stays in the cycle's transaction (one commit per cycle)
            if start:
                cur.executemany("INSERT INTO alert_eval_state (rule, device_id, since, value) VALUES (%s, %s, %s, %s)"
                                " ON CONFLICT (rule, device_id) DO UPDATE SET since = EXCLUDED.since,"
                                " value = EXCLUDED.value", start)
            if stop:
                cur.execute("DELETE FROM alert_eval_state WHERE rule = %s AND device_id = ANY(%s)", (rule.name, stop))
            new_ids = raise_alarms(cur, raises, self.actor)
            cleared = sum(clear_alarm(cur, alarm_id, self.actor, value) for alarm_id, value in clears)
        conn.commit()
        for r, d, s, _ in start:
            self.pending[(r, d)] = s
        for d in stop:
            self.pending.pop((rule.name, d), None)
        out.raised += len(new_ids)
        out.cleared += cleared
