"""A deterministic fleet of virtual devices that speak wire contract v1.

The fleet only builds messages (topic + JSON bytes) and remembers which points each one carries and
which ingest should reject; publishing is publisher.py's job.
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from contract import topics
from contract.messages import COUNTS_STREAM, now_ms
from contract.profiles import DeviceProfile, get_profile
from simulators.signals import EnvState, SensorFaults, camera_interval

PointKey = tuple[str, str, int]  # device_id, metric, ts_ms


class FleetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    gateways: int = Field(default=20, ge=0, description="environment gateways")
    cameras: int = Field(default=4, ge=0, description="traffic camera boxes")
    sites: int = Field(default=5, ge=1, description="districts the devices are spread over")
    interval_s: float = Field(default=10.0, gt=0, description="seconds between a device's messages")
    samples_per_message: int = Field(default=1, ge=1, description=">1 mimics a device sending its backlog")
    fault_rate: float = Field(default=0.0, ge=0, le=1, description="sensor faults per sample (stuck, spike, gap)")
    seed: int = 42
    prefix: str = "sim"
    lines: list[str] = Field(default_factory=lambda: ["north", "south"], description="camera counting lines")


@dataclass
class SimDevice:
    device_id: str
    site: str
    profile: DeviceProfile
    boot_id: str
    rng: random.Random
    seq: int = 0
    env: EnvState | None = None
    faults: SensorFaults | None = None

    @property
    def is_camera(self) -> bool:
        return self.profile.counts is not None


@dataclass
class OutMessage:
    device_id: str
    topic: str
    payload: bytes
    accepted: dict[PointKey, float] = field(default_factory=dict)
    counts: dict[tuple[str, str, str, str, int], int] = field(default_factory=dict)
    rejected_points: int = 0
    bad: str | None = None  # the kind of deliberately bad message, if it is one

    @property
    def expects_dead_letter(self) -> bool:
        return self.bad is not None or self.rejected_points > 0


class Fleet:
    def __init__(self, spec: FleetSpec) -> None:
        self.spec = spec
        rng = random.Random(spec.seed)
        env_profile, cam_profile = get_profile("env-gateway"), get_profile("traffic-camera")
        self.devices: list[SimDevice] = []
        for kind, n, prof in (("gw", spec.gateways, env_profile), ("cam", spec.cameras, cam_profile)):
            for i in range(n):
                drng = random.Random(rng.getrandbits(64))
                dev = SimDevice(
                    device_id=f"{spec.prefix}-{kind}-{i:04d}",
                    site=f"district-{(i % spec.sites) + 1:02d}",
                    profile=prof,
                    boot_id=str(uuid.UUID(int=drng.getrandbits(128))),
                    rng=drng,
                )
                if not dev.is_camera:
                    dev.env = EnvState(drng, base_pm=drng.uniform(15, 45))
                    dev.faults = SensorFaults(drng, rate=spec.fault_rate)
                self.devices.append(dev)

    def registrations(self) -> list[tuple[str, str, str]]:
        return [(d.device_id, d.site, d.profile.profile) for d in self.devices]

    def _envelope(self, dev: SimDevice) -> dict:
        dev.seq += 1
        return {"v": 1, "device_id": dev.device_id, "boot_id": dev.boot_id, "seq": dev.seq, "sent_at": now_ms()}

    def messages(self, dev: SimDevice, ts_ms: int) -> list[OutMessage]:
        """The message(s) `dev` sends at ts_ms: samples_per_message samples ending at ts_ms."""
        step = int(self.spec.interval_s * 1000 / self.spec.samples_per_message)
        stamps = [ts_ms - step * k for k in reversed(range(self.spec.samples_per_message))]
        return self._camera(dev, stamps) if dev.is_camera else [self._gateway(dev, stamps)]

    def _ranges(self, dev: SimDevice) -> dict[str, tuple[float, float]]:
        return {k: (m.min, m.max) for k, m in dev.profile.metrics.items()}

    def _gateway(self, dev: SimDevice, stamps: list[int]) -> OutMessage:
        assert dev.env is not None
        assert dev.faults is not None
        out = OutMessage(dev.device_id, topics.telemetry(dev.site, dev.device_id, "env"), b"")
        samples = []
        for ts in stamps:
            values = dev.faults.apply(dev.env.sample(ts), self._ranges(dev))
            if not values:
                continue
            samples.append({"ts": ts, "values": values})
            self._classify(dev, out, ts, values)
        if not samples:  # every sensor dropped out: send the clean reading instead
            values = dev.env.sample(stamps[-1])
            samples.append({"ts": stamps[-1], "values": values})
            self._classify(dev, out, stamps[-1], values)
        out.payload = json.dumps({**self._envelope(dev), "samples": samples}).encode()
        return out

    def _classify(self, dev: SimDevice, out: OutMessage, ts: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            if dev.profile.metrics[name].check(name, value) is None:
                out.accepted[(dev.device_id, name, ts)] = value
            else:
                out.rejected_points += 1

    def _camera(self, dev: SimDevice, stamps: list[int]) -> list[OutMessage]:
        assert dev.profile.counts is not None
        interval_s = max(1, int(self.spec.interval_s / self.spec.samples_per_message))
        tlm = OutMessage(dev.device_id, topics.telemetry(dev.site, dev.device_id, "traffic"), b"")
        cnt = OutMessage(dev.device_id, topics.telemetry(dev.site, dev.device_id, COUNTS_STREAM), b"")
        samples, counts = [], []
        for ts in stamps:
            per_line, metrics = camera_interval(dev.rng, ts, self.spec.lines, dev.profile.counts.classes, interval_s)
            samples.append({"ts": ts, "values": metrics})
            self._classify(dev, tlm, ts, metrics)
            for (line, cls, direction), n in per_line.items():
                counts.append({"ts": ts, "interval_s": interval_s, "line": line, "class": cls,
                               "direction": direction, "count": n})
                cnt.counts[(dev.device_id, line, cls, direction, ts)] = n
        tlm.payload = json.dumps({**self._envelope(dev), "samples": samples}).encode()
        cnt.payload = json.dumps({**self._envelope(dev), "counts": counts}).encode()
        return [tlm, cnt]

    def status(self, dev: SimDevice, online: bool, ts_ms: int | None = None) -> bytes:
        body = {"v": 1, "device_id": dev.device_id, "status": "online" if online else "offline",
                "boot_id": dev.boot_id, "ts": ts_ms or now_ms(), "firmware": "sim-1.0",
                "profile": dev.profile.profile}
        if not online:
            body["reason"] = "connection lost"
        return json.dumps(body).encode()
