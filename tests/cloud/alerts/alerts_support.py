"""What the alarm tests share: a device that sends readings through the real broker, a webhook receiver,
an MQTT watcher of alr/v1/..., rule files in a temporary folder."""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import paho.mqtt.publish as single
import psycopg
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from support import login, paho_auth

from cloud.db.migrate import current_backend
from contract import topics
from contract.messages import MetricSample, TelemetryMessage, now_ms
from ioc.stack import Stack


class Sender:
    """One simulated gateway publishing readings 'now' (QoS 1) on its env stream."""

    def __init__(self, stack: Stack, site: str, device_id: str) -> None:
        self.stack, self.site, self.device_id = stack, site, device_id
        self.boot = uuid.uuid4().hex
        self.seq = 0

    def send(self, ts_ms: int | None = None, **values: float) -> None:
        """ts_ms: the reading's time stamp when not now (a reading replayed from a device's outbox)."""
        msg = TelemetryMessage(device_id=self.device_id, boot_id=self.boot, seq=self.seq,
                               samples=[MetricSample(ts=now_ms() if ts_ms is None else ts_ms, values=values)])
        self.seq += 1
        single.single(topics.telemetry(self.site, self.device_id, "env"), msg.model_dump_json(), qos=1,
                      hostname=self.stack.mqtt_host, port=self.stack.mqtt_port, auth=paho_auth(self.stack))


class Repeater:
    """Keeps a device sending a value every `period` seconds (a sensor reading steadily) until changed."""

    def __init__(self, sender: Sender, metric: str, period: float = 0.5) -> None:
        self.sender, self.metric, self.period = sender, metric, period
        self.value: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Repeater:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.value is not None:
                self.sender.send(**{self.metric: self.value})
            self._stop.wait(self.period)


@dataclass
class Received:
    headers: dict[str, str]  # names lower-cased
    body: bytes

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    """A local HTTP server recording every POST."""

    requests: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.requests.append(Received({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def events(self, device_id: str) -> list[str]:
        return [r.json["event"] for r in self.requests if r.json["device_id"] == device_id]


class AlarmWatcher:
    """Subscribes to alr/v1/{site}/# and keeps (topic, payload, retained) in arrival order."""

    def __init__(self, stack: Stack, site: str) -> None:
        self.messages: list[tuple[str, dict[str, Any], bool]] = []
        self._ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"watch-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, *_: (c.subscribe(f"alr/v1/{site}/#", qos=1), self._ready.set())
        self.client.on_message = lambda _c, _u, m: self.messages.append(
            (m.topic, json.loads(m.payload), bool(m.retain)))
        login(self.client, stack).connect(stack.mqtt_host, stack.mqtt_port)
        self.client.loop_start()
        assert self._ready.wait(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def events(self, device_id: str) -> list[str]:
        return [p["event"] for _, p, _ in self.messages if p["device_id"] == device_id]


def write_rules(folder: Path, *rules: dict[str, Any], name: str = "rules.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump({"rules": list(rules)}, allow_unicode=True), encoding="utf-8")
    return path


def pm25_rule(rule: str, device_id: str, *, hold: float = 3.0, value: float = 50, hysteresis: float = 10) -> dict:
    return {"name": rule, "kind": "threshold", "severity": "major", "description": "PM2.5 high",
            "select": {"devices": [device_id]}, "metric": "pm25", "op": ">", "value": value,
            "hysteresis": hysteresis, "for": f"{hold}s"}


def refresh_aggregates(dsn: str, stamps: list[datetime]) -> None:
    """Rows written straight into telemetry reach telemetry_1m/1h as ingest's do: mark their minutes dirty,
    take them at once (even the current minute), and run one upkeep pass (rollup tables or continuous
    aggregates below their watermark)."""
    from support import wait_until

    from cloud.db.maintenance import run_maintenance

    minutes = sorted({ts.replace(second=0, microsecond=0) for ts in stamps})
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.cursor().executemany("INSERT INTO rollup_dirty (instance, bucket) VALUES ('alerts-test', %s)"
                                  " ON CONFLICT DO NOTHING", [(m,) for m in minutes])
        conn.execute("SELECT ioc_take_dirty_rollups(interval '-2 minutes')")
        wait_until(lambda: run_maintenance(conn).ran, what="an upkeep pass of our own")
        if current_backend(conn) == "postgres":
            while conn.execute("SELECT ioc_refresh_rollups()").fetchone() != (0,):
                pass
