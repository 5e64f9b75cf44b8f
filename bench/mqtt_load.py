"""A cheap QoS 1 MQTT load generator for the ingest benchmark: MQTT 3.1.1 spoken by hand over plain sockets.

The benchmark runs the load generator on the same two cores as the broker, the ingest service and
PostgreSQL, so every microsecond the generator spends per message is taken from the system under test.
paho-mqtt costs 80-95 µs of CPU per QoS 1 publish here (a Python object, a lock and a syscall per
message, a state machine per acknowledgement); this module builds each PUBLISH with a few byte
concatenations, writes many messages per syscall and checks acknowledgements in bulk with one byte
comparison. `publisher` sends the same load as `paho_publisher`, the baseline kept here.

    python bench/mqtt_load.py      # verify against a private Mosquitto and compare CPU/message with paho
"""

from __future__ import annotations

import json
import multiprocessing as mp
import selectors
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from contract import topics  # noqa: E402
from contract.messages import now_ms  # noqa: E402
from ioc.stack import scratch_dir  # noqa: E402
from ioc.stack.mosquitto import Mosquitto  # noqa: E402
from ioc.stack.mosquitto import find_binary as find_mosquitto  # noqa: E402
from ioc.stack.procs import free_port  # noqa: E402

SITE = "bench"
KEEPALIVE = 60  # s; a run that sits longer than 1.5x this between ready and go is dropped by the broker
# Rounds over all devices per write (and per pacing check, as in paho_publisher): 4 messages per syscall; a
# message waits in our buffer at most the time it takes to build 4 rounds (~1 ms for 50 devices).
FLUSH_ROUNDS = 4
# A large fleet is written (and paced) every this many messages within a round instead: 4 rounds of 10,000
# devices would hold 40,000 messages (2.7 s at 15,000/s) and send them in one burst.
FLUSH_MESSAGES = 400
DRAIN_FRACTION = 0.5  # read PUBACKs every window/2 rounds: many per recv(), and the window never fills
IO_TIMEOUT = 60.0  # s without any acknowledgement before a stuck broker is reported instead of hanging
_MAX_ID = 65535
_RECV = 1 << 18
_CONNACK_REFUSED = {1: "unacceptable protocol version", 2: "client identifier rejected",
                    3: "server unavailable", 4: "bad user name or password", 5: "not authorized"}
_PID = struct.Struct(">H")
_PUBACK = struct.Struct(">BBH")
# Every PUBACK the broker may send, in order, twice over: the expected acknowledgements for any run of
# at most 65535 consecutive packet ids are one slice of it, so a whole recv() is checked by one compare.
_ACKS = b"".join(_PUBACK.pack(0x40, 2, i) for i in range(1, _MAX_ID + 1)) * 2


def message_body(dev: str, i: int, sent_at: int, ts: int) -> str:
    """The telemetry message both generators send (round i of device dev, seq i + 1: consecutive, as a
    device numbers its messages); `publisher` builds the same bytes in pieces for speed, and the
    self-test checks them against this."""
    return (f'{{"v":1,"device_id":"{dev}","boot_id":"bench","seq":{i + 1},"sent_at":{sent_at},'
            f'"samples":[{{"ts":{ts},"values":{{"pm25":{12 + i % 7}.5,"pm10":{20 + i % 5}.0,'
            f'"co2":{400 + i % 50}.0,"noise":{55 + i % 9}.0,"temperature":{25 + i % 3}.25}}}}]}}')


class MqttError(RuntimeError):
    """The broker refused us or sent something a QoS 1 publisher never expects."""


def _varint(n: int) -> bytes:
    """MQTT remaining length: 7 bits a byte, least significant first, high bit = more bytes follow."""
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | 0x80 if n else digit)
        if not n:
            return bytes(out)


def _string(s: str) -> bytes:
    b = s.encode()
    return _PID.pack(len(b)) + b


