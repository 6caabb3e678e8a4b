"""The compiled kernel (pipeline/_kernel.pyx) gives, float for float, the scores and states
of the Python reference in pipeline/detectors.py: the same streams through both paths,
every Score field compared by its repr (so -0.0, nan and int-versus-float would show), the
states compared as JSON text, and a state made by one path continued by the other."""

from __future__ import annotations

import json
import math
import os
import pickle
import random
from pathlib import Path

import pytest

from flowdeck.pipeline import detectors
from flowdeck.pipeline.detectors import (
    METHODS,
    Detector,
    DetectorSettings,
    Score,
    SeriesDetector,
)
from flowdeck.pipeline.evaluation import read_series
from tests.unit.test_detect_batching import SETTINGS, shapes

if os.environ.get("FLOWDECK_PURE_PYTHON", "") not in ("", "0"):
    pytest.skip("FLOWDECK_PURE_PYTHON is set: there is no kernel to compare with",
                allow_module_level=True)

CORPUS = Path(__file__).resolve().parents[2] / "sample_data" / "detection"
T0 = 1_767_225_600.0

ALL_SETTINGS = {
    **SETTINGS,
    "found_season": DetectorSettings(methods=METHODS),
    "raw_all": DetectorSettings(methods=METHODS, calibrate=False, season=1800.0),
    "tiny": DetectorSettings(window=2, calibration_window=10, warmup=2, refractory=0,
                             min_history=0),
    "int_settings": DetectorSettings(methods=METHODS, season=3600, ewma_alpha=1,
                                     cusum_k=0, cusum_h=30),
    "no_warmup": DetectorSettings(methods=METHODS, warmup=0, min_history=0),
}


def fields(sc: Score) -> tuple[str, ...]:
    return tuple(repr(getattr(sc, f)) for f in Score.__slots__)  # type: ignore[attr-defined]


def state(det: SeriesDetector) -> str:
    return json.dumps(det.state())  # key order too: the stored state is this text


def assert_same(got: list[Score], expected: list[Score]) -> None:
    assert len(got) == len(expected)
    for i, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert fields(a) == fields(b), f"point {i}"


def streams() -> dict[str, tuple[list[float], list[float]]]:
    """The batching test's shapes, a long daily and weekly series (the period is found),
    points with big gaps, and series from the labelled corpus."""
    out = dict(shapes())
    rng = random.Random(5)
    n = 6 * 1440
    ts = [T0 + 60.0 * i for i in range(n)]
    daily = [10.0 + 4.0 * math.sin(2 * math.pi * i / 1440) + rng.gauss(0, 0.4) for i in range(n)]
    for i in range(2000, n, 601):
        daily[i] += rng.choice((-1, 1)) * 6.0
    for i in range(7000, 7400):
        daily[i] = daily[6999]  # stuck
    out["daily_found"] = (ts, daily)
    gap_ts = []
    t = T0
    for i in range(4000):
        t += rng.choice((1.0, 30.0, 600.0, 7200.0)) if i % 97 else 3 * 86400.0
        gap_ts.append(t)
    out["gaps"] = (gap_ts, [rng.gauss(3.0, 1.0) + (20.0 if i % 433 == 0 else 0.0)
                            for i in range(4000)])
    for name in ("seasonal/weekly_break.csv", "seasonal/daily_flatline.csv",
                 "hard/counts_shift.csv", "hard/huge_scale.csv", "hard/tiny_scale.csv",
                 "hard/irregular_gaps_daily.csv", "single/flatline.csv"):
        series = read_series(CORPUS / name)
        out[name] = (series.timestamps, series.values)
    return out


STREAMS = streams()


def test_the_kernel_is_built_and_in_use() -> None:
    assert detectors.KERNEL, "pip install -e . builds pipeline/_kernel.pyx (needs a C compiler)"
    assert SeriesDetector()._k is not None
    assert SeriesDetector(kernel=False)._k is None


