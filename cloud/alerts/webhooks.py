"""Webhook deliveries: one worker thread and queue per URL, so a slow or dead receiver delays only its own
deliveries and never the evaluation. Each POST is HMAC-signed and retried with capped exponential backoff;
a delivery that exhausts its attempts is given up and reported in alert_webhook_status, never fatal."""

from __future__ import annotations

import hashlib
import hmac
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-IOC-Signature"
TIMESTAMP_HEADER = "X-IOC-Timestamp"


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>` of HMAC-SHA256(secret, "<timestamp>." + body): the receiver recomputes it and rejects
    old timestamps, so a captured request cannot be replayed later."""
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Delivery:
    delivery_id: str
    body: bytes


# (url, ok, error or None, given_up)
StatusSink = Callable[[str, bool, str | None, bool], None]


class WebhookWorker:
    def __init__(self, url: str, secret: bytes | None, *, timeout_s: float, attempts: int, backoff_s: float,
                 backoff_max_s: float, status: StatusSink, max_queue: int = 10_000) -> None:
        self.url, self._secret, self._timeout = url, secret, timeout_s
        self._attempts, self._backoff, self._backoff_max = attempts, backoff_s, backoff_max_s
        self._status = status
        self._queue: queue.Queue[Delivery] = queue.Queue(max_queue)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"webhook {url}", daemon=True)
        self.delivered = 0
        self.given_up = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def submit(self, d: Delivery) -> None:
        """Never blocks: when the queue is full (the receiver has been dead a long time) the oldest delivery
        is given up and reported."""
        while True:
            try:
                self._queue.put_nowait(d)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                    self.given_up += 1
                    self._status(self.url, False, "queue full: oldest delivery dropped", True)
                except queue.Empty:
                    pass

    def _post(self, d: Delivery) -> None:
        ts = str(int(time.time()))
        headers = {"Content-Type": "application/json", "X-IOC-Delivery": d.delivery_id, TIMESTAMP_HEADER: ts,
                   "User-Agent": "ioc-alerts/1"}
        if self._secret is not None:
            headers[SIGNATURE_HEADER] = sign(self._secret, ts, d.body)
        req = urllib.request.Request(self.url, data=d.body, headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=self._timeout) as resp:
            if not 200 <= resp.status < 300:
                raise urllib.error.HTTPError(self.url, resp.status, resp.reason, resp.headers, None)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                d = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            delay = self._backoff
            for attempt in range(1, self._attempts + 1):
                try:
                    self._post(d)
                except (OSError, ValueError) as e:  # URLError, HTTPError, timeouts, refused connections
                    error = f"{type(e).__name__}: {e}"
                    last = attempt == self._attempts
                    log.warning("webhook %s delivery %s attempt %d/%d failed: %s", self.url, d.delivery_id,
                                attempt, self._attempts, error)
                    self._status(self.url, False, error, last)
                    if last:
                        self.given_up += 1
                        break
                    if self._stop.wait(delay):
                        return
                    delay = min(delay * 2, self._backoff_max)
                else:
                    self.delivered += 1
                    self._status(self.url, True, None, False)
                    break
