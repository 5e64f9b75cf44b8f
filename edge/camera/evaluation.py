"""Counting accuracy against hand counts: crossings matched per line and direction within a few frames.

A hand-count set is a YAML file naming the clip, its lines (points, the CSV of counted crossings, the
frame span that was counted) and the matching tolerance; each CSV row is `frame,direction,note`. A
counted crossing matches at most one hand-counted crossing of the same line and direction whose frame
is within the tolerance (greedy by distance, which is optimal for points on a line); the rest are
false positives, and hand counts left over are misses. No I/O beyond reading those files.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import yaml
from pydantic import BaseModel, ConfigDict, Field

from edge.camera.config import CameraConfig, LineConfig, Point, SourceConfig
from edge.camera.media import resolve_uri
from edge.camera.pipeline import CameraPipeline

DIRECTIONS = ("in", "out")


class HandLine(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    points: tuple[Point, Point]
    counts: str = Field(description="CSV file (frame,direction,note), relative to the YAML")
    frames: tuple[int, int] = Field(description="first and last frame that was counted")
    asserted: bool = Field(
        default=True,
        description="held to the 95 % targets by the tests; false: a known shortfall, measured by bench/counting.py",
    )


class HandCountSet(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    clip: str = Field(description="media name (edge.camera.media) or path")
    fps: float = Field(gt=0)
    tolerance_frames: int = Field(default=5, ge=0)
    lines: list[HandLine] = Field(min_length=1)


@dataclass(frozen=True)
class Counted:
    """One crossing: the frame it completed in and its direction."""

    frame: int
    direction: str


@dataclass
class Score:
    """Matches of one line and direction."""

    truth: int = 0
    counted: int = 0
    matched: int = 0
    misses: list[int] = field(default_factory=list)  # hand-counted frames nobody matched
    extra: list[int] = field(default_factory=list)  # counted frames with no hand count

    @property
    def recall(self) -> float:
        return self.matched / self.truth if self.truth else 1.0

    @property
    def precision(self) -> float:
        return self.matched / self.counted if self.counted else 1.0


def load_hand_counts(path: Path) -> tuple[HandCountSet, dict[str, list[Counted]]]:
    """The set's description and, per line, its hand-counted crossings."""
    spec = HandCountSet.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    truth: dict[str, list[Counted]] = {}
    for line in spec.lines:
        with (path.parent / line.counts).open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
        for row in rows:
            if row["direction"] not in DIRECTIONS:
                raise ValueError(f"{line.counts}: direction {row['direction']!r} is not in/out")
        truth[line.name] = [Counted(int(r["frame"]), r["direction"]) for r in rows]
    return spec, truth


def score_line(
    truth: Iterable[Counted], counted: Iterable[Counted], span: tuple[int, int], tolerance: int
) -> dict[str, Score]:
    """Per direction: hand counts inside `span` against counted crossings inside it (edges widened by
    the tolerance, so a crossing counted a frame late at the end of the span still matches)."""
    lo, hi = span
    scores = {}
    for direction in DIRECTIONS:
        want = sorted(c.frame for c in truth if c.direction == direction and lo <= c.frame <= hi)
        got = sorted(
            c.frame for c in counted if c.direction == direction and lo - tolerance <= c.frame <= hi + tolerance
        )
        pairs = sorted((abs(w - g), i, j) for i, w in enumerate(want) for j, g in enumerate(got))
        used_w: set[int] = set()
        used_g: set[int] = set()
        for gap, i, j in pairs:
            if gap <= tolerance and i not in used_w and j not in used_g:
                used_w.add(i)
                used_g.add(j)
        extra = [g for j, g in enumerate(got) if j not in used_g and lo <= g <= hi]
        scores[direction] = Score(
            truth=len(want),
            counted=len(used_g) + len(extra),
            matched=len(used_w),
            misses=[w for i, w in enumerate(want) if i not in used_w],
            extra=extra,
        )
    return scores


@dataclass
class ClipRun:
    """What one pass over a hand-counted clip gave."""

    crossings: dict[str, list[Counted]]
    frames: int
    detector_runs: int
    wall_s: float
    cpu_s: float
    camera_moving_frames: int = 0  # frames the camera-motion check took the view for a moving one


def clip_config(spec: HandCountSet, base: CameraConfig) -> CameraConfig:
    """`base` (model, tracker, gate settings) pointed at the clip, every frame analysed, the set's lines."""
    lines = [LineConfig(name=line.name, points=line.points) for line in spec.lines]
    source = SourceConfig(uri=resolve_uri(spec.clip), analysis_fps=0)
    return base.model_copy(update={"source": source, "lines": lines})


def count_clip(pipeline: CameraPipeline, last_frame: int | None = None) -> ClipRun:
    """Run a pipeline made from `clip_config` over its clip (up to `last_frame`), noting each crossing."""
    crossings: dict[str, list[Counted]] = {line.cfg.name: [] for line in pipeline.lines}
    proc = psutil.Process()
    cpu0, wall0 = proc.cpu_times(), time.perf_counter()
    frames = runs = moving = 0
    for result in pipeline.frames():
        if result.final:
            continue
        frames += 1
        runs += result.ran_detector
        moving += bool(pipeline.camera_motion and pipeline.camera_motion.moving)
        for crossing in result.crossings:
            crossings[crossing.line].append(Counted(result.frame.index, crossing.direction))
        if last_frame is not None and result.frame.index >= last_frame:
            break
    wall = time.perf_counter() - wall0
    cpu1 = proc.cpu_times()
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return ClipRun(crossings, frames, runs, wall, cpu, moving)
