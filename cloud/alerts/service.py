"""The evaluator process: standby until it holds the PostgreSQL advisory lock, then evaluate every rule
each cycle, notify, and report itself in alert_evaluators. The lock lives on the evaluation connection:
if the process dies or loses its database, the lock goes with it and a standby takes over."""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path

import psycopg

from cloud.alerts.evaluator import Evaluator
from cloud.alerts.notifier import Notifier
from cloud.alerts.rules import Rule, RuleError, fingerprint, load_rules
from cloud.alerts.settings import AlertSettings

log = logging.getLogger(__name__)


class RuleSet:
    """The rules folder, reloaded when a file changes; a broken edit keeps the last good rules (and says so)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._mark: tuple[tuple[str, int, int], ...] | None = None
        self.rules: list[Rule] = load_rules(directory)  # at start, bad rules are an error
        self._mark = fingerprint(directory)
        self.error: str | None = None

    def refresh(self) -> bool:
        mark = fingerprint(self.directory)
        if mark == self._mark:
            return False
        self._mark = mark
        try:
            self.rules = load_rules(self.directory)
        except RuleError as e:
            self.error = str(e)
            log.error("rules not reloaded, keeping the previous %d: %s", len(self.rules), e)
            return False
        self.error = None
        log.info("rules reloaded: %d from %s", len(self.rules), self.directory)
        return True


class AlertService:
    def __init__(self, settings: AlertSettings) -> None:
        self.s = settings
        self.ruleset = RuleSet(settings.rules_dir)
        self.active = threading.Event()
        self.cycles = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.notifier: Notifier | None = None
        self.started_at = time.time()

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"alerts {self.s.instance}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(30)

    def wait_active(self, timeout: float) -> bool:
        return self.active.wait(timeout)

    # -- the loop -------------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.s.dsn, connect_timeout=5, application_name=self.s.instance) as conn:
                    self._session(conn)
            except psycopg.Error as e:
                log.warning("alert evaluator %s: database error, retrying: %s", self.s.instance, e)
                self._step_down()
                self._stop.wait(self.s.standby_poll_s)

    def _session(self, conn: psycopg.Connection) -> None:
        self._report(conn, active=False)
        while not self._stop.is_set():
            (got,) = conn.execute("SELECT pg_try_advisory_lock(%s)", (self.s.lock_id,)).fetchone() or (False,)
            conn.commit()
            if got:
                break
            self._report(conn, active=False)
            self._stop.wait(self.s.standby_poll_s)
        else:
            return
        log.info("alert evaluator %s is active (%d rules)", self.s.instance, len(self.ruleset.rules))
        evaluator = Evaluator(f"evaluator:{self.s.instance}")
        evaluator.load_state(conn)
        self.notifier = Notifier(self.s)
        self.notifier.start()
        self.active.set()
        try:
            while not self._stop.is_set():
                t0 = time.monotonic()
                if self.ruleset.refresh():
                    evaluator.forget_rules_except(conn, {r.name for r in self.ruleset.rules})
                result = evaluator.cycle(conn, self.ruleset.rules)
                if result.raised or result.cleared:
                    self.notifier.wake()
                self.cycles += 1
                elapsed = time.monotonic() - t0
                self._report(conn, active=True, cycle_ms=elapsed * 1000,
                             error="; ".join(result.errors)[:1000] or self.ruleset.error)
                self._stop.wait(max(0.0, self.s.interval_s - elapsed))
        finally:
            self._step_down()
            if not conn.closed and not conn.broken:
                conn.rollback()
                conn.execute("SELECT pg_advisory_unlock(%s)", (self.s.lock_id,))
                self._report(conn, active=False)

    def _step_down(self) -> None:
        self.active.clear()
        if self.notifier is not None:
            self.notifier.stop()
            self.notifier = None

    def _report(self, conn: psycopg.Connection, *, active: bool, cycle_ms: float | None = None,
                error: str | None = None) -> None:
        conn.execute(
            "INSERT INTO alert_evaluators (instance, host, started_at, updated_at, active, rules, cycle_ms, last_error)"
            " VALUES (%s, %s, to_timestamp(%s), now(), %s, %s, %s, %s) ON CONFLICT (instance) DO UPDATE SET"
            " host = EXCLUDED.host, started_at = EXCLUDED.started_at, updated_at = now(), active = EXCLUDED.active,"
            " rules = EXCLUDED.rules, cycle_ms = EXCLUDED.cycle_ms, last_error = EXCLUDED.last_error",
            (self.s.instance, socket.gethostname(), self.started_at, active, len(self.ruleset.rules), cycle_ms,
             error))
        conn.commit()
