"""Tests for flowdeck.pipeline.detectors (streaming, causal anomaly detection)."""

from __future__ import annotations

import json
import math
import random
import statistics

import pytest

from flowdeck.pipeline.detectors import (
    DAY,
    MAD_TO_SIGMA,
    METHODS,
    WEEK,
    Detector,
    DetectorSettings,
    RollingWindow,
    Score,
    SeriesDetector,
    calibrated_score,
    mad_sorted,
    median_sorted,
    squash,
)

T0 = 1_767_225_600.0  # 2026-01-01T00:00Z
SERIES = ("orders", "latency_ms")
DEFAULTS = DetectorSettings()
RAW_METHODS = ("robust_z", "ewma", "rate")
RAW = DetectorSettings(methods=RAW_METHODS, window=60, calibrate=False)
Z_METHODS = ("robust_z", "ewma", "rate", "seasonal")  # raw statistics on the z_threshold scale
"""The uncalibrated mode: raw statistics squashed against ``z_threshold``."""


def noisy(seed: int, n: int, *, amplitude: float = 0.0, period: float = 1000.0) -> list[float]:
    """A level-50 series with unit gaussian noise, optionally riding a slow sine."""
    rng = random.Random(seed)
    return [
        50.0 + amplitude * math.sin(2 * math.pi * i / period) + rng.gauss(0.0, 1.0)
        for i in range(n)
    ]


def scored(detector: Detector, values: list[float], series: tuple = SERIES) -> list[Score]:
    return detector.score_many((series, T0 + i, v) for i, v in enumerate(values))


def flagged(scores: list[Score]) -> set[int]:
    return {i for i, s in enumerate(scores) if s.anomalous}


def spiky_series(seed: int) -> tuple[list[float], set[int], int]:
    """Noisy sine (2000 points) with about 20 injected spikes and a +15 level shift.

    Returns the values, the spike indices and the index where the level shift starts.
    """
    rng = random.Random(seed)
    values = noisy(seed, 2000, amplitude=10.0)
    shift = 1200
    spikes = {i for i in range(150, len(values), 90) if not shift - 30 <= i < shift + 90}
    for i in spikes:
        values[i] += rng.choice((-1.0, 1.0)) * rng.uniform(9.0, 14.0)
    for i in range(shift, len(values)):
        values[i] += 15.0
    return values, spikes, shift


# --------------------------------------------------------------------------- detection quality


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_robust_z_precision_and_recall_on_injected_anomalies(seed: int) -> None:
    settings = DetectorSettings(methods=("robust_z",), window=60, calibrate=False)
    values, spikes, shift = spiky_series(seed)
    flags = flagged(scored(Detector(settings), values))

    # The level shift is one event: it must be flagged at its onset, and flags while the
    # window still straddles both levels are detections of that same event.
    shift_region = set(range(shift, shift + settings.window))
    assert shift in flags
    outside = flags - shift_region
    true_positives = len(outside & spikes) + 1
    precision = true_positives / (len(outside) + 1)
    recall = true_positives / (len(spikes) + 1)
    assert precision >= 0.8, (precision, sorted(outside - spikes))
    assert recall >= 0.8, (recall, sorted(spikes - flags))


def test_default_methods_flag_spikes_and_level_shift_at_onset() -> None:
    values, spikes, shift = spiky_series(7)
    scores = scored(Detector(RAW), values)
    assert spikes <= flagged(scores)
    assert scores[shift].anomalous
    assert not scores[shift - 1].anomalous


@pytest.mark.parametrize(
    "methods", [("robust_z",), ("ewma",), ("rate",), RAW_METHODS, Z_METHODS]
)
@pytest.mark.parametrize("amplitude", [0.0, 10.0])
def test_clean_noisy_series_has_few_false_positives(
    methods: tuple[str, ...], amplitude: float
) -> None:
    values = noisy(11, 5000, amplitude=amplitude)
    scores = scored(Detector(DetectorSettings(methods=methods, calibrate=False)), values)
    assert len(flagged(scores)) / len(values) < 0.01


