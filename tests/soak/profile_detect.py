"""Cost of the detect stage per record and metric, on realistic batches (not a test: run it).

    .venv/bin/python tests/soak/profile_detect.py [--methods robust_z] [--profile] [--each]

Two shapes, both through the stage's public ``AnomalyDetector.run`` in batches of 1,000:

* ``cold``: the throughput bench's shape (1,000 stations, 100 one-second points each): no
  series gets past its warm-up, which is what the bench measures;
* ``warm``: 20 series of 6,000 one-minute points with a daily rhythm, noise and a few
  spikes (every method calibrated and active, the steady state of a running engine).

Prints CPU µs per record per metric (process time: other jobs on the machine count less) for each (the first 1,200 points of ``warm`` are warm-up
and not timed). ``--profile`` prints the top of a cProfile of the warm run.
"""

from __future__ import annotations

import argparse
import cProfile
import math
import pstats
import random
import time

from flowdeck.pipeline.config import DetectSpec
from flowdeck.pipeline.evaluation import detect_flow
from flowdeck.pipeline.model import Batch, Rec
from flowdeck.pipeline.stages.detect import AnomalyDetector

BATCH = 1000


def cold_batches() -> list[list[tuple[str, int, float]]]:
    t0 = 1_700_000_000_000
    rows = [(f"S{i % 1000:03d}", t0 + (i // 1000) * 1000, 10.0 + (i % 37) * 0.28)
            for i in range(100_000)]
    return [rows[i:i + BATCH] for i in range(0, len(rows), BATCH)]


def warm_batches(series: int = 20, points: int = 6000) -> list[list[tuple[str, int, float]]]:
    rng = random.Random(3)
    t0 = 1_700_000_000_000
    rows = []
    for j in range(points):
        ts = t0 + j * 60_000
        phase = 2 * math.pi * (j % 1440) / 1440
        for s in range(series):
            v = 20 + 5 * math.sin(phase + s) + rng.gauss(0, 0.5)
            if rng.random() < 2e-4:
                v += 8
            rows.append((f"K{s:02d}", ts, round(v, 2)))
    return [rows[i:i + BATCH] for i in range(0, len(rows), BATCH)]


def run(stage: AnomalyDetector, batches, skip: int = 0) -> float:
    """µs per record (one metric) over the batches after the first ``skip``."""
    elapsed, n = 0.0, 0
    for b, rows in enumerate(batches):
        recs = [Rec(k, ts, {"station": k, "value": v}, "feed", 0, i)
                for i, (k, ts, v) in enumerate(rows)]
        batch = Batch("bench", None, None, rows[-1][1], records=recs)
        t = time.process_time()
        stage.run(batch, rows[-1][1])
        if b >= skip:
            elapsed += time.process_time() - t
            n += len(recs)
    return elapsed / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default=None, help="comma-separated; default: the defaults")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--repeat", type=int, default=1, help="report the best of N runs")
    ap.add_argument("--each", action="store_true",
                    help="each default method alone, then all of them (one line each)")
    args = ap.parse_args()
    if args.each:
        for methods in [[m] for m in DetectSpec(metric="value").methods] + [None]:
            measure(methods, args.repeat)
        return
    measure(None if args.methods is None else args.methods.split(","), args.repeat,
            args.profile)


def measure(methods: list[str] | None, repeat: int, profile: bool = False) -> None:
    spec = DetectSpec(metric="value") if methods is None else DetectSpec(
        metric="value", methods=methods)
    flow = detect_flow(spec)
    cold_b, warm_b = cold_batches(), warm_batches()
    skip = 1200 * 20 // BATCH
    cold = min(run(AnomalyDetector("bench", flow), cold_b) for _ in range(repeat))
    if profile:
        prof = cProfile.Profile()
        prof.enable()
    warm = min(run(AnomalyDetector("bench", flow), warm_b, skip) for _ in range(repeat))
    if profile:
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(18)
    print(f"methods={','.join(spec.methods)} cold {cold:.2f} us/record/metric, "
          f"warm {warm:.2f} us/record/metric", flush=True)


if __name__ == "__main__":
    main()
