"""Heartbeat health metrics (the `health` stream of every profile), read with psutil.

cpu_pct is the whole box (what an operator needs to see), mem_rss_mb the agent itself, disk_free_pct
the filesystem holding the outbox -- the one that fills up during a long outage.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path

import psutil

from contract.profiles import DeviceProfile

log = logging.getLogger(__name__)


class HealthProbe:
    def __init__(self, profile: DeviceProfile, outbox_path: Path) -> None:
        self._proc = psutil.Process()
        self._started = time.monotonic()
        self._disk_path = str(outbox_path.parent if outbox_path.parent.exists() else Path.cwd())
        self._names = {n for n, m in profile.metrics.items() if m.stream == "health"}
        psutil.cpu_percent(interval=None)  # prime: the first call has no reference point

    @property
    def uptime_s(self) -> float:
        return time.monotonic() - self._started

    def read(
        self,
        *,
        outbox_depth: int,
        outbox_dropped: int,
        link_up: bool,
        extra: Mapping[str, float] | None = None,
    ) -> dict[str, float]:
        values: dict[str, float] = {
            "uptime_s": round(self.uptime_s, 1),
            "cpu_pct": psutil.cpu_percent(interval=None),
            "mem_rss_mb": round(self._proc.memory_info().rss / 1e6, 2),
            "disk_free_pct": round(100.0 - psutil.disk_usage(self._disk_path).percent, 2),
            "outbox_depth": float(outbox_depth),
            "outbox_dropped": float(outbox_dropped),
            "link_up": 1.0 if link_up else 0.0,
        }
        for name, value in (extra or {}).items():
            if name in self._names:
                values[name] = float(value)
            else:
                log.warning("health metric %r is not in health.yaml; not sent", name)
        return {k: v for k, v in values.items() if k in self._names}