def test_adapts_after_a_level_shift() -> None:
    settings = RAW
    values = noisy(5, 600)
    shift = 300
    for i in range(shift, len(values)):
        values[i] += 20.0
    scores = scored(Detector(settings), values)
    assert scores[shift].anomalous
    assert scores[shift].score > 0.9
    # One window after the step the new level is normal again.
    settled = scores[shift + settings.window :]
    assert sum(s.anomalous for s in settled) <= 1
    assert max(s.details["robust_z"] for s in settled) < settings.z_threshold


def test_flat_series_jump_is_flagged_and_flat_is_not() -> None:
    for methods in (("robust_z",), ("ewma",), ("rate",)):
        detector = Detector(DetectorSettings(methods=methods, calibrate=False))
        flat = scored(detector, [7.25] * 40)
        assert all(s.score == 0.0 and not s.anomalous for s in flat), methods
        jump = detector.score(SERIES, T0 + 40, 7.5)
        assert jump.anomalous and jump.score > 0.99, methods
        assert jump.method == methods[0]


def test_flat_series_at_zero_with_one_jump() -> None:
    detector = Detector(DetectorSettings(methods=("robust_z",), calibrate=False))
    scored(detector, [0.0] * 30)
    assert detector.score(SERIES, T0 + 30, 0.001).anomalous
    # The jump is now in the window: more flat values are still perfectly normal.
    assert detector.score(SERIES, T0 + 31, 0.0).score == 0.0


def test_mostly_constant_window_falls_back_to_mean_absolute_deviation() -> None:
    # More than half the window is one value (MAD = 0), but blips of this size are known.
    detector = Detector(DetectorSettings(methods=("robust_z",), window=20, calibrate=False))
    values = [10.0] * 14 + [11.0, 9.0, 11.0, 9.0, 11.0, 9.0]
    scored(detector, values)
    assert not detector.score(SERIES, T0 + 20, 11.0).anomalous
    assert detector.score(SERIES, T0 + 21, 30.0).anomalous


# --------------------------------------------------------------------------- scores


def test_squash_is_half_at_threshold_and_monotonic() -> None:
    assert squash(0.0) == 0.0
    assert squash(1.0) == 0.5
    assert squash(2.0) == 0.75
    assert squash(float("nan")) == 0.0
    assert squash(float("inf")) == 1.0
    grid = [squash(q / 10) for q in range(100)]
    assert grid == sorted(grid)


def test_score_is_exactly_half_at_the_robust_threshold() -> None:
    # Window median 0, MAD 1 -> sigma 1.4826; a threshold chosen so that x sits exactly on it.
    x = 6.0
    settings = DetectorSettings(methods=("robust_z",), z_threshold=x / MAD_TO_SIGMA, min_history=5,
                                calibrate=False)
    detector = Detector(settings)
    scored(detector, [-1.0, -1.0, 0.0, 1.0, 1.0])
    result = detector.score(SERIES, T0 + 5, x)
    assert result.details["robust_z"] == settings.z_threshold
    assert result.score == 0.5
    assert result.anomalous


def test_score_is_exactly_half_at_a_fixed_rate_threshold() -> None:
    settings = DetectorSettings(methods=("rate",), rate_threshold=2.0, min_history=3,
                                calibrate=False)
    detector = Detector(settings)
    scored(detector, [0.0, 1.0, 2.0])  # one per second: ratio 0.5
    at = detector.score(SERIES, T0 + 3, 4.0)  # 2 per second
    assert at.details == {"rate": 1.0}
    assert at.score == 0.5 and at.anomalous
    below = detector.score(SERIES, T0 + 5, 7.0)  # 1.5 per second over 2 seconds
    assert below.details == {"rate": 0.75}
    assert not below.anomalous


def test_scores_stay_in_unit_interval_and_match_details() -> None:
    rng = random.Random(3)
    settings = DetectorSettings(methods=Z_METHODS, season=50.0, calibrate=False)
    detector = Detector(settings)
    for i in range(3000):
        value = rng.gauss(0.0, 1.0) * rng.choice((1.0, 1.0, 1.0, 1e6, 1e-6))
        result = detector.score(SERIES, T0 + i, value)
        assert 0.0 <= result.score <= 1.0
        assert result.anomalous == (result.score >= 0.5)
        if result.details:
            expected = max(squash(z / settings.z_threshold) for z in result.details.values())
            assert result.score == expected
            assert result.method in result.details
            best = squash(result.details[result.method] / settings.z_threshold)
            assert best == result.score


