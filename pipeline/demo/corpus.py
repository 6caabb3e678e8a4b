"""A seeded, labelled corpus of time series for measuring anomaly detection.

``python -m flowdeck.pipeline.demo.corpus OUT_DIR --seed N`` writes ``OUT_DIR/<group>/<name>.csv``
files (header ``timestamp,value``, timestamps like ``2014-07-01 00:30:00``, naive UTC) and
``OUT_DIR/labels.json`` mapping each file's relative path to its ``[start, end]`` anomaly
windows (an empty list: no anomaly). The same seed writes the same bytes.

Series are built from parts: a level on a scale from 1e-2 to 1e5, daily and weekly rhythm,
trend, gaussian or heavy-tailed noise of varying size, integer counts, missing points (single
and whole gaps) and irregular spacing; sampling from 1 minute to 1 hour; 1,000 to 20,000
points. Anomalies: spikes, dips, level shifts up and down, drifts, variance changes,
flat-lines (a stuck sensor repeating one value) and seasonality breaks (the daily rhythm
vanishing or shifting phase). Several series have no anomaly at all.

Windows are labelled the way public labelled streams do it: about 10 % of the file's length
split evenly among its anomalies, each window centred on the anomaly's onset (so the second
half of a window is the time to notice it), clipped to the file and never overlapping.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

START = datetime(2014, 7, 1, tzinfo=UTC).timestamp()
DAY = 86400.0
WEEK = 7 * DAY
INTERVALS = (60.0, 300.0, 300.0, 600.0, 900.0, 1800.0, 3600.0)
KINDS = ("spike", "dip", "shift_up", "shift_down", "drift", "variance", "flatline",
         "season_break")
WINDOW_SHARE = 0.10
PROBATION = 0.15


@dataclass
class Spec:
    """What one series is made of."""

    name: str
    n: int
    interval: float
    level: float
    noise: float  # standard deviation of the noise, in units of the level
    daily: float = 0.0  # amplitude of the daily rhythm, in units of the level
    weekly: float = 0.0  # weekend dip, in units of the level
    trend: float = 0.0  # total change over the series, in units of the level
    heavy: bool = False  # Student-t(3) noise instead of gaussian
    counts: bool = False  # integer counts (Poisson around the signal)
    missing: float = 0.0  # share of points dropped
    irregular: float = 0.0  # timestamp jitter, in units of the interval
    walk: float = 0.0  # random-walk component, per step, in units of the level
    anomalies: list[str] = field(default_factory=list)


def _t3(rng: random.Random) -> float:
    """Student-t with 3 degrees of freedom, scaled to unit variance."""
    z = rng.gauss(0.0, 1.0)
    chi = sum(rng.gauss(0.0, 1.0) ** 2 for _ in range(3))
    return z / math.sqrt(chi / 3.0) / math.sqrt(3.0)


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam > 50:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def _signal(spec: Spec, t: float, i: int) -> float:
    day_phase = ((t - START) % DAY) / DAY
    week_day = int(((t - START) % WEEK) // DAY)  # 0 = Tuesday 2014-07-01
    base = 1.0 + spec.trend * i / spec.n
    base += spec.daily * math.sin(2 * math.pi * (day_phase - 0.3))
    base += 0.4 * spec.daily * math.sin(4 * math.pi * day_phase)
    if week_day in (4, 5):  # Saturday, Sunday
        base -= spec.weekly
    return base


def generate(spec: Spec, rng: random.Random) -> tuple[list[tuple[float, float]],
                                                       list[tuple[float, float]]]:
    """The ``(ts, value)`` rows and the anomaly windows ``(start_ts, end_ts)`` of ``spec``."""
    n = spec.n
    times = [START + i * spec.interval for i in range(n)]
    if spec.irregular:
        times = [t + rng.uniform(-0.5, 0.5) * spec.irregular * spec.interval for t in times]
        times = [round(t) for t in times]
    clean = [_signal(spec, t, i) for i, t in enumerate(times)]
    if spec.walk:
        level = 0.0
        for i in range(n):
            level += rng.gauss(0.0, spec.walk)
            clean[i] += level
    noise = [(_t3(rng) if spec.heavy else rng.gauss(0.0, 1.0)) * spec.noise for _ in range(n)]
    stuck: dict[int, float] = {}

    # Place anomalies after probation, spaced so their windows do not overlap.
    k = len(spec.anomalies)
    half = max(2, int(WINDOW_SHARE * n / max(k, 1) / 2))
    onsets: list[int] = []
    if k:
        lo = int(PROBATION * n) + half + 10
        span = (n - half - 10 - lo) // k
        for j in range(k):
            a = lo + j * span
            onsets.append(rng.randint(a + span // 8, a + max(span // 8 + 1, span * 5 // 8)))
    # The noise that matters: Poisson counts carry 1 / sqrt(level) of their own.
    scale_noise = max(spec.noise, 1.0 / math.sqrt(spec.level)) if spec.counts else spec.noise
    for kind, at in zip(spec.anomalies, onsets, strict=True):
        length = max(3, int(rng.uniform(0.3, 0.8) * half))
        size = max(6.0 * scale_noise, 0.15) * rng.uniform(1.0, 2.0)
        if kind in ("spike", "dip"):
            sign = 1 if kind == "spike" else -1
            for i in range(at, min(n, at + rng.randint(1, 3))):
                clean[i] += sign * max(8.0 * scale_noise, 0.25 + spec.daily) * rng.uniform(1, 1.6)
        elif kind in ("shift_up", "shift_down"):
            sign = 1 if kind == "shift_up" else -1
            delta = sign * min(size, 0.6)
            for i in range(at, n):
                clean[i] += delta
        elif kind == "drift":
            ramp = max(half, 20)
            delta = rng.choice((-1, 1)) * min(max(10.0 * scale_noise, 0.3), 0.8)
            for i in range(at, n):
                clean[i] += delta * min(1.0, (i - at) / ramp)
        elif kind == "variance":
            factor = rng.uniform(5.0, 8.0)
            for i in range(at, min(n, at + 3 * length)):
                noise[i] *= factor
                if noise[i] == 0.0:
                    noise[i] = rng.gauss(0.0, 0.05) * factor
        elif kind == "flatline":
            value = clean[at] + noise[at]
            for i in range(at, min(n, at + max(3 * length, 30))):
                stuck[i] = value
        elif kind == "season_break":
            for i in range(at, min(n, at + max(3 * length, int(DAY / spec.interval)))):
                shifted = times[i] + DAY / 2
                clean[i] += _signal(spec, shifted, i) - _signal(spec, times[i], i)
    values = []
    for i in range(n):
        if i in stuck:
            values.append(stuck[i])
            continue
        v = clean[i] + noise[i]
        if spec.counts:
            v = float(_poisson(rng, max(v, 0.0) * spec.level))
        else:
            v *= spec.level
        values.append(v)
    for i, v in stuck.items():
        values[i] = float(round(v * spec.level)) if spec.counts else v * spec.level

    windows = []
    for at in onsets:
        left, right = max(0, at - half), min(n - 1, at + half)
        windows.append((times[left], times[right]))

    keep = [True] * n
    if spec.missing:
        i = 0
        while i < n:
            if rng.random() < spec.missing / 20:  # a gap of up to 40 points
                for j in range(i, min(n, i + rng.randint(5, 40))):
                    keep[j] = False
                i += 40
            elif rng.random() < spec.missing / 2:
                keep[i] = False
            i += 1
        for at in onsets:  # the anomaly itself is observed
            for j in range(at, min(n, at + 3)):
                keep[j] = True
    rows = [(times[i], values[i]) for i in range(n) if keep[i]]
    return rows, windows


def _fmt(value: float, counts: bool) -> str:
    if counts:
        return str(int(value))
    return f"{value:.6g}"


def specs(rng: random.Random) -> list[tuple[str, Spec]]:
    """The ~36 series of a corpus, as ``(group, spec)``; the seed varies every parameter."""
    out: list[tuple[str, Spec]] = []

    def pick_n() -> int:
        return rng.choice((1000, 1500, 2000, 2500, 3000, 4000, 4000, 5000))

    def add(group: str, name: str, anomalies: list[str], **kw: object) -> None:
        kw.setdefault("n", pick_n())
        kw.setdefault("interval", rng.choice(INTERVALS))
        kw.setdefault("level", 10 ** rng.uniform(-2, 5))
        kw.setdefault("noise", rng.choice((0.01, 0.02, 0.05, 0.1)))
        out.append((group, Spec(name=name, anomalies=anomalies, **kw)))  # type: ignore[arg-type]

    # Clean series: nothing to find.
    add("clean", "noise", [])
    add("clean", "daily", [], interval=300.0, n=6000, daily=0.3)
    add("clean", "weekly_counts", [], interval=3600.0, n=3000, daily=0.4, weekly=0.3,
        counts=True, level=rng.uniform(20, 200))
    add("clean", "heavy", [], heavy=True)
    add("clean", "walk", [], walk=0.002)
    add("clean", "trend_gaps", [], trend=0.5, missing=0.05, irregular=0.3)
    # One kind each, on a plain series.
    for kind in KINDS:
        if kind == "season_break":
            add("single", kind, [kind], interval=600.0, n=5000, daily=0.3)
        else:
            add("single", kind, [kind])
    # Seasonal backgrounds.
    add("seasonal", "daily_spikes", ["spike", "dip"], interval=300.0, n=8000, daily=0.3)
    add("seasonal", "daily_shift", ["shift_up"], interval=900.0, n=4000, daily=0.25)
    add("seasonal", "weekly_break", ["season_break", "spike"], interval=1800.0, n=4000,
        daily=0.3, weekly=0.25)
    add("seasonal", "weekly_counts", ["dip", "shift_down"], interval=3600.0, n=3000, daily=0.4,
        weekly=0.3, counts=True, level=rng.uniform(20, 200))
    add("seasonal", "minute_daily", ["drift"], interval=60.0, n=20000, daily=0.2)
    add("seasonal", "daily_flatline", ["flatline"], interval=600.0, n=4000, daily=0.3)
    # Harder backgrounds.
    add("hard", "heavy_spike", ["spike"], heavy=True)
    add("hard", "heavy_shift", ["shift_down", "spike"], heavy=True, noise=0.05)
    add("hard", "trend_shift", ["shift_up"], trend=0.8)
    add("hard", "trend_variance", ["variance"], trend=-0.5)
    add("hard", "noisy_dip", ["dip"], noise=0.15)
    add("hard", "walk_spike", ["spike", "spike"], walk=0.003)
    add("hard", "counts_small", ["spike", "flatline"], counts=True, level=rng.uniform(3, 10),
        noise=0.0)
    add("hard", "counts_shift", ["shift_up"], counts=True, level=rng.uniform(30, 80), noise=0.0)
    add("hard", "gaps_spike", ["spike", "dip"], missing=0.08)
    add("hard", "irregular_shift", ["shift_down"], irregular=0.6)
    add("hard", "irregular_gaps_daily", ["spike", "season_break"], irregular=0.4, missing=0.05,
        interval=600.0, n=6000, daily=0.3)
    add("hard", "long_many", ["spike", "shift_up", "dip", "variance"], n=12000)
    add("hard", "tiny_scale", ["dip", "drift"], level=rng.uniform(1e-3, 1e-2))
    add("hard", "huge_scale", ["shift_up", "spike"], level=rng.uniform(1e5, 1e6))
    return out


def write_corpus(out_dir: Path, seed: int) -> dict[str, list[list[str]]]:
    """Write the corpus of ``seed`` under ``out_dir``; returns the labels it wrote."""
    rng = random.Random(seed)
    labels: dict[str, list[list[str]]] = {}
    for group, spec in specs(rng):
        series_rng = random.Random(f"{seed}:{group}:{spec.name}")
        rows, windows = generate(spec, series_rng)
        rel = f"{group}/{spec.name}.csv"
        path = out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as handle:
            handle.write("timestamp,value\n")
            for ts, value in rows:
                handle.write(f"{_stamp(ts)},{_fmt(value, spec.counts)}\n")
        labels[rel] = [[_stamp(a) + ".000000", _stamp(b) + ".000000"] for a, b in windows]
    with open(out_dir / "labels.json", "w") as handle:
        json.dump(labels, handle, indent=1, sort_keys=True)
        handle.write("\n")
    return labels


def _stamp(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flowdeck.pipeline.demo.corpus",
                                     description="Write a seeded, labelled detection corpus.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_corpus(args.out_dir, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