def connect_packet(client_id: str, keepalive: int = KEEPALIVE, login: tuple[str, str] | None = None) -> bytes:
    """CONNECT, MQTT 3.1.1, clean session, no will; with login, the username and password flags (0xC0)
    and both strings after the client id (MQTT 3.1.1, 3.1.2.8-9 and 3.1.3)."""
    flags = 0x02 | (0xC0 if login else 0)
    body = _string("MQTT") + bytes([4, flags]) + _PID.pack(keepalive) + _string(client_id)
    if login:
        body += _string(login[0]) + _string(login[1])
    return b"\x10" + _varint(len(body)) + body


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise MqttError("broker closed the connection before CONNACK")
        buf += chunk
    return buf


class _Conn:
    """One device's connection: its outgoing batch and the counters that bound and check its window.

    Packet ids are issued 1, 2, ... 65535, 1, ... and MQTT 3.1.1 (4.6) makes the server acknowledge
    QoS 1 PUBLISHes in the order it received them, so the next PUBACK must carry the oldest
    outstanding id: three counters replace paho's per-message bookkeeping."""

    __slots__ = ("acked", "dev", "issued", "pending", "rx", "sent", "sock", "topic")

    def __init__(self, sock: socket.socket, dev: str) -> None:
        self.sock = sock
        self.dev = dev
        self.topic = _string(topics.telemetry(SITE, dev, "env"))  # length-prefixed, as on the wire
        self.pending = bytearray()  # PUBLISH packets built but not yet written
        self.rx = b""  # the start of a PUBACK split across two reads
        self.issued = 0  # PUBLISHes built
        self.sent = 0  # PUBLISHes written to the socket
        self.acked = 0  # PUBACKs received

    def flush(self) -> None:
        if self.pending:
            self.sock.sendall(self.pending)
            self.pending.clear()
            self.sent = self.issued

    def read(self) -> None:
        """Consume whatever PUBACKs have arrived; raise on anything else."""
        try:
            data = self.sock.recv(_RECV, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        if not data:
            raise MqttError(f"{self.dev}: broker closed the connection with {self.sent - self.acked} "
                            "PUBLISHes unacknowledged")
        buf = self.rx + data if self.rx else data
        n = len(buf) >> 2
        if n:
            start = (self.acked % _MAX_ID) * 4
            if n > self.sent - self.acked or buf[:n * 4] != _ACKS[start:start + n * 4]:
                self._unexpected(buf)
            self.acked += n
        self.rx = buf[n * 4:]

    def _unexpected(self, buf: bytes) -> None:
        """Name the first packet that is not the PUBACK we expect (the slow path; always raises)."""
        acked = self.acked
        for off in range(0, len(buf) - 3, 4):
            kind, length, pid = _PUBACK.unpack_from(buf, off)
            if kind != 0x40 or length != 2:
                raise MqttError(f"{self.dev}: unexpected packet 0x{buf[off]:02x} (len byte {buf[off + 1]}) "
                                f"from the broker; a QoS 1 publisher only expects PUBACK (0x40 0x02)")
            if acked >= self.sent:
                raise MqttError(f"{self.dev}: PUBACK for id {pid} but no PUBLISH is outstanding")
            want = acked % _MAX_ID + 1
            if pid != want:
                raise MqttError(f"{self.dev}: PUBACK for id {pid}, expected {want} (the oldest of "
                                f"{self.sent - acked} outstanding)")
            acked += 1
        raise MqttError(f"{self.dev}: inconsistent PUBACK stream")  # unreachable unless the table is wrong


def _open(port: int, devices: Sequence[str],
          login: tuple[str, str] | None = None) -> tuple[list[_Conn], selectors.DefaultSelector]:
    """Connect every device (CONNECTs pipelined, then CONNACKs read), clean session, keepalive 60."""
    conns: list[_Conn] = []
    sel = selectors.DefaultSelector()
    try:
        for dev in devices:
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            conns.append(_Conn(sock, dev))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # we batch; Nagle would only add delay
            sock.sendall(connect_packet(f"pub-{dev}", login=login))
        for c in conns:
            kind, length, _flags, rc = _recv_exact(c.sock, 4)
            if kind != 0x20 or length != 2:
                raise MqttError(f"{c.dev}: expected CONNACK, got packet 0x{kind:02x}")
            if rc:
                raise MqttError(f"{c.dev}: broker on port {port} refused the connection: "
                                f"{_CONNACK_REFUSED.get(rc, f'return code {rc}')}")
            c.sock.settimeout(None)  # blocking writes; reads use MSG_DONTWAIT after the selector says so
            sel.register(c.sock, selectors.EVENT_READ, c)
    except BaseException:
        _close(conns, sel)
        raise
    return conns, sel


def _close(conns: list[_Conn], sel: selectors.DefaultSelector) -> None:
    sel.close()
    for c in conns:
        c.sock.close()


def _drain(sel: selectors.DefaultSelector, timeout: float) -> bool:
    """Read the PUBACKs of every connection that has some; False when none arrived within `timeout`."""
    ready = sel.select(timeout)
    for key, _ in ready:
        key.data.read()
    return bool(ready)


def _wait(sel: selectors.DefaultSelector, conns: Sequence[_Conn], until_below: int) -> None:
    """Block until each of `conns` has fewer than `until_below` unacknowledged PUBLISHes."""
    for c in conns:
        c.flush()  # a batch still in our buffer would never be acknowledged
    deadline = time.monotonic() + IO_TIMEOUT
    while any(c.issued - c.acked >= until_below for c in conns):
        if _drain(sel, 1.0):
            deadline = time.monotonic() + IO_TIMEOUT
        elif time.monotonic() > deadline:
            late = [c.dev for c in conns if c.issued - c.acked >= until_below]
            raise MqttError(f"no PUBACK for {IO_TIMEOUT:.0f}s; still waiting on {len(late)} "
                            f"connections, e.g. {late[:3]}")


# -- load generator ------------------------------------------------------------------------------
def publisher(port: int, devices: Sequence[str], count: int, window: int, ready: MpEvent,
              go: MpEvent, rate: float, login: tuple[str, str] | None = None) -> None:
    """One process, one MQTT connection per device, QoS 1, at most `window` unacknowledged messages.

    Same load as `paho_publisher` (messages, topics, payloads, pacing), at a fraction of its
    CPU: packets are built as bytes and written once per connection every FLUSH_ROUNDS rounds (always
    before a pacing sleep, so nothing waits in our buffer while we sleep); PUBACKs are left to pile up
    in the kernel for window/2 rounds, then read and checked in bulk."""
    if not 1 <= window <= _MAX_ID:
        raise ValueError(f"window must be 1..{_MAX_ID} (packet ids must stay unique), got {window}")
    conns, sel = _open(port, devices, login)
    try:
        ready.set()
        go.wait()
        per = count // len(devices)
        # message_body(), byte for byte, split into what is fixed per device,
        # per round (the values depend only on the round) and per message.
        heads = [f'{{"v":1,"device_id":"{dev}","boot_id":"bench","seq":' for dev in devices]
        hdr_cache: dict[int, bytes] = {}
        pid_pack = _PID.pack
        time_ns = time.time_ns
        last_ts = [0] * len(conns)
        sent = 0  # messages issued so far, for pacing
        drain_rounds = max(FLUSH_ROUNDS, int(window * DRAIN_FRACTION))
        large = len(conns) * FLUSH_ROUNDS > FLUSH_MESSAGES  # written in slices of a round, see FLUSH_MESSAGES
        rounds_per_flush = 1 if large else FLUSH_ROUNDS
        t0 = time.monotonic()

        def pace() -> None:  # message number `sent` is due at t0 + sent / rate
            ahead = t0 + sent / rate - time.monotonic() if rate else 0.0
            if ahead > 0:
                time.sleep(ahead)

        for i in range(per):
            if i % rounds_per_flush == 0:
                for c in conns:
                    c.flush()
                if i % drain_rounds < rounds_per_flush:
                    _drain(sel, 0)
                pace()
            tail = (f'{{"pm25":{12 + i % 7}.5,"pm10":{20 + i % 5}.0,"co2":{400 + i % 50}.0,'
                    f'"noise":{55 + i % 9}.0,"temperature":{25 + i % 3}.25}}}}]}}')
            for k, c in enumerate(conns):
                if c.issued - c.acked >= window:
                    _wait(sel, [c], window)
                sent += 1
                now = time_ns() // 1_000_000  # = contract.messages.now_ms(), at a seventh of its cost
                ts = last_ts[k] = max(now, last_ts[k] + 1)  # live data; strictly increasing per device
                body = f'{heads[k]}{i + 1},"sent_at":{now},"samples":[{{"ts":{ts},"values":{tail}'.encode()
                c.issued += 1
                size = len(c.topic) + 2 + len(body)
                hdr = hdr_cache.get(size)
                if hdr is None:
                    hdr = hdr_cache[size] = b"\x32" + _varint(size)  # PUBLISH, QoS 1, no dup, no retain
                buf = c.pending
                buf += hdr
                buf += c.topic
                buf += pid_pack((c.issued - 1) % _MAX_ID + 1)
                buf += body
                if large and (k + 1) % FLUSH_MESSAGES == 0:
                    for done in conns[k + 1 - FLUSH_MESSAGES : k + 1]:
                        done.flush()
                    pace()
        _wait(sel, conns, 1)  # every PUBLISH acknowledged
        for c in conns:
            c.sock.sendall(b"\xe0\x00")  # DISCONNECT: a clean goodbye, no will
    finally:
        _close(conns, sel)


# -- the baseline: the same load through paho-mqtt ----------------------------------------------
def paho_publisher(port: int, devices: Sequence[str], count: int, window: int, ready: MpEvent,
              go: MpEvent, rate: float, login: tuple[str, str] | None = None) -> None:
    """The same load through paho-mqtt: the baseline `publisher` is measured against.

    paho's network loop is driven from this thread (no loop_start): a publish goes straight to the
    socket instead of waking a second thread, which halves the generator's CPU per message."""
    clients = []
    for dev in devices:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{dev}", protocol=mqtt.MQTTv311)
        c.max_inflight_messages_set(window)
        if login:
            c.username_pw_set(*login)
        c.connect("127.0.0.1", port)
        clients.append(c)
    ready.set()
    go.wait()
    per = count // len(devices)
    sent = 0  # messages published so far, for pacing
    last_ts = dict.fromkeys(devices, 0)
    t0 = time.monotonic()
    for i in range(per):
        if rate and i % 4 == 0:  # pace: message number `sent` is due at t0 + sent / rate
            ahead = t0 + sent / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        for c, dev in zip(clients, devices, strict=True):
            sent += 1
            ts = last_ts[dev] = max(now_ms(), last_ts[dev] + 1)  # live data; strictly increasing per device
            body = message_body(dev, i, now_ms(), ts)
            c.publish(topics.telemetry(SITE, dev, "env"), body, qos=1)
            while len(c._out_messages) >= window:
                c.loop(0.005)
        if i % 8 == 0:
            for c in clients:
                c.loop(0)
    for c in clients:
        while c._out_messages:
            c.loop(0.01)
        c.disconnect()


# -- self-test and CPU comparison with paho (python bench/mqtt_load.py) ----------------------------
class _ReadyMark:
    """Stands in for `ready` in the child: notes the CPU clock once the publisher is connected and idle."""

    def __init__(self, ready: MpEvent) -> None:
        self.ready = ready
        self.cpu = 0.0

    def set(self) -> None:
        self.cpu = time.process_time()
        self.ready.set()


class _GoMark:
    """Stands in for `go` in the child: notes the wall clock when the load starts."""

    def __init__(self, go: MpEvent) -> None:
        self.go = go
        self.wall = 0.0

    def wait(self) -> None:
        self.go.wait()
        self.wall = time.monotonic()


def _timed(fn: Callable[..., None], port: int, devices: list[str], count: int, window: int, ready: MpEvent,
           go: MpEvent, rate: float, out: Connection) -> None:
    """Child process: run one publisher; send back its CPU seconds and wall seconds from go to done
    (connecting, and for paho importing the ingest bench, are left out)."""
    r, g = _ReadyMark(ready), _GoMark(go)
    fn(port, devices, count, window, r, g, rate)
    out.send((time.process_time() - r.cpu, time.monotonic() - g.wall))


def _verify(lines: list[bytes], devices: list[str], per: int) -> None:
    """Exactly `per` messages per device, in order, valid JSON, the expected bytes; each device's seq 1..per in
    order, as a device numbers its messages within a boot (ingest's watermark merges consecutive seqs)."""
    by_dev: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
    for line in lines:
        raw_topic, _, payload = line.partition(b" ")
        topic = raw_topic.decode()
        by_dev[topic.split("/")[3]].append((topic, payload))
    if sorted(by_dev) != sorted(devices):
        raise AssertionError("messages from unknown devices, or devices missing")
    for dev, msgs in by_dev.items():
        if len(msgs) != per:
            raise AssertionError(f"{dev}: {len(msgs)} messages, expected {per}")
        last = 0
        for i, (topic, payload) in enumerate(msgs):
            m = json.loads(payload)
            ts = m["samples"][0]["ts"]
            if topic != topics.telemetry(SITE, dev, "env") or ts <= last or \
                    payload.decode() != message_body(dev, i, m["sent_at"], ts):
                raise AssertionError(f"{dev} message {i}: {topic} {payload!r}")
            last = ts


def _run(fn: Callable[..., None], port: int, devices: list[str], count: int, window: int,
         rate: float) -> tuple[float, float]:
    """One publisher process under a mosquitto_sub QoS 1 subscriber, every message checked;
    returns (CPU s, wall s) of the publisher."""
    per = count // len(devices)
    with tempfile.NamedTemporaryFile() as sink:
        sub = subprocess.Popen(["mosquitto_sub", "-p", str(port), "-q", "1", "-v",
                                "-t", topics.telemetry(SITE, "+", "env")], stdout=sink)
        try:
            time.sleep(0.3)  # subscribed before the first PUBLISH
            ctx = mp.get_context("spawn")
            ready, go = ctx.Event(), ctx.Event()
            rx, tx = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_timed, args=(fn, port, devices, count, window, ready, go, rate, tx))
            p.start()
            while not ready.wait(0.1):
                if not p.is_alive():
                    raise RuntimeError(f"publisher exited before connecting (exit code {p.exitcode})")
            go.set()
            if not rx.poll(600):
                raise RuntimeError(f"publisher did not finish (exit code {p.exitcode})")
            cpu, wall = rx.recv()
            p.join(30)
            deadline = time.monotonic() + 60
            while Path(sink.name).read_bytes().count(b"\n") < per * len(devices) and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(0.5)  # room for a duplicate to show up
        finally:
            sub.terminate()
            try:
                sub.wait(5)
            except subprocess.TimeoutExpired:  # mosquitto_sub 2.0.11 can deadlock in its SIGTERM handler
                sub.kill()
                sub.wait()
        _verify(Path(sink.name).read_bytes().splitlines(), devices, per)
    return cpu, wall