# --------------------------------------------------------------------------- causality


def test_score_uses_only_earlier_values() -> None:
    values = noisy(21, 100)
    values[80] = 70.0
    detector = Detector(DetectorSettings(methods=("robust_z",), window=60, calibrate=False))
    scores = scored(detector, values)
    previous = values[80 - 60 : 80]
    center = statistics.median(previous)
    mad = statistics.median(abs(v - center) for v in previous)
    expected = abs(values[80] - center) / (MAD_TO_SIGMA * mad)
    assert scores[80].details["robust_z"] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("calibrate", [True, False])
@pytest.mark.parametrize("season", [400.0, None])
def test_future_points_do_not_change_past_scores(calibrate: bool, season: float | None) -> None:
    values, _, _ = spiky_series(4)
    settings = DetectorSettings(methods=METHODS, season=season, calibrate=calibrate, warmup=100)
    full = scored(Detector(settings), values)
    assert any(s.anomalous for s in full)
    for k in (9, 10, 150, 1200, 1999):
        # A detector that never sees anything after point k gives point k the same score.
        assert scored(Detector(settings), values[: k + 1])[k] == full[k]
        changed = values[: k + 1] + [v * 3 + 100 for v in values[k + 1 :]]
        assert scored(Detector(settings), changed)[k] == full[k]


def test_scoring_a_point_twice_does_not_change_any_score() -> None:
    values, _, _ = spiky_series(8)
    values = values[:800]
    once = scored(Detector(), values)
    detector = Detector()
    twice = []
    for i, value in enumerate(values):
        twice.append(detector.score(SERIES, T0 + i, value))
        detector.score(SERIES, T0 + i, value)  # duplicate: late, so not added
    assert twice == once


def test_other_series_do_not_change_a_score() -> None:
    values = noisy(9, 400)
    alone = scored(Detector(), values)
    rng = random.Random(99)
    detector = Detector()
    mixed = []
    for i, value in enumerate(values):
        # Another series, already far in the future and wild, interleaved with this one.
        detector.score(("orders", "count"), T0 + 10_000 + i, rng.uniform(-1e6, 1e6))
        mixed.append(detector.score(SERIES, T0 + i, value))
    assert mixed == alone
    assert detector.series_count() == 2


def test_series_are_independent() -> None:
    a, b = noisy(1, 300), noisy(2, 300, amplitude=5.0)
    expected_a = scored(Detector(), a)
    expected_b = scored(Detector(), b, ("b", "m"))
    detector = Detector()
    items = []
    for i in range(300):
        items.append((SERIES, T0 + i, a[i]))
        items.append((("b", "m"), T0 + i, b[i]))
    results = detector.score_many(items)
    assert results[0::2] == expected_a
    assert results[1::2] == expected_b
    assert detector.snapshot(SERIES) != detector.snapshot(("b", "m"))
    assert detector.series_count() == 2


# --------------------------------------------------------------------------- late and bad data


def test_out_of_order_values_are_scored_but_not_added() -> None:
    values = noisy(12, 80)
    reference = Detector(RAW)
    scored(reference, values[:60])
    detector = Detector(RAW)
    scored(detector, values[:60])
    before = detector.snapshot(SERIES)

    late = detector.score(SERIES, T0 + 30, 500.0)  # older than the last point
    assert late.anomalous
    assert "rate" not in late.details  # no meaningful rate for a late point
    same_ts = detector.score(SERIES, T0 + 59, 500.0)  # not newer than the last point
    assert same_ts.anomalous
    assert detector.snapshot(SERIES) == before

    rest = [(SERIES, T0 + i, values[i]) for i in range(60, 80)]
    assert detector.score_many(rest) == reference.score_many(rest)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_values_are_ignored(bad: float) -> None:
    values = noisy(13, 50)
    reference = Detector()
    expected = scored(reference, values)
    detector = Detector()
    results = []
    for i, value in enumerate(values):
        assert detector.score(SERIES, T0 + i - 0.5, bad) == Score(0.0, False, None, {})
        results.append(detector.score(SERIES, T0 + i, value))
    assert results == expected
    assert detector.snapshot(SERIES)["n"] == len(values)
    assert detector.score(SERIES, float("nan"), 1.0) == Score(0.0, False, None, {})