@pytest.mark.parametrize("setting", sorted(ALL_SETTINGS))
@pytest.mark.parametrize("stream", sorted(STREAMS))
def test_kernel_scores_and_state_match_the_python_path(setting: str, stream: str) -> None:
    settings = ALL_SETTINGS[setting]
    ts, values = STREAMS[stream]
    ref, fast = SeriesDetector(settings, kernel=False), SeriesDetector(settings, kernel=True)
    expected = [ref.score(t, v) for t, v in zip(ts, values, strict=True)]
    got = [fast.score(t, v) for t, v in zip(ts, values, strict=True)]
    assert_same(got, expected)
    assert state(fast) == state(ref)
    assert fast.snapshot() == ref.snapshot()


@pytest.mark.parametrize("setting", ["defaults", "found_season", "raw_all", "tiny"])
@pytest.mark.parametrize("stream", ["late_duplicate_nan", "daily_found", "gaps",
                                    "seasonal/weekly_break.csv"])
def test_batches_and_round_trips_across_paths(setting: str, stream: str) -> None:
    """score_many and score_batch in chunks of every size; every few chunks the state is
    exported through JSON and the series continues on the other path."""
    settings = ALL_SETTINGS[setting]
    ts, values = STREAMS[stream]
    ref = SeriesDetector(settings, kernel=False)
    expected = [ref.score(t, v) for t, v in zip(ts, values, strict=True)]
    rng = random.Random(len(stream) + len(setting))
    det = SeriesDetector(settings, kernel=True)
    got: list[Score] = []
    compact: list[float] = []
    i = chunk = 0
    while i < len(ts):
        size = rng.choice((1, 2, 7, 50, 333, 1000))
        part_ts, part_values = ts[i:i + size], values[i:i + size]
        if chunk % 2:
            got.extend(det.score_many(part_ts, part_values))
        else:
            scores, full = det.score_batch(part_ts, part_values)
            compact.extend(scores)
            for j, s in enumerate(scores):
                sc = expected[i + j]
                assert repr(s) == repr(sc.score)
                if s >= 0.5:
                    assert fields(full[j]) == fields(sc)
                else:
                    assert j not in full
            got.extend(expected[i:i + len(part_ts)])
        i += size
        chunk += 1
        if chunk % 3 == 0:
            other = det._k is None
            det = SeriesDetector.from_state(json.loads(json.dumps(det.state())), settings,
                                            kernel=other)
    assert_same(got, expected)
    assert state(det) == state(ref)


def test_evaluate_update_and_accepts_match() -> None:
    settings = DetectorSettings(methods=METHODS)
    ts, values = STREAMS["daily_found"]
    ref, fast = SeriesDetector(settings, kernel=False), SeriesDetector(settings, kernel=True)
    for i, (t, v) in enumerate(zip(ts, values, strict=True)):
        probe = v + (9.0 if i % 5 == 0 else 0.0)
        assert fields(fast.evaluate(t, probe)) == fields(ref.evaluate(t, probe))
        assert fast.accepts(t, v) == ref.accepts(t, v)
        if i % 3:
            fast.update(t, v)
            ref.update(t, v)
        else:
            assert fields(fast.score(t, v)) == fields(ref.score(t, v))
        assert fast.accepts(t, v) == ref.accepts(t, v)  # False now: not newer
    assert state(fast) == state(ref)


def test_int_inputs_keep_their_type_in_scores_and_state() -> None:
    """The reference keeps a timestamp as given and reports the observed value as given."""
    ref, fast = SeriesDetector(kernel=False), SeriesDetector(kernel=True)
    rng = random.Random(9)
    for i in range(1500):
        v = rng.choice((3, 4, 5, 40)) if i % 50 else 400
        assert fields(fast.score(1_700_000_000 + 60 * i, v)) == fields(
            ref.score(1_700_000_000 + 60 * i, v))
    assert state(fast) == state(ref)
    assert isinstance(fast.state()["last_ts"], int)


