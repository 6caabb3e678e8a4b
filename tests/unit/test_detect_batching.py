"""Per-series batching (issue 19): a series' points scored at once give the very same
verdicts, state and issues as the same points scored one by one."""

from __future__ import annotations

import json
import math
import random

import pytest

from flowdeck.pipeline.config import DetectSpec
from flowdeck.pipeline.detectors import (
    METHODS,
    Detector,
    DetectorSettings,
    Score,
    SeriesDetector,
)
from flowdeck.pipeline.evaluation import detect_flow
from flowdeck.pipeline.model import Batch, Rec
from flowdeck.pipeline.stages.detect import AnomalyDetector

T0 = 1_767_225_600.0  # 2026-01-01T00:00Z


def shapes() -> dict[str, tuple[list[float], list[float]]]:
    """Series that take every path: noise with spikes and a shift, a daily rhythm, flat
    stretches (the sigma fallbacks), integer counts with zeros and a negative zero, and
    late, duplicate and non-finite points (which break a run)."""
    rng = random.Random(11)
    out: dict[str, tuple[list[float], list[float]]] = {}
    n = 3000
    ts = [T0 + 60.0 * i for i in range(n)]
    noise = [50.0 + rng.gauss(0.0, 1.0) for _ in range(n)]
    for i in range(400, n, 170):
        noise[i] += rng.choice((-1, 1)) * rng.uniform(8.0, 15.0)
    for i in range(2000, n):
        noise[i] += 12.0
    out["spikes_and_shift"] = (ts, noise)
    out["daily"] = (ts, [20.0 + 5.0 * math.sin(2 * math.pi * i / 1440) + rng.gauss(0, 0.3)
                         + (9.0 if i % 997 == 0 else 0.0) for i in range(n)])
    flat = [7.0] * n
    for i in range(600, n, 450):
        flat[i] = 7.5
    for i in range(1500, 1700):
        flat[i] = 7.0 + (i % 3) * 0.001
    out["flat"] = (ts, flat)
    counts = [float(rng.choice((0, 0, 0, 1, 2, 3))) for _ in range(n)]
    counts[900] = -0.0
    counts[2500] = 40.0
    out["counts"] = (ts, counts)
    messy_ts, messy = list(ts), list(noise)
    for i in range(300, n, 233):
        messy_ts[i] = messy_ts[i - 5]  # late
    for i in range(310, n, 377):
        messy_ts[i] = messy_ts[i - 1]  # duplicate timestamp
    for i in range(320, n, 411):
        messy[i] = math.nan
    messy[1234] = math.inf
    out["late_duplicate_nan"] = (messy_ts, messy)
    return out


SETTINGS = {
    "defaults": DetectorSettings(),
    "all_methods_hourly_season": DetectorSettings(methods=METHODS, season=3600.0),
    "odd_window_short_calibration": DetectorSettings(window=31, calibration_window=200,
                                                     warmup=50),
    "raw": DetectorSettings(methods=("robust_z", "ewma", "rate"), calibrate=False),
    "fixed_rate_threshold": DetectorSettings(methods=("rate", "level_shift"),
                                             rate_threshold=0.5),
}


def one_by_one(settings: DetectorSettings, ts: list[float], values: list[float]
               ) -> tuple[list[Score], SeriesDetector]:
    det = SeriesDetector(settings)
    return [det.score(t, v) for t, v in zip(ts, values, strict=True)], det


def state(det: SeriesDetector) -> str:
    return json.dumps(det.state(), sort_keys=True)


@pytest.mark.parametrize("setting", sorted(SETTINGS))
@pytest.mark.parametrize("shape", sorted(shapes()))
def test_score_many_matches_point_by_point(setting: str, shape: str) -> None:
    settings = SETTINGS[setting]
    ts, values = shapes()[shape]
    expected, reference = one_by_one(settings, ts, values)
    rng = random.Random(len(shape) * 7 + len(setting))
    det = SeriesDetector(settings)
    got: list[Score] = []
    i = 0
    while i < len(ts):  # chunks of every size, up to a whole batch
        size = rng.choice((1, 3, 15, 16, 50, 400, 1000))
        got.extend(det.score_many(ts[i:i + size], values[i:i + size]))
        i += size
    assert len(got) == len(expected)
    for k, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert a == b, f"point {k}: {a} != {b}"
    assert state(det) == state(reference)
    if setting == "defaults" and shape == "spikes_and_shift":
        assert sum(s.anomalous for s in expected) >= 3  # the flag paths were taken