@pytest.mark.parametrize("min_history", [0, 1, 10, 25])
def test_min_history_is_respected(min_history: int) -> None:
    detector = Detector(DetectorSettings(min_history=min_history, calibrate=False))
    values = [5.0] * 5 + [500.0] * 40  # anything after the first points is anomalous
    scores = scored(detector, values)
    first_scored = max(min_history, 1)
    for s in scores[:first_scored]:
        assert s == Score(0.0, False, None, {})
    assert scores[first_scored].details
    assert scores[first_scored].method is not None
    if first_scored >= 5:
        return
    assert scores[5].anomalous


# --------------------------------------------------------------------------- per-method behaviour


def test_learned_rate_accepts_a_steady_ramp_and_flags_a_step() -> None:
    detector = Detector(DetectorSettings(methods=("rate",), calibrate=False))
    rng = random.Random(2)
    ramp = [3.0 * i + rng.gauss(0.0, 0.1) for i in range(400)]
    scores = scored(detector, ramp)
    assert len(flagged(scores)) / len(ramp) < 0.01
    step = detector.score(SERIES, T0 + 400, ramp[-1] + 3.0 + 10.0)
    assert step.anomalous and step.method == "rate"


def test_rate_uses_seconds_between_points() -> None:
    settings = DetectorSettings(methods=("rate",), rate_threshold=1.0, min_history=2,
                                calibrate=False)
    detector = Detector(settings)
    detector.score(SERIES, T0, 0.0)
    detector.score(SERIES, T0 + 10, 5.0)
    assert detector.score(SERIES, T0 + 20, 14.0).details["rate"] == pytest.approx(0.9)
    assert detector.score(SERIES, T0 + 21, 16.0).details["rate"] == pytest.approx(2.0)


def sine_season(seed: int, seasons: int, season: float, *, noise: float = 0.5) -> list[float]:
    """One point per second: a sine of amplitude 10 around 50 with period ``season``."""
    rng = random.Random(seed)
    n = int(seasons * season)
    return [50.0 + 10.0 * math.sin(2 * math.pi * i / season) + rng.gauss(0, noise)
            for i in range(n)]


