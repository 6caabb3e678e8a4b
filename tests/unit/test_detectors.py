"""Tests for flowdeck.pipeline.detectors (streaming, causal anomaly detection)."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from flowdeck.pipeline.detectors import (
    MAD_TO_SIGMA,
    METHODS,
    Detector,
    DetectorSettings,
    RollingWindow,
    Score,
    SeriesDetector,
    mad_sorted,
    median_sorted,
    squash,
)

T0 = 1_767_225_600.0  # 2026-01-01T00:00Z
SERIES = ("orders", "latency_ms")
DEFAULTS = DetectorSettings()


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
    settings = DetectorSettings(methods=("robust_z",))
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
    scores = scored(Detector(), values)
    assert spikes <= flagged(scores)
    assert scores[shift].anomalous
    assert not scores[shift - 1].anomalous


@pytest.mark.parametrize(
    "methods", [("robust_z",), ("ewma",), ("rate",), DEFAULTS.methods, METHODS]
)
@pytest.mark.parametrize("amplitude", [0.0, 10.0])
def test_clean_noisy_series_has_few_false_positives(
    methods: tuple[str, ...], amplitude: float
) -> None:
    values = noisy(11, 5000, amplitude=amplitude)
    scores = scored(Detector(DetectorSettings(methods=methods)), values)
    assert len(flagged(scores)) / len(values) < 0.01


def test_adapts_after_a_level_shift() -> None:
    settings = DetectorSettings()
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
        detector = Detector(DetectorSettings(methods=methods))
        flat = scored(detector, [7.25] * 40)
        assert all(s.score == 0.0 and not s.anomalous for s in flat), methods
        jump = detector.score(SERIES, T0 + 40, 7.5)
        assert jump.anomalous and jump.score > 0.99, methods
        assert jump.method == methods[0]


def test_flat_series_at_zero_with_one_jump() -> None:
    detector = Detector(DetectorSettings(methods=("robust_z",)))
    scored(detector, [0.0] * 30)
    assert detector.score(SERIES, T0 + 30, 0.001).anomalous
    # The jump is now in the window: more flat values are still perfectly normal.
    assert detector.score(SERIES, T0 + 31, 0.0).score == 0.0


def test_mostly_constant_window_falls_back_to_mean_absolute_deviation() -> None:
    # More than half the window is one value (MAD = 0), but blips of this size are known.
    detector = Detector(DetectorSettings(methods=("robust_z",), window=20))
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
    settings = DetectorSettings(methods=("robust_z",), z_threshold=x / MAD_TO_SIGMA, min_history=5)
    detector = Detector(settings)
    scored(detector, [-1.0, -1.0, 0.0, 1.0, 1.0])
    result = detector.score(SERIES, T0 + 5, x)
    assert result.details["robust_z"] == settings.z_threshold
    assert result.score == 0.5
    assert result.anomalous


def test_score_is_exactly_half_at_a_fixed_rate_threshold() -> None:
    settings = DetectorSettings(methods=("rate",), rate_threshold=2.0, min_history=3)
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
    settings = DetectorSettings(methods=METHODS, season=50.0)
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
    detector = Detector(DetectorSettings(methods=("robust_z",)))
    scores = scored(detector, values)
    previous = values[80 - DEFAULTS.window : 80]
    center = statistics.median(previous)
    mad = statistics.median(abs(v - center) for v in previous)
    expected = abs(values[80] - center) / (MAD_TO_SIGMA * mad)
    assert scores[80].details["robust_z"] == pytest.approx(expected, rel=1e-12)


def test_future_points_do_not_change_past_scores() -> None:
    values, _, _ = spiky_series(4)
    settings = DetectorSettings(methods=METHODS, season=400.0)
    full = scored(Detector(settings), values)
    for k in (9, 10, 150, 1200, 1999):
        # A detector that never sees anything after point k gives point k the same score.
        assert scored(Detector(settings), values[: k + 1])[k] == full[k]


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
    reference = Detector()
    scored(reference, values[:60])
    detector = Detector()
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
    detector = Detector(DetectorSettings(min_history=min_history))
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
    detector = Detector(DetectorSettings(methods=("rate",)))
    rng = random.Random(2)
    ramp = [3.0 * i + rng.gauss(0.0, 0.1) for i in range(400)]
    scores = scored(detector, ramp)
    assert len(flagged(scores)) / len(ramp) < 0.01
    step = detector.score(SERIES, T0 + 400, ramp[-1] + 3.0 + 10.0)
    assert step.anomalous and step.method == "rate"


def test_rate_uses_seconds_between_points() -> None:
    settings = DetectorSettings(methods=("rate",), rate_threshold=1.0, min_history=2)
    detector = Detector(settings)
    detector.score(SERIES, T0, 0.0)
    detector.score(SERIES, T0 + 10, 5.0)
    assert detector.score(SERIES, T0 + 20, 14.0).details["rate"] == pytest.approx(0.9)
    assert detector.score(SERIES, T0 + 21, 16.0).details["rate"] == pytest.approx(2.0)


def square_wave(seed: int, seasons: int, season: float) -> list[float]:
    """One point per second: 0 in the first half of every season, 10 in the second half."""
    rng = random.Random(seed)
    n = int(seasons * season)
    return [(10.0 if (i % season) >= season / 2 else 0.0) + rng.gauss(0, 0.5) for i in range(n)]


def test_seasonal_learns_a_daily_pattern_that_robust_z_flags() -> None:
    season = 240.0
    values = square_wave(6, 6, season)
    robust = scored(Detector(DetectorSettings(methods=("robust_z",), season=season)), values)
    seasonal = scored(Detector(DetectorSettings(methods=("seasonal",), season=season)), values)
    later = range(int(2 * season), len(values))
    steps = [i for i in later if i % season in (0, season / 2)]
    # Every step of the daily pattern looks like a level shift to robust_z ...
    assert all(robust[i].anomalous for i in steps)
    # ... but is expected for its phase once two seasons are known.
    assert not any(seasonal[i].anomalous for i in steps)
    assert sum(seasonal[i].anomalous for i in later) / len(later) < 0.01


def test_seasonal_is_inactive_until_two_previous_seasons() -> None:
    season = 240.0
    assert T0 % season == 0  # point i falls in season i // 240, phase i % 240
    values = square_wave(6, 4, season)
    scores = scored(Detector(DetectorSettings(methods=("seasonal",), season=season)), values)
    third_season = int(2 * season)
    assert all(s == Score(0.0, False, None, {}) for s in scores[:third_season])
    assert all("seasonal" in s.details for s in scores[third_season:])


def test_seasonal_flags_a_value_unusual_for_its_phase() -> None:
    season = 240.0
    values = square_wave(6, 5, season)
    detector = Detector(DetectorSettings(methods=("seasonal",), season=season))
    scored(detector, values)
    ts = T0 + len(values)
    phase = (ts % season) / season
    usual = 10.0 if phase >= 0.5 else 0.0
    unusual = 10.0 - usual  # normal elsewhere in the season, wrong for this phase
    assert detector.score(SERIES, ts, unusual).anomalous
    assert not detector.score(SERIES, ts + 1, usual).anomalous


def test_ewma_variance_is_bias_corrected_during_warm_up() -> None:
    detector = Detector(DetectorSettings(methods=("ewma",), min_history=10))
    scores = scored(detector, noisy(30, 200))
    assert not flagged(scores)
    snap = detector.snapshot(SERIES)
    assert 0.5 < snap["ewma_std"] < 2.0
    assert 48.0 < snap["ewma_mean"] < 52.0


# --------------------------------------------------------------------------- state and memory


def test_snapshot_reports_state_for_display() -> None:
    detector = Detector()
    assert detector.snapshot(SERIES) is None
    values = noisy(14, 100)
    scored(detector, values)
    snap = detector.snapshot(SERIES)
    window = values[-DEFAULTS.window :]
    assert snap["n"] == 100
    assert snap["last_ts"] == T0 + 99
    assert snap["median"] == statistics.median(window)
    center = statistics.median(window)
    assert snap["mad"] == pytest.approx(statistics.median(abs(v - center) for v in window))
    assert snap["ewma_mean"] is not None and snap["ewma_std"] > 0


def test_memory_is_bounded_per_series() -> None:
    settings = DetectorSettings(methods=METHODS, window=30, season=600.0)
    state = SeriesDetector(settings)
    rng = random.Random(15)
    for i in range(20_000):
        state.score(T0 + i, rng.gauss(0.0, 1.0))
    assert len(state._values) == 30
    assert len(state._rates) == 30
    assert len(state._buckets) == 24
    for bucket in state._buckets.values():
        assert len(bucket.history) <= 30
        assert len(bucket.sample) <= bucket.cap


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
        {"min_history": -1},
    ],
)
def test_invalid_settings_are_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        DetectorSettings(**kwargs)


def test_methods_given_as_a_list_become_a_tuple() -> None:
    assert DetectorSettings(methods=["ewma"]).methods == ("ewma",)
