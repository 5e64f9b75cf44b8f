"""Camera pipeline benchmark on real footage: frames/s analysed, inference ms, CPU, gate on vs off.

Every frame of sample.mp4 (640x360, filmed from a moving tram, so nearly every frame moves) or
vtest.avi (768x576, fixed camera) is analysed (no rate limit) through the whole pipeline - decode,
motion gate, detector, tracker, lines, zones - once with the motion gate on and once with it off, in
this one process, so the ratio compares like with like. Prints figures; asserts nothing.

    .venv/bin/python bench/vision.py [--input-size 320] [--frames 900] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge.camera import media, registry
from edge.camera.config import OnnxModelConfig, SourceConfig, load_config
from edge.camera.pipeline import CameraPipeline

SAMPLE_CONFIG = Path(__file__).resolve().parents[1] / "edge" / "camera" / "sample-camera.yaml"


def run(video: Path, gate: bool, input_size: int, frames: int, threads: int) -> dict[str, float]:
    cfg = load_config(SAMPLE_CONFIG)
    cfg = cfg.model_copy(
        update={
            "source": SourceConfig(uri=str(video), analysis_fps=0),
            "model": OnnxModelConfig(input_size=input_size, threads=threads),
            "motion": cfg.motion.model_copy(update={"enabled": gate}),
        }
    )
    pipeline = CameraPipeline(cfg)
    proc = psutil.Process()
    cpu0, wall0 = proc.cpu_times(), time.perf_counter()
    analysed, inference = 0, []
    for result in pipeline.frames():
        if result.final:
            continue
        analysed += 1
        if result.inference_ms is not None:
            inference.append(result.inference_ms)
        if analysed >= frames:
            break
    wall = time.perf_counter() - wall0
    cpu1 = proc.cpu_times()
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return {
        "fps": analysed / wall,
        "frames": analysed,
        "detector_runs": len(inference),
        "p50": float(np.percentile(inference, 50)) if inference else 0.0,
        "p99": float(np.percentile(inference, 99)) if inference else 0.0,
        "cpu_pct": 100.0 * cpu / wall,  # of one core; 200 % = both cores busy
        "crossings": float(sum(pipeline.totals.values())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input-size", type=int, default=320)
    parser.add_argument("--frames", type=int, default=900, help="frames analysed per run (clip has 1,799)")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    parser.add_argument("--video", choices=["sample", "vtest"], default="sample", help="vtest: fixed camera")
    args = parser.parse_args()
    video = media.sample_mp4() if args.video == "sample" else media.vtest_avi()
    registry.prepare(registry.DEFAULT_MODEL, args.input_size)  # convert outside the timed runs
    print(
        f"{video.name}, yolov3-tiny-coco at {args.input_size}, {args.threads} ORT threads, "
        f"{psutil.cpu_count()} CPUs"
    )
    results = {}
    for gate in (True, False):
        r = results[gate] = run(video, gate, args.input_size, args.frames, args.threads)
        print(
            f"gate {'on ' if gate else 'off'}: {r['fps']:6.1f} frames/s analysed "
            f"over {r['frames']:.0f} frames, "
            f"detector on {r['detector_runs']:.0f}, inference p50 {r['p50']:.1f} ms p99 {r['p99']:.1f} ms, "
            f"CPU {r['cpu_pct']:.0f} % of one core, {r['crossings']:.0f} line crossings"
        )
    on, off = results[True], results[False]
    print(
        f"gate on / off: {on['fps'] / off['fps']:.2f}x frames/s, "
        f"{on['detector_runs'] / max(off['detector_runs'], 1):.2f}x detector runs, "
        f"{on['cpu_pct'] / max(off['cpu_pct'], 1e-9):.2f}x CPU"
    )
    print(f"target >= 25 frames/s with the gate on: {'met' if on['fps'] >= 25 else 'NOT met'}")


if __name__ == "__main__":
    main()