def daily_wave(seed: int, days: int, step: float = 300.0, *, gaps: bool = False,
               jitter: float = 0.0, weekly: float = 0.0) -> tuple[list[float], list[float]]:
    """(timestamps, values): a daily sine (amplitude 10) around 50 with gaussian noise.

    ``gaps`` drops a tenth of the points and a few hours at a time; ``jitter`` moves each
    timestamp by up to that share of ``step``; ``weekly`` lowers two days a week by it.
    """
    rng = random.Random(seed)
    ts, values = [], []
    t = T0
    while t < T0 + days * DAY:
        skip = gaps and (rng.random() < 0.1 or (t // 3600) % 97 < 3)
        if not skip:
            day_phase = (t % DAY) / DAY
            weekend = weekly if int((t - T0) // DAY) % 7 in (5, 6) else 0.0
            ts.append(t + rng.uniform(-jitter, jitter) * step)
            values.append(50.0 + 10.0 * math.sin(2 * math.pi * day_phase) - weekend
                          + rng.gauss(0.0, 1.0))
        t += step
    return ts, values


def test_seasonal_learns_a_pattern_that_robust_z_flags() -> None:
    season = 240.0
    values = sine_season(6, 8, season)
    raw = {"season": season, "window": 60, "calibrate": False}
    robust = scored(Detector(DetectorSettings(methods=("robust_z",), **raw)), values)
    seasonal = scored(Detector(DetectorSettings(methods=("seasonal",), **raw)), values)
    later = range(int(3 * season), len(values))
    # The steep parts of the rhythm look like shifts to a rolling median ...
    assert sum(robust[i].anomalous for i in later) / len(later) > 0.01
    # ... but are expected for their phase once previous seasons are known.
    assert sum(seasonal[i].anomalous for i in later) / len(later) < 0.01


def test_seasonal_is_inactive_until_two_previous_seasons() -> None:
    season = 240.0
    values = sine_season(6, 5, season)
    scores = scored(Detector(DetectorSettings(methods=("seasonal",), season=season)), values)
    assert all("seasonal" not in s.details for s in scores[: int(2 * season)])
    assert all("seasonal" in s.details for s in scores[int(3 * season):])


def test_seasonal_flags_a_value_unusual_for_its_phase() -> None:
    season = 240.0
    values = sine_season(6, 6, season)
    settings = DetectorSettings(methods=("seasonal", "robust_z"), season=season,
                                calibrate=False)
    detector = Detector(settings)
    scored(detector, values)
    i = len(values) + int(season / 4)  # the crest of the sine
    for j in range(len(values), i):
        detector.score(SERIES, T0 + j, 50.0 + 10.0 * math.sin(2 * math.pi * j / season))
    trough = detector.score(SERIES, T0 + i, 40.0)  # normal in the season, wrong here
    assert trough.anomalous and trough.method == "seasonal"
    assert trough.expected == pytest.approx(60.0, abs=1.0)


@pytest.mark.parametrize("gaps, jitter", [(False, 0.0), (True, 0.4)])
def test_seasonal_finds_a_daily_period(gaps: bool, jitter: float) -> None:
    ts, values = daily_wave(3, 6, gaps=gaps, jitter=jitter)
    detector = Detector(DetectorSettings(methods=("seasonal",)))
    scores = detector.score_many((SERIES, t, v) for t, v in zip(ts, values, strict=True))
    assert detector.snapshot(SERIES)["period"] == DAY
    assert "seasonal" in scores[-1].details
    assert not any(s.anomalous for s in scores)


def test_seasonal_finds_a_weekly_period() -> None:
    ts, values = daily_wave(4, 28, 3600.0, weekly=15.0)
    detector = Detector(DetectorSettings(methods=("seasonal",)))
    detector.score_many((SERIES, t, v) for t, v in zip(ts, values, strict=True))
    assert detector.snapshot(SERIES)["period"] == WEEK


def test_seasonal_finds_no_period_in_noise() -> None:
    detector = Detector(DetectorSettings(methods=("seasonal",)))
    values = noisy(5, 6 * 288)
    scores = detector.score_many((SERIES, T0 + 300.0 * i, v) for i, v in enumerate(values))
    assert detector.snapshot(SERIES)["period"] is None
    assert all(s.details == {} for s in scores)


def test_ewma_variance_is_bias_corrected_during_warm_up() -> None:
    detector = Detector(DetectorSettings(methods=("ewma",), min_history=10, calibrate=False))
    scores = scored(detector, noisy(30, 200))
    assert not flagged(scores)
    snap = detector.snapshot(SERIES)
    assert 0.5 < snap["ewma_std"] < 2.0
    assert 48.0 < snap["ewma_mean"] < 52.0


# --------------------------------------------------------------------------- state and memory


def test_snapshot_reports_state_for_display() -> None:
    detector = Detector(RAW)
    assert detector.snapshot(SERIES) is None
    values = noisy(14, 100)
    scored(detector, values)
    snap = detector.snapshot(SERIES)
    window = values[-RAW.window :]
    assert snap["n"] == 100
    assert snap["last_ts"] == T0 + 99
    assert snap["median"] == statistics.median(window)
    center = statistics.median(window)
    assert snap["mad"] == pytest.approx(statistics.median(abs(v - center) for v in window))
    assert snap["ewma_mean"] is not None and snap["ewma_std"] > 0


@pytest.mark.parametrize("season", [600.0, None])
def test_memory_is_bounded_per_series(season: float | None) -> None:
    settings = DetectorSettings(methods=METHODS, window=30, season=season,
                                calibration_window=200, warmup=100)
    state = SeriesDetector(settings)
    rng = random.Random(15)
    for i in range(20_000):
        state.score(T0 + 150.0 * i, rng.gauss(0.0, 1.0) + 5 * math.sin(i / 100))
    assert len(state._values) == 30
    assert len(state._rates) == 30
    seasonal = state._seasonal
    assert len(seasonal.bins) == seasonal.bins.maxlen
    assert seasonal.bins.maxlen <= 3 * 168
    assert len(seasonal.residuals) <= 30
    assert all(len(tail) <= 200 for tail in state._tails.values())
    assert len(json.dumps(state.state())) < 60_000


def test_rolling_window_matches_statistics() -> None:
    rng = random.Random(16)
    window = RollingWindow(7)
    kept: list[float] = []
    for _ in range(200):
        value = float(rng.randint(0, 9))  # plenty of ties
        window.add(value)
        kept = (kept + [value])[-7:]
        center = statistics.median(kept)
        assert window.median() == center
        assert window.mad() == statistics.median(abs(v - center) for v in kept)
        assert window.sorted_values == sorted(kept)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 10, 11])
def test_mad_sorted_matches_statistics(n: int) -> None:
    rng = random.Random(n)
    for _ in range(50):
        values = sorted(rng.uniform(-5, 5) for _ in range(n))
        center = median_sorted(values)
        assert center == statistics.median(values)
        expected = statistics.median(abs(v - center) for v in values)
        assert mad_sorted(values, center) == pytest.approx(expected)


def test_mad_sorted_is_exact_with_ties_and_any_center() -> None:
    # The same float as the median of every |v - center|, for windows full of repeated
    # values and centers below, inside and above them.
    rng = random.Random(7)
    for trial in range(3000):
        n = rng.randint(1, 61)
        if trial % 3 == 0:
            values = sorted(float(rng.randint(0, 3)) for _ in range(n))
        elif trial % 3 == 1:
            values = sorted(rng.choice([1e9, -1e-9, 0.1, 0.2, 0.3]) for _ in range(n))
        else:
            values = sorted(rng.gauss(0, 1) for _ in range(n))
        for center in (median_sorted(values), values[0] - 1.0, values[-1] + 1.0,
                       rng.gauss(0, 1)):
            expected = statistics.median(sorted(abs(v - center) for v in values))
            assert mad_sorted(values, center) == expected


@pytest.mark.parametrize(
    "kwargs",
    [
        {"methods": ()},
        {"methods": ("robust_z", "bogus")},
        {"methods": ("ewma", "ewma")},
        {"window": 1},
        {"z_threshold": 0.0},
        {"ewma_alpha": 0.0},
        {"ewma_alpha": 1.5},
        {"rate_threshold": -1.0},
        {"season": 0.0},
        {"season": float("inf")},
        {"min_history": -1},
        {"flag_probability": 0.0},
        {"flag_probability": 1.0},
        {"calibration_window": 5},
        {"warmup": -1},
        {"warmup": 2000},
        {"refractory": -1},
        {"cusum_h": 0.0},
        {"cusum_k": -1.0},
    ],
)
def test_invalid_settings_are_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        DetectorSettings(**kwargs)


def test_methods_given_as_a_list_become_a_tuple() -> None:
    assert DetectorSettings(methods=["ewma"]).methods == ("ewma",)


# --------------------------------------------------------------------------- calibrated scores


def with_anomaly(kind: str, seed: int = 2, n: int = 3000, at: int = 2000) -> list[float]:
    """Unit gaussian noise around 50 with one anomaly of ``kind`` starting at ``at``.

    The default seed's noise raises no false flag of its own (the flag rate on clean
    noise is about 1.3 per 10,000 points, see the test below), so a test on it can check
    every flag.
    """
    values = noisy(seed, n)
    if kind == "spike":
        values[at] += 12.0
    elif kind == "step":
        for i in range(at, n):
            values[i] += 8.0
    elif kind == "small_shift":
        for i in range(at, n):
            values[i] += 2.0
    elif kind == "flatline":
        for i in range(at, at + 60):
            values[i] = values[at - 1]
    return values


def test_calibrated_score_is_half_at_the_flag_probability() -> None:
    assert calibrated_score(1e-4, 1e-4) == 0.5
    assert calibrated_score(1e-8, 1e-4) == 1.0
    assert calibrated_score(1e-12, 1e-4) == 1.0
    assert calibrated_score(1.0, 1e-4) == 0.0
    assert calibrated_score(0.0, 1e-4) == 1.0
    grid = [calibrated_score(10 ** -(q / 10), 1e-3) for q in range(100)]
    assert grid == sorted(grid)


@pytest.mark.parametrize(
    "method, kind, within",
    [("robust_z", "spike", 0), ("ewma", "spike", 0), ("rate", "step", 0),
     ("level_shift", "small_shift", 60), ("flatline", "flatline", 15)],
)
def test_each_method_catches_its_own_kind_and_is_quiet_on_noise(
    method: str, kind: str, within: int
) -> None:
    settings = DetectorSettings(methods=(method,))
    clean = [scored(Detector(settings), noisy(seed, 3000)) for seed in range(1, 5)]
    assert sum(len(flagged(scores)) for scores in clean) <= 4  # ~1.2 expected
    scores = scored(Detector(settings), with_anomaly(kind))
    hits = sorted(i for i in flagged(scores) if 2000 <= i <= 2000 + within)
    assert hits, sorted(flagged(scores))
    assert scores[hits[0]].method == method


def test_seasonal_catches_a_value_wrong_for_its_hour() -> None:
    ts, values = daily_wave(7, 8)
    i = next(j for j, t in enumerate(ts) if t >= T0 + 7 * DAY + DAY / 4)  # the crest
    values[i] -= 20.0  # the trough's value: normal for the day, not at this hour
    settings = DetectorSettings(methods=("seasonal",))
    scores = Detector(settings).score_many(
        (SERIES, t, v) for t, v in zip(ts, values, strict=True))
    assert i in flagged(scores)
    assert len(flagged(scores)) <= 2  # ~0.25 false flags expected in 2,300 points
    assert scores[i].expected == pytest.approx(60.0, abs=1.5)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e6])
