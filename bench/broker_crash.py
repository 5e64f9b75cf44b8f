"""What a Mosquitto SIGKILL loses of what it acknowledged, by autosave interval; and what autosave costs.

    python bench/broker_crash.py [--autosave 1 10] [--rate 2000] [--seconds 6] [--backlog 300000]

For each interval: a persistent session (ingest's, stopped) exists; a QoS 1 publisher without an outbox
sends at --rate; the broker is SIGKILLed after --seconds; restarted; the session takes what survived.
Lost = PUBACKed - delivered, also as seconds of traffic (the window at risk). Then the autosave cost:
the broker's save time with --backlog messages queued (from its own log). Figures vary with the shared
host; read them as orders of magnitude. The edge agent loses nothing either way: it keeps rows until
ingest's watermark covers them (tests/edge/test_edge_broker_crash.py).
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
TOPIC = "tlm/v1/bench/crash-1/env"
PAYLOAD = b'{"v":1,"device_id":"crash-1","boot_id":"b","seq":0,"samples":[{"ts":1,"values":{"pm25":1.0}}]}' * 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    def __init__(self, root: Path, autosave: int) -> None:
        self.root, self.port = root, free_port()
        (root / "data").mkdir(parents=True, exist_ok=True)
        self.conf = root / "mosquitto.conf"
        self.conf.write_text(
            f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {root / 'data'}/\nautosave_interval {autosave}\n"
            "max_queued_messages 0\nmax_queued_bytes 0\nmax_inflight_messages 1000\n"
            f"log_dest file {root / 'mosquitto.log'}\nlog_type all\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(60)


def session(port: int, connect_only: bool) -> int:
    """Connect ingest's persistent session; return how many messages it gets (0 with connect_only)."""
    got = [0]
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-ingest", protocol=mqtt.MQTTv5)
    c.on_message = lambda *_: got.__setitem__(0, got[0] + 1)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    c.connect("127.0.0.1", port, clean_start=False, properties=props)
    c.subscribe("tlm/v1/#", qos=1)
    c.loop_start()
    if not connect_only:
        last, idle = -1, 0.0
        while idle < 2.0:
            time.sleep(0.2)
            idle = idle + 0.2 if got[0] == last else 0.0
            last = got[0]
    else:
        time.sleep(0.5)
    c.loop_stop()
    c.disconnect()
    return got[0]


def publish(port: int, rate: float, seconds: float, kill: Broker | None) -> int:
    """QoS 1 at `rate` for `seconds`; returns the PUBACKs received. With `kill`, SIGKILL it at the end."""
    acked = [0]
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-pub", protocol=mqtt.MQTTv5)
    c.on_publish = lambda *_: acked.__setitem__(0, acked[0] + 1)
    c.max_inflight_messages_set(200)
    c.connect("127.0.0.1", port)
    c.loop_start()
    t0 = time.monotonic()
    n = 0
    while (elapsed := time.monotonic() - t0) < seconds:
        while n < elapsed * rate:
            c.publish(TOPIC, PAYLOAD, qos=1)
            n += 1
        time.sleep(0.002)
    if kill is not None:
        time.sleep(0.05)
        kill.kill()
    c.loop_stop()
    return acked[0]


def crash_loss(autosave: int, rate: float, seconds: float) -> tuple[int, int]:
    root = Path(tempfile.mkdtemp(prefix="mosq-crash-"))
    b = Broker(root, autosave)
    try:
        b.start()
        session(b.port, connect_only=True)
        acked = publish(b.port, rate, seconds, kill=b)
        b.start()
        delivered = session(b.port, connect_only=False)
        return acked, delivered
    finally:
        b.stop()
        shutil.rmtree(root, ignore_errors=True)


def save_cost(backlog: int) -> tuple[int, float, float]:
    """(messages queued, seconds for one save, database MB) after offering `backlog` messages to a
    stopped session as fast as the publisher goes."""
    root = Path(tempfile.mkdtemp(prefix="mosq-save-"))
    b = Broker(root, autosave=1800)
    try:
        b.start()
        session(b.port, connect_only=True)
        queued = publish(b.port, 50_000, backlog / 50_000, kill=None)
        t0 = time.monotonic()
        b.stop()  # SIGTERM: one full save, then exit
        took = time.monotonic() - t0
        size = sum(f.stat().st_size for f in (root / "data").iterdir()) / 1e6
        return queued, took, size
    finally:
        b.stop()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--autosave", type=int, nargs="+", default=[10, 1])
    ap.add_argument("--rate", type=float, default=2000)
    ap.add_argument("--seconds", type=float, default=6)
    ap.add_argument("--backlog", type=int, default=300_000)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    for interval in a.autosave:
        for run in range(a.runs):
            acked, delivered = crash_loss(interval, a.rate, a.seconds)
            lost = acked - delivered
            print(f"autosave {interval:>3} s, run {run + 1}: acknowledged {acked}, delivered after restart "
                  f"{delivered}, lost {lost} ({lost / a.rate:.2f} s of traffic at {a.rate:.0f} msg/s)")
    queued, took, size = save_cost(a.backlog)
    print(f"one save with {queued} messages queued: {took:.2f} s (SIGTERM to exit) for {size:.0f} MB; "
          "the broker serves nobody meanwhile")


if __name__ == "__main__":
    main()
