"""Sends every alarm transition once it is committed: reads the alarm_history outbox (rows with
notified_at NULL, in id order), publishes each on MQTT (QoS 1, retained) and hands it to the webhook
workers; a row is marked notified only after the broker acknowledged it, so a crash or a broker outage
delays notifications but loses none (at least once; `history_id` lets receivers drop repeats)."""

from __future__ import annotations

import logging
import threading
from datetime import datetime
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from psycopg.rows import dict_row

from cloud.alerts.settings import AlertSettings
from cloud.alerts.webhooks import Delivery, WebhookWorker
from contract.alarms import AlarmNotice, alarm_topic

log = logging.getLogger(__name__)

_OUTBOX = """
SELECT h.id AS history_id, h.alarm_id, h.at, h.action, h.actor, h.comment, h.value AS event_value,
       a.rule, a.kind, a.severity, a.device_id, a.site, a.message, a.value, a.condition_since, a.raised_at,
       a.cleared_at, a.acked_at
FROM alarm_history h JOIN alarms a ON a.id = h.alarm_id
WHERE h.notified_at IS NULL ORDER BY h.id LIMIT 500"""


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def notice(row: dict[str, Any]) -> AlarmNotice:
    """The alarm as it stood right after this transition."""
    at = row["at"]
    cleared = row["action"] == "cleared" or (row["cleared_at"] is not None and row["cleared_at"] <= at)
    acked = row["action"] == "acknowledged" or (row["acked_at"] is not None and row["acked_at"] <= at)
    value = row["event_value"] if row["event_value"] is not None else row["value"]
    return AlarmNotice(event=row["action"], alarm_id=row["alarm_id"], history_id=row["history_id"],
                       rule=row["rule"], kind=row["kind"], severity=row["severity"], device_id=row["device_id"],
                       site=row["site"], state="cleared" if cleared else "active", acked=acked,
                       message=row["message"], value=value, condition_since_ms=_ms(row["condition_since"]),
                       raised_at_ms=_ms(row["raised_at"]), at_ms=_ms(at), actor=row["actor"],
                       comment=row["comment"])


class WebhookStatusWriter:
    """Records delivery outcomes per URL on its own connection; a database hiccup only loses a status row."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._lock = threading.Lock()
        self._conn: psycopg.Connection | None = None

    def __call__(self, url: str, ok: bool, error: str | None, given_up: bool) -> None:
        with self._lock:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = psycopg.connect(self._dsn, autocommit=True, connect_timeout=5)
                if ok:
                    self._conn.execute(
                        "INSERT INTO alert_webhook_status AS s (url, last_ok_at, delivered) VALUES (%s, now(), 1)"
                        " ON CONFLICT (url) DO UPDATE SET last_ok_at = now(), delivered = s.delivered + 1,"
                        " failed_in_a_row = 0", (url,))
                else:
                    self._conn.execute(
                        "INSERT INTO alert_webhook_status AS s (url, last_error_at, last_error, failed_in_a_row,"
                        " given_up) VALUES (%s, now(), %s, 1, %s) ON CONFLICT (url) DO UPDATE SET"
                        " last_error_at = now(), last_error = EXCLUDED.last_error,"
                        " failed_in_a_row = s.failed_in_a_row + 1, given_up = s.given_up + EXCLUDED.given_up",
                        (url, (error or "")[:500], int(given_up)))
            except psycopg.Error as e:
                log.warning("could not record webhook status for %s: %s", url, e)
                self._conn = None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()


class Notifier:
    """A thread of the active evaluator. wake() after a commit sends at once; otherwise it polls, which picks
    up the operators' acknowledgements and clears made through `ioc alerts`."""

    def __init__(self, settings: AlertSettings, poll_s: float = 0.5) -> None:
        self._s = settings
        self._poll = poll_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.published = 0
        self.last_error: str | None = None
        self._status = WebhookStatusWriter(settings.dsn)
        secret = settings.webhook_secret.get_secret_value().encode() if settings.webhook_secret else None
        self._workers = [WebhookWorker(url, secret, timeout_s=settings.webhook_timeout_s,
                                       attempts=settings.webhook_attempts, backoff_s=settings.webhook_backoff_s,
                                       backoff_max_s=settings.webhook_backoff_max_s, status=self._status)
                         for url in settings.webhooks]
        self._mqtt = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{settings.instance}-notify",
                                 protocol=mqtt.MQTTv5)
        if settings.mqtt_username:
            pw = settings.mqtt_password.get_secret_value() if settings.mqtt_password else None
            self._mqtt.username_pw_set(settings.mqtt_username, pw)
        self._mqtt.reconnect_delay_set(1, 30)

    def start(self) -> None:
        self._mqtt.connect_async(self._s.mqtt_host, self._s.mqtt_port, keepalive=30)
        self._mqtt.loop_start()
        for w in self._workers:
            w.start()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="alerts notifier", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(10)
        for w in self._workers:
            w.stop()
        self._mqtt.disconnect()
        self._mqtt.loop_stop()
        self._status.close()

    def _publish(self, n: AlarmNotice) -> bool:
        if not self._mqtt.is_connected():
            return False
        info = self._mqtt.publish(alarm_topic(n.site, n.device_id, n.rule), n.model_dump_json(), qos=1, retain=True)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return False
        try:
            info.wait_for_publish(timeout=5)
        except (RuntimeError, ValueError):
            return False
        return info.is_published()

    def send_pending(self, conn: psycopg.Connection) -> int:
        """Publish what the outbox holds, in order; stop at the first message the broker does not take."""
        with conn.cursor(row_factory=dict_row) as cur:
            rows = cur.execute(_OUTBOX).fetchall()
        conn.commit()
        done: list[int] = []
        for row in rows:
            n = notice(row)
            if not self._publish(n):
                self.last_error = "broker did not acknowledge an alarm notification; retrying"
                break
            body = n.model_dump_json().encode()
            for w in self._workers:
                w.submit(Delivery(f"{n.history_id}", body))
            done.append(n.history_id)
        if done:
            conn.execute("UPDATE alarm_history SET notified_at = now() WHERE id = ANY(%s)", (done,))
            conn.commit()
            self.published += len(done)
        return len(done)

    def _run(self) -> None:
        conn: psycopg.Connection | None = None
        while not self._stop.is_set():
            self._wake.wait(self._poll)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self._s.dsn, connect_timeout=5)
                while self.send_pending(conn) == 500:
                    pass
            except psycopg.Error as e:
                self.last_error = f"notifier: {e}"
                log.warning("alarm notifier: database error, retrying: %s", e)
                if conn is not None:
                    conn.close()
                conn = None
                self._stop.wait(1.0)
        if conn is not None:
            conn.close()