def test_defaults_are_quiet_on_clean_series_of_any_scale(scale: float) -> None:
    rng = random.Random(8)
    series = {
        "gauss": noisy(3, 5000),
        "heavy": [50 + rng.gauss(0, 1) / max(abs(rng.gauss(0, 1)), 0.05) ** 0.5
                  for _ in range(5000)],
        "walk": [sum(rng.gauss(0, 1) for _ in range(4)) for _ in range(5000)],
        "counts": [float(sum(rng.random() < 0.05 for _ in range(40))) for _ in range(5000)],
    }
    walk = 0.0
    for i, step in enumerate(series["walk"]):
        walk += step
        series["walk"][i] = 100 + walk
    flags = {name: len(flagged(scored(Detector(), [v * scale for v in values])))
             for name, values in series.items()}
    # Episodes on clean data are rare by construction: about 1 in 10,000 points (the flag
    # probability; docs/detection.md has the measured rate), so ~2 expected here.
    assert sum(flags.values()) <= 6, flags


def test_flag_rate_on_clean_noise_matches_the_flag_probability() -> None:
    points = flags = 0
    for seed in range(1, 11):
        scores = scored(Detector(), noisy(seed, 5000))
        flags += len(flagged(scores))
        points += len(scores)
    assert flags / points < 3 * DEFAULTS.flag_probability