def test_a_restored_series_scores_a_batch_like_the_uninterrupted_one() -> None:
    ts, values = shapes()["spikes_and_shift"]
    settings = DetectorSettings()
    expected, _ = one_by_one(settings, ts, values)
    first = SeriesDetector(settings)
    first.score_many(ts[:1700], values[:1700])
    second = SeriesDetector.from_state(json.loads(json.dumps(first.state())), settings)
    assert second.score_many(ts[1700:], values[1700:]) == expected[1700:]


def records(n_keys: int, points: int, seed: int = 3) -> list[tuple[str, int, float]]:
    rng = random.Random(seed)
    rows = []
    for j in range(points):
        for k in range(n_keys):
            v = 10.0 + k + rng.gauss(0.0, 0.5)
            if rng.random() < 0.004:
                v += 9.0
            rows.append((f"K{k}", 1_700_000_000_000 + j * 60_000, v))
    return rows


def run_stage(rows: list[tuple[str, int, float]], batch_size: int
              ) -> tuple[list[tuple], list[tuple]]:
    stage = AnomalyDetector("f", detect_flow(DetectSpec(metric="value")))
    out, issues = [], []
    for start in range(0, len(rows), batch_size):
        recs = [Rec(k, ts, {"series": k, "value": v}, "s", 0, i)
                for i, (k, ts, v) in enumerate(rows[start:start + batch_size])]
        batch = Batch("f", None, None, recs[-1].ts, records=recs)
        stage.run(batch, recs[-1].ts)
        out.extend((r.key, r.ts, r.anomaly, r.anomalous, tuple(r.flags),
                    json.dumps(r.data, sort_keys=True)) for r in recs)
        issues.extend((d.fingerprint, d.title, json.dumps(d.detail, sort_keys=True))
                      for d in batch.issues)
    return out, issues


def test_stage_batches_give_the_records_and_issues_of_one_record_batches() -> None:
    rows = records(4, 1500)
    alone, alone_issues = run_stage(rows, 1)
    batched, batched_issues = run_stage(rows, 1000)
    assert batched == alone
    assert batched_issues == alone_issues
    assert len(alone_issues) >= 4  # episodes of several series, raised in time order


def test_evaluate_batches_score_late_and_duplicate_rows_as_rows_alone() -> None:
    """stage_scorer batches rows whose timestamps never go back; a late or duplicate row
    is scored as it comes, as it was with one row per batch."""
    from flowdeck.pipeline.evaluation import EVAL_FLOW, stage_scorer

    ts, values = shapes()["late_duplicate_nan"]
    ts = list(ts)
    ts[1500], ts[1501] = ts[1501], ts[1500]  # one swapped pair
    stage = AnomalyDetector(EVAL_FLOW, detect_flow(None))
    alone = []
    for i, (t, v) in enumerate(zip(ts, values, strict=True)):
        rec = Rec("f.csv", round(t * 1000), {"series": "f.csv", "value": v}, "csv", 0, i)
        stage.run(Batch(EVAL_FLOW, None, None, rec.ts, records=[rec]), rec.ts)
        alone.append((rec.anomaly, rec.anomalous))
    got = stage_scorer()("f.csv", ts, values)
    assert got == alone
    assert sum(flag for _, flag in alone) >= 2


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_columns_of_many_series_score_as_each_series_alone(setting: str) -> None:
    """Detector.score_columns (the stage's one call per metric and batch): the shapes
    interleaved in batches of every size give each point the score, flagged Score and
    state it gets scored alone; one series on the Python path among kernel ones too."""
    settings = SETTINGS[setting]
    every = shapes()
    names = sorted(every)
    expected = {name: one_by_one(settings, *every[name]) for name in names}
    det = Detector(settings)
    det._series[("flat", "m")] = SeriesDetector(settings, kernel=False)
    rng = random.Random(len(setting))
    n = len(every[names[0]][0])
    i = 0
    while i < n:
        size = rng.choice((1, 4, 50, 333))
        order = names[:]
        rng.shuffle(order)  # the series in a new order every batch
        index, ts, values, where = [], [], [], []
        for k in range(i, min(n, i + size)):
            for p, name in enumerate(order):
                index.append(p)
                ts.append(every[name][0][k])
                values.append(every[name][1][k])
                where.append((name, k))
        low, full = det.score_columns([(name, "m") for name in order], index, ts, values)
        got = dict.fromkeys(range(len(index)), 0.0)
        got.update(low)
        for j, sc in full.items():
            assert sc.score >= 0.5
            name, k = where[j]
            assert sc == expected[name][0][k]
            got[j] = sc.score
        for j, score in got.items():
            name, k = where[j]
            want = expected[name][0][k].score
            assert repr(score) == repr(want), f"{name} point {k}"
        i += size
    for name in names:
        assert state(det.series_detector((name, "m"))) == state(expected[name][1])
