"""What a password-rotation grace period would cost Mosquitto 2.0: 10,000 devices on `%u` patterns, and N
of them also holding a second, grace username with its own `user` block (the only way a second password
can log in for a device, since the password file keeps one hash per username).

Measures the time from SIGHUP to the first CONNACK of a login added by that reload: the broker is single
threaded, so that is the reload's cost. Prints each N's figure and its ratio to N = 0 (same process).

    .venv/bin/python bench/broker_grace.py --devices 10000 --grace 0 100 1000 3000
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
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from ioc.stack import broker_auth as ba

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _login_ok(port: int, username: str, password: str) -> bool:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"b-{uuid.uuid4().hex[:6]}", protocol=mqtt.MQTTv5)
    c.username_pw_set(username, password)
    done, ok = threading.Event(), []

    def on_connect(_c: mqtt.Client, _u: object, _f: object, rc: mqtt.ReasonCode, _p: object = None) -> None:
        ok.append(not rc.is_failure)
        done.set()

    c.on_connect = on_connect
    c.on_disconnect = lambda *_a: done.set()
    try:
        c.connect("127.0.0.1", port)
    except OSError:
        return False
    c.loop_start()
    done.wait(120)
    c.loop_stop()
    c.disconnect()
    return bool(ok and ok[0])


def _files(root: Path, devices: int, grace: int, probe: tuple[str, str], hash_: str) -> None:
    """Password and ACL files: `devices` pattern devices, `grace` of them with a `user <id>.grace` block."""
    lines = [f"d{i:05d}:{hash_}" for i in range(devices)] + [f"d{i:05d}.grace:{hash_}" for i in range(grace)]
    lines.append(f"{probe[0]}:{ba.hash_password(probe[1])}")
    (root / ba.PASSWORD_FILE).write_text("\n".join(lines) + "\n")
    acl = ["# bench", *ba.DEVICE_PATTERNS]
    for i in range(grace):
        dev = f"d{i:05d}"
        acl += ["", f"user {dev}.grace", *(p.replace("pattern ", "topic ").replace("%u", dev)
                                          for p in ba.DEVICE_PATTERNS)]
    (root / ba.ACL_FILE).write_text("\n".join(acl) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--grace", type=int, nargs="+", default=[0, 100, 1000, 3000])
    args = ap.parse_args()
    hash_ = ba.hash_password("x")  # the same hash everywhere: loading cost does not depend on it
    with tempfile.TemporaryDirectory() as tmp:
        root, port = Path(tmp), _free_port()
        pid_file = root / "mosquitto.pid"
        _files(root, args.devices, 0, ("probe-start", "p"), hash_)
        conf = root / "mosquitto.conf"
        conf.write_text(f"user {pwd.getpwuid(os.geteuid()).pw_name}\npid_file {pid_file}\npersistence false\n"
                        f"per_listener_settings false\nlistener {port} 127.0.0.1\n" + ba.config_lines(root))
        proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while not _login_ok(port, "probe-start", "p"):
                if time.monotonic() > deadline:
                    raise SystemExit("the broker did not start")
                time.sleep(0.2)
            base: float | None = None
            for n in args.grace:
                probe = (f"probe-{uuid.uuid4().hex[:6]}", "p")
                _files(root, args.devices, n, probe, hash_)
                t0 = time.perf_counter()
                os.kill(proc.pid, signal.SIGHUP)
                while not _login_ok(port, *probe):
                    time.sleep(0.01)
                took = time.perf_counter() - t0
                base = took if base is None else base
                print(f"devices {args.devices:>6}  in grace {n:>6}  reload {took:7.3f} s  ratio {took / base:6.1f}x",
                      flush=True)
        finally:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