def test_flags_do_not_depend_on_scale_or_offset() -> None:
    values = with_anomaly("spike")
    base = scored(Detector(), values)
    moved = scored(Detector(), [1e4 * v - 3e5 for v in values])
    assert flagged(base) == flagged(moved) == {2000}
    for a, b in zip(base, moved, strict=True):
        assert a.score == pytest.approx(b.score, abs=1e-6)


def test_a_level_shift_is_one_episode_flagged_once() -> None:
    values = with_anomaly("step", n=4000)
    scores = scored(Detector(), values)
    assert flagged(scores) == {2000}
    assert scores[2000].episode == 1
    assert {s.episode for s in scores[2000:2030]} == {1}
    assert scores[-1].episode == 0  # the episode ended, the new level is normal
    assert not any(s.score >= 0.5 for s in scores[2200:])


def test_refractory_decides_when_a_new_episode_starts() -> None:
    values = noisy(2, 3000)
    for i in (2000, 2030, 2500):
        values[i] += 15.0
    scores = scored(Detector(DetectorSettings(refractory=50)), values)
    assert flagged(scores) == {2000, 2500}
    assert [scores[i].episode for i in (2000, 2030, 2500)] == [1, 1, 2]
    scores = scored(Detector(DetectorSettings(refractory=0)), values)
    assert flagged(scores) == {2000, 2030, 2500}


def test_warmup_raises_nothing() -> None:
    settings = DetectorSettings(warmup=200)
    values = noisy(4, 600)
    for i in range(20, 210, 37):
        values[i] += 40.0
    for i in range(450, 600):
        values[i] += 200.0
    scores = scored(Detector(settings), values)
    assert flagged(scores) == {450}
    assert all(s.score == 0.0 for s in scores[: settings.min_history + settings.warmup])


