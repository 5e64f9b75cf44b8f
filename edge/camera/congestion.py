"""Congestion level 0 (free) .. 4 (jammed) from zone occupancy and mean speed, and its events.

Each input gives a level on its own (occupancy bands of 15 %, speed as a share of free-flow speed);
the camera's level is the mean of the two rounded up, so a jam needs both a full zone and slow
traffic, while a busy but flowing road stays at 2. With only one input, that one decides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

OCCUPANCY_BANDS = (15.0, 30.0, 45.0, 60.0)  # % at which levels 1..4 start
SPEED_RATIO_BANDS = (0.7, 0.5, 0.35, 0.2)  # speed / free flow below which levels 1..4 start


def occupancy_level(occupancy_pct: float) -> int:
    return sum(occupancy_pct >= b for b in OCCUPANCY_BANDS)


def speed_level(speed_kmh: float, free_flow_kmh: float) -> int:
    return sum(speed_kmh / free_flow_kmh < b for b in SPEED_RATIO_BANDS)


def congestion_level(
    occupancy_pct: float | None, speed_kmh: float | None, free_flow_kmh: float
) -> int | None:
    levels = []
    if occupancy_pct is not None:
        levels.append(occupancy_level(occupancy_pct))
    if speed_kmh is not None:
        levels.append(speed_level(speed_kmh, free_flow_kmh))
    if not levels:
        return None
    return math.ceil(sum(levels) / len(levels))


@dataclass
class CongestionTransition:
    kind: str  # congestion_start | congestion_end
    level: int
    duration_s: float | None


class CongestionState:
    """Start when the rolling level reaches `event_level`; end below `event_level - 1` (hysteresis)."""

    def __init__(self, event_level: int) -> None:
        self.event_level = event_level
        self.since: float | None = None

    def update(self, t: float, level: int | None) -> CongestionTransition | None:
        if level is None:
            return None
        if self.since is None and level >= self.event_level:
            self.since = t
            return CongestionTransition("congestion_start", level, None)
        if self.since is not None and level < max(self.event_level - 1, 1):
            duration, self.since = t - self.since, None
            return CongestionTransition("congestion_end", level, duration)
        return None
