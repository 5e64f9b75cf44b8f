"""One evaluation cycle: each rule's set-based query over all its devices, then the transitions.

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

from cloud.alerts.rules import LATEST_TABLE, Rule, ThresholdRule
from cloud.alerts.store import Raise, clear_alarm, raise_alarms

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (rule, device_id)


@dataclass
class CycleResult:
    raised: int = 0
    cleared: int = 0
    pending: int = 0
    errors: list[str] = field(default_factory=list)
    refresh_s: float = 0.0  # reading the latest readings
    rules_s: float = 0.0    # the rules' queries and transitions


class LatestReadings:
    """Each device's latest reading of the metrics threshold rules watch, in a session (temporary) table of
    the evaluation connection, kept current by reading only the last `overlap_s` of telemetry each cycle.
    Rows that changed carry the cycle number, so rules look only at devices whose value moved (and at those
    they track): the work per cycle follows the readings that arrived, not the size of the fleet."""

    def __init__(self, overlap_s: float = 3.0, full_every_s: float = 300.0) -> None:
        # Each read covers readings stamped since the previous read began, minus overlap_s + ingest's reported
        # lag; one committed later than that after its own time stamp waits for the next full load.
        self.overlap_s = overlap_s
        self.full_every_s = full_every_s
        self.cycle = 0
        self._full_at = 0.0
        self._prev_at: datetime | None = None
        self._conn: psycopg.Connection | None = None
        self._metrics: tuple[str, ...] = ()

    def refresh(self, conn: psycopg.Connection, rules: Sequence[Rule]) -> int:
        watched = [r for r in rules if isinstance(r, ThresholdRule)]
        metrics = tuple(sorted({r.metric for r in watched}))
        self.cycle += 1
        if not metrics:
            return self.cycle
        stale = max(r.stale_s for r in watched)
        full = (self._conn is not conn or metrics != self._metrics
                or time.monotonic() - self._full_at > self.full_every_s)
        if full:  # new connection (its temp table is gone) or new metrics: load the whole window
            conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {LATEST_TABLE} (device_id text NOT NULL,"
                         " metric text NOT NULL, value double precision NOT NULL, ts timestamptz NOT NULL,"
                         " cycle bigint NOT NULL,"
                         " PRIMARY KEY (metric, device_id))")
            conn.execute(f"CREATE INDEX IF NOT EXISTS {LATEST_TABLE}_changed ON {LATEST_TABLE} (metric, cycle)")
            conn.execute(f"TRUNCATE {LATEST_TABLE}")
        (now,) = conn.execute("SELECT now()").fetchone() or (None,)
        assert now is not None
        # Everything stamped since the previous read began, reaching back by the overlap and ingest's lag.
        reach = timedelta(seconds=self.overlap_s + self._ingest_lag_s(conn))
        start = now - timedelta(seconds=stale)
        if not full and self._prev_at is not None:
            start = max(start, self._prev_at - reach)
        conn.execute(
            f"INSERT INTO {LATEST_TABLE} AS l (device_id, metric, value, ts, cycle)"
            " SELECT DISTINCT ON (t.metric, t.device_id) t.device_id, t.metric, t.value, t.ts, %(cycle)s"
            " FROM telemetry t WHERE t.metric = ANY(%(metrics)s) AND t.ts > %(start)s"
            " ORDER BY t.metric, t.device_id, t.ts DESC"
            " ON CONFLICT (metric, device_id) DO UPDATE SET value = EXCLUDED.value, ts = EXCLUDED.ts,"
            " cycle = EXCLUDED.cycle WHERE EXCLUDED.ts > l.ts",
            {"cycle": self.cycle, "metrics": list(metrics), "start": start})
        if full:
            conn.execute(f"ANALYZE {LATEST_TABLE}")
            self._full_at = time.monotonic()
        conn.commit()
        self._conn, self._metrics, self._prev_at = conn, metrics, now
        return self.cycle


    @staticmethod
    def _ingest_lag_s(conn: psycopg.Connection) -> float:
        """How late ingest commits readings (time stamp to commit) as its processes report it: the window reaches
        back past that, or a reading committed late would be missed until the next full load."""
        row = conn.execute("SELECT max(greatest(coalesce(latency_p50_ms, 0), coalesce(lag_ms, 0))) / 1000"
                           " FROM ingest_instances WHERE updated_at > now() - interval '1 minute'").fetchone()
        return float(row[0]) if row and row[0] is not None else 0.0


class Evaluator:
    def __init__(self, actor: str) -> None:
        self.actor = actor
        self.pending: dict[Key, datetime] = {}
        self.latest = LatestReadings()
        self._loaded = False
        self._last_run: dict[str, float] = {}
        self._since: dict[str, int] = {}  # rule -> first cycle of readings it has not seen yet

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

    def cycle(self, conn: psycopg.Connection, rules: Sequence[Rule]) -> CycleResult:
        if not self._loaded:
            self.load_state(conn)
        out = CycleResult()
        t0 = time.perf_counter()
        cycle = self.latest.refresh(conn, rules)
        out.refresh_s = time.perf_counter() - t0
        active = {(r, d): i for i, r, d in conn.execute(
            "SELECT id, rule, device_id FROM alarms WHERE cleared_at IS NULL").fetchall()}
        conn.commit()
        now = time.monotonic()
        for rule in rules:
            if rule.every_s and now - self._last_run.get(rule.name, -1e18) < rule.every_s:
                continue
            self._last_run[rule.name] = now
            try:
                self._rule(conn, rule, active, out)
                self._since[rule.name] = cycle + 1
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

    def _rule(self, conn: psycopg.Connection, rule: Rule, active: dict[Key, int], out: CycleResult) -> None:
        tracked = sorted({d for (r, d) in self.pending if r == rule.name} | {d for (r, d) in active if r == rule.name})
        sql, params = rule.query()
        with conn.cursor() as cur:
            # Never a prepared (generic) plan: the selector and the changed-since cycle decide the plan.
            rows = cur.execute(sql, {**params, "tracked": tracked, "since": self._since.get(rule.name, 0)},
                               prepare=False).fetchall()
            (now,) = cur.execute("SELECT now()").fetchone() or (None,)
            assert now is not None
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
