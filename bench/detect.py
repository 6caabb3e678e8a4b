"""The detect stage's cost per record and metric, with every default method on.

The stage (``flowdeck.pipeline.stages.detect.AnomalyDetector``, built from a flow config as
the engine builds it) scores batches of 1,000 records, ``metrics`` metrics each, of many
series of seeded noise with rare spikes. The first ``warm`` points of every series are
scored untimed (the detectors fill their windows and calibrations: steady state is what a
running engine pays); then the next points are timed. Baseline, same values, same run:
a bare streaming rolling median z-score in plain Python (``bisect`` into a sorted window
of the same length; the MAD spread recomputed once per window of points), the least a
robust-z detector does per point.

With 200 series a 1,000-record batch holds 5 points of each; the extra
``us_at_50_points_per_series_per_batch`` times the same stage on 20 series (50 points of
each per batch, the same number of records, so each series' state is longer calibrated).

Times are CPU time of this process (``time.process_time``), the stage and the baseline
alike: the work is single-threaded, and on a shared machine wall time mostly measures
the other jobs (seen here: 150 µs wall for 25 µs of CPU per point at a load of 8).

``kernel`` in the details says which path scored: the compiled kernel
(``pipeline/_kernel.pyx``) or, with ``FLOWDECK_PURE_PYTHON=1`` or no compiler at install
time, the Python reference (the same scores).

    .venv/bin/python -m bench.detect
"""

from __future__ import annotations

import bisect
import random
import time
from collections import deque
from pathlib import Path

from bench.common import Figure, Options
from flowdeck.pipeline import detectors
from flowdeck.pipeline.config import parse_config
from flowdeck.pipeline.model import Batch, Rec
from flowdeck.pipeline.stages.detect import AnomalyDetector

METRICS = ("temperature", "pressure")
CONFIG = """
flows:
  det:
    key: station
    sources: [{name: feed, kind: file, path: unused.jsonl, format: jsonl,
               fields: {station: s, ts: t, temperature: a, pressure: b}}]
    fields:
      station: {type: str, required: true}
      temperature: {type: float}
      pressure: {type: float}
    detect: [{metric: temperature}, {metric: pressure}]
"""
WINDOW = 120  # the detect default window


def series(keys: int, points: int, seed: int = 7) -> list[list[Rec]]:
    """Batches of 1,000 records, time-ordered, ``keys`` stations, one point each per 10 s."""
    rnd = random.Random(seed)
    recs = []
    t0 = 1_795_000_000_000
    for p in range(points):
        for k in range(keys):
            spike = 25.0 if rnd.random() < 0.001 else 0.0
            data = {"station": f"S{k:03d}", "temperature": 15 + 5 * rnd.gauss() + spike,
                    "pressure": 1000 + rnd.gauss() * 3}
            recs.append(Rec(f"S{k:03d}", t0 + p * 10_000, data, "feed", 1, len(recs)))
    return [recs[i:i + 1000] for i in range(0, len(recs), 1000)]


def bare_robust_z(batches: list[list[Rec]]) -> float:
    windows: dict[tuple[str, str], tuple[deque, list, list]] = {}
    t = time.process_time()
    for batch in batches:
        for metric in METRICS:
            for rec in batch:
                v = rec.data[metric]
                w = windows.get((rec.key, metric))
                if w is None:
                    w = windows[(rec.key, metric)] = (deque(), [], [1.0, 0])
                order, srt, spread = w
                n = len(srt)
                if n >= 10:
                    med = srt[n // 2]
                    spread[1] += 1
                    if spread[1] % WINDOW == 10 % WINDOW:
                        spread[0] = sorted(abs(x - med) for x in srt)[n // 2] or 1e-9
                    _z = abs(v - med) / (1.4826 * spread[0])
                order.append(v)
                bisect.insort(srt, v)
                if len(order) > WINDOW:
                    srt.pop(bisect.bisect_left(srt, order.popleft()))
    return time.process_time() - t


def timed_stage(batches: list[list[Rec]], split: int) -> tuple[float, int, int]:
    """(seconds, points, flagged records) of the stage over ``batches[split:]``, after
    the first ``split`` batches untimed."""
    cfg = parse_config(CONFIG, str(Path.cwd() / "det.yaml"))
    stage = AnomalyDetector("det", cfg.flows["det"])
    for b in batches[:split]:
        stage.run(Batch("det", "feed", 1, 0, records=b), 0)
    flagged = 0
    t = time.process_time()
    for b in batches[split:]:
        batch = Batch("det", "feed", 1, 0, records=b)
        stage.run(batch, 0)
        flagged += sum(1 for r in b if r.anomaly >= 0.5)
    dt = time.process_time() - t
    return dt, sum(len(b) for b in batches[split:]) * len(METRICS), flagged


def run(opts: Options) -> tuple[list[Figure], dict]:
    keys = opts.n(200, 50, 5)
    warm, timed = (300, 300) if not opts.quick else (200, 100)
    cfg = parse_config(CONFIG, str(Path.cwd() / "det.yaml"))
    batches = series(keys, warm + timed)
    dt, points, flagged = timed_stage(batches, keys * warm // 1000)
    base = bare_robust_z(batches) / (sum(len(b) for b in batches) * len(METRICS))
    us = dt / points * 1e6
    # The same records, but 20 series: 50 points of each per 1,000-record batch.
    few = 20
    runs = series(few, (warm + timed) * keys // few, seed=8)
    dt_runs, points_runs, _ = timed_stage(runs, warm * keys // 1000)
    methods = list(cfg.flows["det"].detect[0].methods)
    extra = {"kernel": detectors.KERNEL,  # compiled per-point path, or pure Python
             "detect_points_timed": points, "series": keys * len(METRICS),
             "points_per_series_per_batch": 1000 // keys,
             "methods": methods, "flagged_records": flagged,
             "bare_robust_z_us": base * 1e6, "ratio_vs_bare_robust_z": us / (base * 1e6),
             "us_at_50_points_per_series_per_batch": dt_runs / points_runs * 1e6}
    return [Figure("detect_us_per_record_metric", us, "<= 2",
                   f"bare rolling-median z {base * 1e6:.2f} us", "us",
                   extra={"methods": len(methods), "kernel": detectors.KERNEL})], extra


if __name__ == "__main__":
    figs, extra = run(Options())
    for f in figs:
        print(f)
    print(extra)
