"""Vietnam's air quality index, VN_AQI, as Decision 1459/QĐ-TCMT (2019) of the Vietnam Environment
Administration prescribes it (see docs/alerts.md for the tables and where they come from).

The same computation exists in SQL (migration 0031_vn_aqi.sql) for Grafana and the alarm rules; the tests
check that both agree on the same data. Only PM2.5 and PM10 are computed: the gateways measure no SO2, CO,
NO2 or O3, and the decision requires at least one of the two PM parameters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# Table 2 (Bảng 2): index breakpoints I_i and concentration breakpoints BP_i in µg/m³.
INDEX_BREAKPOINTS = (0, 50, 100, 150, 200, 300, 400, 500)
CONCENTRATION_BREAKPOINTS: dict[str, tuple[float, ...]] = {
    "pm25": (0, 25, 50, 80, 150, 250, 350, 500),
    "pm10": (0, 50, 150, 250, 350, 420, 500, 600),
}
NOWCAST_HOURS = 12


@dataclass(frozen=True)
class Band:
    """One row of Table 1 (Bảng 1): AQI range, quality, colour and its official RGB code."""

    low: int
    high: int
    key: str
    label_vi: str
    label_en: str
    rgb: tuple[int, int, int]

    @property
    def hex(self) -> str:
        return "#{:02X}{:02X}{:02X}".format(*self.rgb)


BANDS = (
    Band(0, 50, "good", "Tốt", "Good", (0, 228, 0)),
    Band(51, 100, "moderate", "Trung bình", "Moderate", (255, 255, 0)),
    Band(101, 150, "poor", "Kém", "Poor", (255, 126, 0)),
    Band(151, 200, "bad", "Xấu", "Bad", (255, 0, 0)),
    Band(201, 300, "very_bad", "Rất xấu", "Very bad", (143, 63, 151)),
    Band(301, 500, "hazardous", "Nguy hại", "Hazardous", (126, 0, 35)),
)
BAND_KEYS = tuple(b.key for b in BANDS)


def band_for(aqi: float) -> Band:
    """The band of a (rounded) AQI value; above 500 stays hazardous."""
    value = round_half_up(aqi)
    for b in BANDS:
        if value <= b.high:
            return b
    return BANDS[-1]


def band_by_key(key: str) -> Band:
    for b in BANDS:
        if b.key == key:
            return b
    raise ValueError(f"unknown VN_AQI band {key!r}; known: {', '.join(BAND_KEYS)}")


def round_half_up(x: float) -> int:
    """'Làm tròn thành số nguyên': half away from zero, as people round (Python's round() is banker's)."""
    return math.floor(x + 0.5)


def nowcast(hourly: Sequence[float | None]) -> float | None:
    """NowCast of section 2.2.1 a: hourly[0] is the current hour's mean (c1), hourly[11] the oldest (c12).

    w* = Cmin/Cmax over the hours present, w = max(w*, 1/2); Nowcast = Σ w^(i-1)·ci / Σ w^(i-1), a missing ci
    weighing 0. None ("không có dữ liệu") unless at least 2 of c1, c2, c3 are present. The decision writes
    the w = 1/2 case as Σ (1/2)^i·ci without the division; the normalised form used here is the same
    weighted mean (Σ (1/2)^(i-1) over 12 hours is 2 - 2^-11) and stays correct when hours are missing.
    """
    c = list(hourly[:NOWCAST_HOURS])
    if sum(1 for v in c[:3] if v is not None) < 2:
        return None
    present = [v for v in c if v is not None]
    cmax = max(present)
    if cmax <= 0:
        return 0.0
    w = max(min(present) / cmax, 0.5)
    num = sum(w**i * v for i, v in enumerate(c) if v is not None)
    den = sum(w**i for i, v in enumerate(c) if v is not None)
    return num / den


def sub_index(metric: str, concentration: float) -> float:
    """Formula 1/2: linear interpolation in Table 2; at or above the top breakpoint the index is 500."""
    bp = CONCENTRATION_BREAKPOINTS[metric]
    c = max(concentration, 0.0)
    if c >= bp[-1]:
        return float(INDEX_BREAKPOINTS[-1])
    for i in range(len(bp) - 1):
        if c <= bp[i + 1]:
            lo_i, hi_i = INDEX_BREAKPOINTS[i], INDEX_BREAKPOINTS[i + 1]
            return (hi_i - lo_i) / (bp[i + 1] - bp[i]) * (c - bp[i]) + lo_i
    raise AssertionError("unreachable: c is below the top breakpoint")


@dataclass(frozen=True)
class HourlyAqi:
    aqi: int
    dominant: str  # the parameter with the highest AQIx, which the decision requires publishing
    nowcasts: dict[str, float]

    @property
    def band(self) -> Band:
        return band_for(self.aqi)


def hourly_aqi(hourly_means: dict[str, Sequence[float | None]]) -> HourlyAqi | None:
    """AQI^h of one station from its hourly means per metric (newest first): the largest AQIx, rounded.
    None when neither PM2.5 nor PM10 has a NowCast."""
    nowcasts = {m: n for m, series in hourly_means.items()
                if m in CONCENTRATION_BREAKPOINTS and (n := nowcast(series)) is not None}
    if not nowcasts:
        return None
    subs = {m: sub_index(m, n) for m, n in nowcasts.items()}
    dominant = max(subs, key=lambda m: subs[m])
    return HourlyAqi(round_half_up(subs[dominant]), dominant, nowcasts)


def daily_aqi(means_24h: dict[str, float]) -> int | None:
    """AQI^d (section 2.2.2) for PM: formula 1 on the 24-hour means, largest AQIx, rounded."""
    subs = [sub_index(m, c) for m, c in means_24h.items() if m in CONCENTRATION_BREAKPOINTS]
    return round_half_up(max(subs)) if subs else None