def test_explanation_of_a_flagged_point() -> None:
    values = with_anomaly("spike")
    result = scored(Detector(), values)[2000]
    assert result.anomalous and result.method == "robust_z"
    assert result.observed == values[2000]
    assert result.low < result.expected < result.high < result.observed
    assert result.expected == pytest.approx(50.0, abs=0.5)
    assert result.probability <= DEFAULTS.flag_probability
    reason = result.reason()
    assert reason["detector"] == "robust_z" and reason["episode"] == 1
    assert reason["observed"] == values[2000]
    assert Score(0.0, False, None, {}).reason() is None


def test_a_late_point_is_scored_but_not_flagged() -> None:
    detector = Detector()
    scored(detector, noisy(5, 1000))
    late = detector.score(SERIES, T0 + 10, 500.0)
    assert late.score == 1.0 and not late.anomalous and late.episode == 0
    assert detector.score(SERIES, T0 + 1000, 500.0).anomalous


def test_a_flagged_point_merged_again_keeps_its_verdict() -> None:
    """A late source merging into a stored onset re-scores it at the same timestamp: the
    onset stays the onset (flag, score, reason, episode), with the value it has now; a
    merge that brings the value back inside the expected range withdraws the verdict."""
    detector = Detector()
    values = noisy(5, 1200)
    values[1100] = 80.0
    scores = scored(detector, values)
    onset = scores[1100]
    assert onset.anomalous and onset.episode == 1
    again = detector.score(SERIES, T0 + 1100, 79.0)  # a second source's reading merged in
    assert again.anomalous and again.again and again.episode == onset.episode
    assert again.score == onset.score and again.method == onset.method
    assert (again.low, again.high, again.expected) == (onset.low, onset.high, onset.expected)
    assert again.observed == 79.0
    inside = detector.score(SERIES, T0 + 1100, 50.0)
    assert not inside.anomalous and not inside.again and inside.score < 0.5
    # The memory of flagged points survives a restart.
    restored = Detector()
    restored.restore(SERIES, json.loads(json.dumps(detector.state(SERIES))))
    assert restored.score(SERIES, T0 + 1100, 79.0) == again


@pytest.mark.parametrize("season", [None, 3600.0])
def test_restart_from_state_scores_the_same(season: float | None) -> None:
    settings = DetectorSettings(methods=METHODS, season=season, warmup=100)
    ts, values = daily_wave(9, 8, gaps=True, jitter=0.3)
    for i in range(1500, len(values), 400):
        values[i] += 25.0
    items = [(SERIES, t, v) for t, v in zip(ts, values, strict=True)]
    full = Detector(settings).score_many(items)
    assert sum(s.anomalous for s in full) >= 3
    for cut in (5, 700, 1500, 1800):
        first = Detector(settings)
        first.score_many(items[:cut])
        saved = json.loads(json.dumps(first.state(SERIES)))
        second = Detector(settings)
        second.restore(SERIES, saved)
        assert second.score_many(items[cut:]) == full[cut:]


def test_restore_refuses_a_state_of_other_settings() -> None:
    detector = Detector()
    scored(detector, noisy(1, 50))
    state = detector.state(SERIES)
    with pytest.raises(ValueError):
        Detector(DetectorSettings(window=30)).restore(SERIES, state)
    with pytest.raises(ValueError):
        Detector().restore(SERIES, {**state, "version": 99})
    assert Detector().state(SERIES) is None


@pytest.mark.parametrize("warmup", [0, 1])
def test_a_warmup_of_zero_or_one_scores_like_two(warmup: int) -> None:
    # The settings allow 0..calibration_window; a tail's fit needs two statistics, so
    # below two the detector waits for two (it divided by zero on the first point).
    rnd = random.Random(3)
    values = [rnd.gauss(0.0, 1.0) for _ in range(400)]
    values[300] += 40.0
    ts = [T0 + 10.0 * i for i in range(len(values))]
    low = SeriesDetector(DetectorSettings(warmup=warmup))
    two = SeriesDetector(DetectorSettings(warmup=2))
    got = [low.score(t, v) for t, v in zip(ts, values, strict=True)]
    want = [two.score(t, v) for t, v in zip(ts, values, strict=True)]
    assert [(s.score, s.anomalous) for s in got] == [(s.score, s.anomalous) for s in want]
    assert got[300].anomalous