def _compare(n_dev: int = 100, messages: int = 50_000, window: int = 500, rates: Sequence[float] = (0, 15_000)) -> None:
    """Verify both generators against a private Mosquitto and print their CPU per message."""
    devices = [f"bench-{i:04d}" for i in range(n_dev)]
    root = scratch_dir("mqtt-load-")
    mosq = Mosquitto(root=root / "mosquitto", port=free_port(), binary=find_mosquitto())
    try:
        mosq.start()  # only the broker: this measurement needs no database
        print(f"Mosquitto on port {mosq.port}; {n_dev} devices, {messages:,} messages, window {window}; one "
              "publisher process; mosquitto_sub (QoS 1) receives and every message is checked", flush=True)
        gens: dict[str, Callable[..., None]] = {"paho": paho_publisher, "mqtt_load": publisher}
        for rate in rates:
            cpu: dict[str, float] = {}
            for name, fn in gens.items():
                cpu[name], wall = _run(fn, mosq.port, devices, messages, window, rate)
                print(f"  rate {rate or 'max':>6}  {name:<9}  {cpu[name] / messages * 1e6:6.1f} µs CPU/message"
                      f"  {messages / wall:8,.0f} messages/s  ({cpu[name]:.2f} s CPU, {wall:.2f} s)  all verified",
                      flush=True)
            print(f"  rate {rate or 'max':>6}  paho / mqtt_load CPU per message: {cpu['paho'] / cpu['mqtt_load']:.1f}x",
                  flush=True)
    finally:
        mosq.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    _compare()
