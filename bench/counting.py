"""Counting accuracy against hand counts, with speed: one table over detector inputs and the motion gate.

For every hand-count set under tests/data (*.yaml: clip, lines, counted spans) and every setting
(detector input 320/416/640, motion gate on/off), the whole pipeline - decode, gate, detector,
tracker, lines - runs over the clip at the box defaults otherwise, and each line's crossings are
matched per direction to the hand counts within the set's tolerance. Prints precision, recall,
frames/s analysed, CPU and detector runs, and frames/s as a ratio to the first setting run in the same
process (`x1st`: absolute figures swing with other load on a shared machine, ratios much less);
asserts nothing. The defaults in models/yolov3-tiny-coco.md come from this table.

    .venv/bin/python bench/counting.py [--sizes 320 416 640] [--gate on off] [--last-frame N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge.camera import registry
from edge.camera.config import CameraConfig, MotionConfig, OnnxModelConfig, SourceConfig
from edge.camera.evaluation import clip_config, count_clip, load_hand_counts, score_line
from edge.camera.pipeline import CameraPipeline

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[320, 416, 640])
    parser.add_argument("--gate", choices=["on", "off"], nargs="+", default=["on", "off"])
    parser.add_argument("--last-frame", type=int, default=None, help="stop each clip here (quick runs)")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    args = parser.parse_args()
    sets = sorted(DATA.glob("*.yaml"))
    for size in args.sizes:
        registry.prepare(registry.DEFAULT_MODEL, size)  # convert outside the timed runs
    header = (
        f"{'clip':<10} {'line':<11} {'input':>5} {'gate':>4} {'dir':>3} {'hand':>4} {'counted':>7} "
        f"{'P':>5} {'R':>5} {'fps':>6} {'x1st':>5} {'CPU%':>5} {'det runs':>8}"
    )
    print(header)
    print("-" * len(header))
    first_fps: float | None = None
    for path in sets:
        spec, truth = load_hand_counts(path)
        for size in args.sizes:
            for gate in args.gate:
                base = CameraConfig(
                    source=SourceConfig(uri=spec.clip),
                    model=OnnxModelConfig(input_size=size, threads=args.threads),
                    motion=MotionConfig(enabled=gate == "on"),
                )
                run = count_clip(CameraPipeline(clip_config(spec, base)), args.last_frame)
                fps, cpu = run.frames / run.wall_s, 100 * run.cpu_s / run.wall_s
                first_fps = first_fps or fps
                for line in spec.lines:
                    lo, hi = line.frames
                    span = (lo, min(hi, args.last_frame) if args.last_frame is not None else hi)
                    scores = score_line(truth[line.name], run.crossings[line.name], span, spec.tolerance_frames)
                    for direction, s in scores.items():
                        print(
                            f"{spec.clip:<10} {line.name:<11} {size:>5} {gate:>4} {direction:>3} {s.truth:>4} "
                            f"{s.counted:>7} {s.precision:>5.2f} {s.recall:>5.2f} {fps:>6.1f} {fps / first_fps:>5.2f} "
                            f"{cpu:>5.0f} "
                            f"{run.detector_runs:>4}/{run.frames}"
                        )
                        if s.misses or s.extra:
                            print(f"{'':<22}missed frames {s.misses}, extra {s.extra}")
                sys.stdout.flush()


if __name__ == "__main__":
    main()