def test_private_attributes_read_the_same_on_the_kernel_path() -> None:
    ts, values = STREAMS["daily_found"]
    ref, fast = SeriesDetector(kernel=False), SeriesDetector(kernel=True)
    ref.score_many(ts[:3000], values[:3000])
    fast.score_many(ts[:3000], values[:3000])
    assert fast.count == ref.count == 3000
    assert (fast.last_ts, fast.last_value) == (ref.last_ts, ref.last_value)
    assert fast._values.sorted_values == ref._values.sorted_values
    assert list(fast._tails) == list(ref._tails)


def test_a_timestamp_beyond_the_kernels_range_moves_the_series_to_python() -> None:
    """A seasonal bin index that would not fit 64 bits: the series goes on in Python,
    with the same state, and scores as the reference does."""
    settings = DetectorSettings(methods=METHODS, season=600.0)
    rng = random.Random(4)
    ts = [T0 + 10.0 * i for i in range(800)] + [1e25 + 1e10 * i for i in range(400)]
    values = [rng.gauss(0.0, 1.0) for _ in ts]
    ref = SeriesDetector(settings, kernel=False)
    expected = [ref.score(t, v) for t, v in zip(ts, values, strict=True)]
    fast = SeriesDetector(settings, kernel=True)
    got = fast.score_many(ts[:600], values[:600])
    assert fast._k is not None
    got += fast.score_many(ts[600:], values[600:])
    assert fast._k is None
    assert_same(got, expected)
    assert state(fast) == state(ref)


def test_the_kernels_exact_sum_is_math_fsum() -> None:
    rng = random.Random(12)
    cases = [[], [0.0], [-0.0], [1e-16, 1.0, 1e16], [1e308, 1e308, -1e308],
             [0.1] * 10, [1.0, 1e100, 1.0, -1e100], [5e-324, -5e-324, 2.5]]
    for _ in range(300):
        n = rng.randrange(1, 60)
        scale = 10.0 ** rng.randrange(-300, 300)
        cases.append([rng.choice((1, -1)) * rng.random() * scale * 10.0 ** rng.randrange(-20, 20)
                      for _ in range(n)])
    for values in cases:
        try:
            expected = repr(math.fsum(values))
        except (OverflowError, ValueError) as exc:
            with pytest.raises(type(exc)):
                detectors._kernel.fsum_of(values)
            continue
        assert repr(detectors._kernel.fsum_of(values)) == expected, values


def test_a_pickled_series_continues_like_the_uninterrupted_one() -> None:
    """Bytewax snapshots its operators' state by pickling: a kernel series pickles as its
    state() and restores on the kernel (or, in a process without it, the Python path)."""
    ts, values = STREAMS["spikes_and_shift"]
    ref = SeriesDetector(kernel=False)
    expected = [ref.score(t, v) for t, v in zip(ts, values, strict=True)]
    det = SeriesDetector(kernel=True)
    got = det.score_many(ts[:1500], values[:1500])
    det = pickle.loads(pickle.dumps(det))
    assert det._k is not None
    got += det.score_many(ts[1500:], values[1500:])
    assert_same(got, expected)
    assert state(det) == state(ref)
    pure = pickle.loads(pickle.dumps(ref))
    assert pure._k is None and state(pure) == state(ref)


def test_a_timestamp_beyond_the_kernels_range_in_a_batch_of_columns() -> None:
    """Detector.score_columns: the series whose point the kernel cannot take goes on in
    Python from that point, the other series in the batch stay in the kernel; every
    score as the reference's."""
    settings = DetectorSettings(methods=METHODS, season=600.0)
    rng = random.Random(5)
    far = [T0 + 10.0 * i for i in range(800)] + [1e25 + 1e10 * i for i in range(400)]
    near = [T0 + 10.0 * i for i in range(1200)]
    series = {"far": (far, [rng.gauss(0.0, 1.0) for _ in far]),
              "near": (near, [rng.gauss(0.0, 1.0) for _ in near])}
    expected = {}
    for name, (ts, values) in series.items():
        ref = SeriesDetector(settings, kernel=False)
        expected[name] = ([ref.score(t, v) for t, v in zip(ts, values, strict=True)], ref)
    det = Detector(settings)
    for start in range(0, 1200, 300):
        index, ts, values, where = [], [], [], []
        for k in range(start, start + 300):
            for p, name in enumerate(("far", "near")):
                index.append(p)
                ts.append(series[name][0][k])
                values.append(series[name][1][k])
                where.append((name, k))
        low, full = det.score_columns([("far",), ("near",)], index, ts, values)
        got = dict.fromkeys(range(len(index)), 0.0)
        got.update(low)
        got.update({j: sc.score for j, sc in full.items()})
        for j, score in got.items():
            name, k = where[j]
            assert repr(score) == repr(expected[name][0][k].score), f"{name} point {k}"
    assert det.series_detector(("far",))._k is None
    assert det.series_detector(("near",))._k is not None
    for name in series:
        assert state(det.series_detector((name,))) == state(expected[name][1])


def python_tail_rows(size: int, min_excess: float, values: list[float], probes: list[float],
                     ps: list[float], every: int) -> list[tuple]:
    tail = detectors._Tail(size, min_excess)
    rows = []
    for step, v in enumerate(values, 1):
        tail.add(v)
        if len(tail) < 2 or (step % every and step != len(values)):
            continue
        got_p = [tail.p(x) for x in probes]
        got_t = [tail.threshold(p) for p in ps]
        rows.append((list(tail.window.sorted_values), got_p, got_t, list(tail.fit or [])))
    return rows


def tail_streams() -> dict[str, list[float]]:
    """Statistics for a long tail: ties (few distinct values, 0.0 and -0.0 among them),
    runs of one value (evictions of equal values), a spread of magnitudes, inf, and a
    steady drift (the sorted values keep moving to one end)."""
    rng = random.Random(21)
    ties = [rng.choice((0.0, -0.0, 0.5, 1.0, 1.0, 2.5, 3.0)) for _ in range(4000)]
    runs: list[float] = []
    while len(runs) < 4000:
        runs.extend([rng.choice((0.0, -0.0, 1.0, 7.0, rng.random()))] * rng.randrange(1, 400))
    spread = [abs(rng.gauss(0.0, 1.0)) * 10.0 ** rng.randrange(-3, 4) for _ in range(4000)]
    spread[1500:1510] = [math.inf] * 10
    drift = [i * 0.01 + rng.random() for i in range(3000)] + [
        30.0 - i * 0.01 - rng.random() for i in range(3000)]
    return {"ties": ties, "runs": runs[:4000], "spread": spread, "drift": drift}


@pytest.mark.parametrize("size", [256, 300, 1000])
@pytest.mark.parametrize("name", sorted(tail_streams()))
def test_a_blocked_tail_reads_as_the_python_tail(size: int, name: str) -> None:
    """The kernel keeps a long tail's sorted values in blocks: after every statistic the
    sorted values (their bits: -0.0 against 0.0 where equal values tie), the tail
    probabilities of values in and between them, the thresholds and the fit are those of
    the Python _Tail, and of the kernel's flat window."""
    values = tail_streams()[name]
    probes = [-0.0, 0.0, 0.5, 1.0, 2.5, 3.0, 7.0, 1e-3, 12.5, 1e3, 29.0, math.inf,
              *values[::397]]
    ps = [0.9, 0.5, 0.1, 0.03, 0.02, 0.01, 1e-3, 1e-6]
    every = 1 if size == 300 else 7
    expected = python_tail_rows(size, 1.0, values, probes, ps, every)
    blocked, got = detectors._kernel.tail_run(size, 1.0, values, probes, ps, True, every)
    assert blocked
    flat_blocked, flat = detectors._kernel.tail_run(size, 1.0, values, probes, ps, False, every)
    assert not flat_blocked
    assert len(got) == len(flat) == len(expected)
    for i, (a, b, c) in enumerate(zip(got, flat, expected, strict=True)):
        assert repr(a) == repr(c), f"row {i}"
        assert repr(b) == repr(c), f"row {i}"
