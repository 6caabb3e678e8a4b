"""Streaming, causal anomaly detection per series.

A *series* is one ``(key, metric)`` pair of a flow. Every series owns a small, bounded
:class:`SeriesDetector`; the :class:`Detector` routes points to them by series.

Guarantees
----------
* **Causal** - a point is scored against the state built from the points that came
  before it, and only afterwards added to that state.
* **Late data cannot corrupt the state** - a point whose timestamp is not newer than the
  last accepted point of its series is scored against the current state but not added.
* **Non-finite input is ignored** - a nan/inf value (or timestamp) scores
  ``Score(0.0, False, None, {})`` and is not added.
* **Bounded memory** - each series keeps only window-sized structures (see each method).

Methods
-------
``robust_z``
    ``|x - median| / sigma`` over the last ``window`` values, where ``sigma`` is
    ``1.4826 * MAD`` (the MAD scaled to a normal standard deviation). When the MAD is 0
    (more than half the window is one value) ``sigma`` falls back to
    ``1.2533 * mean absolute deviation``, and when that is 0 too (a perfectly flat window)
    to a tiny epsilon relative to the scale of the values: a flat series staying flat
    scores 0, a flat series with one jump scores very high.
``ewma``
    Exponentially weighted mean and variance (``ewma_alpha``, variance bias-corrected for
    the warm-up); ``z = |x - mean| / std`` with ``std`` floored at the same epsilon.
``rate``
    Change per second relative to the previous accepted point. With a fixed
    ``rate_threshold`` the detail is the ratio ``|rate| / rate_threshold``; with ``None``
    it is the robust z of the rate against the series' own last ``window`` rates (so a
    steady ramp is normal, a sudden step is not). Note that a spike has two edges: the
    rate method also flags the point right after a spike, when the series drops back.
    Late points have no meaningful rate and are not scored by this method.
``seasonal``
    Robust z against values seen at the same phase of previous seasons. The phase of
    ``ts`` within ``season`` is bucketed into :data:`SEASON_BUCKETS` buckets; each bucket
    keeps the last ``window`` values of its previous seasons (each season contributes an
    evenly thinned sample of at most ``max(2, window // 4)`` values, so several seasons
    fit). A bucket stays inactive (no detail, score 0) until it holds data from at least
    two previous seasons.

Scores
------
Each method yields a z (or, for a fixed rate threshold, a ratio ``r``); it is normalised
to ``q = z / z_threshold`` (or ``q = r``) and squashed to ``score = 1 - 2 ** -q``: 0 for a
perfect fit, exactly 0.5 at the threshold, approaching 1 as the deviation grows. The
point's score is the highest method score; ``anomalous`` is ``score >= 0.5``.

Cost per point (``w`` = ``window``): median O(1); insertion/eviction O(log w) search plus an
O(w) list shift; MAD O(log w) (selection in the two sorted halves around the median). A
``score`` call with all four methods costs a few tens of microseconds for ``w = 60``.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right, insort
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any

METHODS = ("robust_z", "ewma", "rate", "seasonal")

MAD_TO_SIGMA = 1.4826
"""Scales a MAD to the standard deviation of a normal distribution."""

MEAN_AD_TO_SIGMA = 1.2533
"""Scales a mean absolute deviation to the standard deviation of a normal (sqrt(pi/2))."""

SEASON_BUCKETS = 24
"""Number of phase buckets per season for the ``seasonal`` method."""

RELATIVE_EPSILON = 1e-9
"""Smallest spread considered, relative to the magnitude of the values (see :func:`epsilon`)."""

ABSOLUTE_EPSILON = 1e-12
"""Smallest spread considered at all, for series that sit at (or very near) zero."""


def epsilon(center: float) -> float:
    """Smallest meaningful spread for values around ``center``.

    Far above float rounding noise (1e-16 relative) but far below any real variation,
    so it only decides the outcome for series that are perfectly flat.
    """
    return max(abs(center) * RELATIVE_EPSILON, ABSOLUTE_EPSILON)


def squash(q: float) -> float:
    """Map a normalised deviation ``q`` (1 = at the threshold) to a score in [0, 1].

    ``1 - 2 ** -q``: 0 at ``q = 0``, exactly 0.5 at ``q = 1``, 0.75 at ``q = 2``, tending
    to 1. A nan (only possible on float overflow) counts as no evidence.
    """
    if not q > 0.0:
        return 0.0
    return 1.0 - 2.0**-q


@dataclass(frozen=True)
class DetectorSettings:
    """Configuration shared by every series of a :class:`Detector`."""

    methods: tuple[str, ...] = ("robust_z", "ewma", "rate")
    window: int = 60  # values kept per series for robust_z (and learned rates, seasonal buckets)
    z_threshold: float = 4.0  # robust z (and ewma z) above this = anomalous
    ewma_alpha: float = 0.1
    rate_threshold: float | None = None  # max |change per second|; None = learn it
    season: float = 86400.0  # seconds, for "seasonal"
    min_history: int = 10  # no score until a series has this many points

    def __post_init__(self) -> None:
        methods = tuple(self.methods)
        object.__setattr__(self, "methods", methods)
        if not methods:
            raise ValueError("methods must name at least one method")
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown methods {unknown}; choose from {METHODS}")
        if len(set(methods)) != len(methods):
            raise ValueError(f"duplicate methods in {methods}")
        if self.window < 2:
            raise ValueError("window must be at least 2")
        if not self.z_threshold > 0:
            raise ValueError("z_threshold must be positive")
        if not 0 < self.ewma_alpha <= 1:
            raise ValueError("ewma_alpha must be in (0, 1]")
        if self.rate_threshold is not None and not self.rate_threshold > 0:
            raise ValueError("rate_threshold must be positive or None")
        if not (self.season > 0 and math.isfinite(self.season)):
            raise ValueError("season must be a positive number of seconds")
        if self.min_history < 0:
            raise ValueError("min_history must not be negative")


@dataclass(slots=True)
class Score:
    """The verdict on one point."""

    score: float  # 0..1, higher = more anomalous; 0.5 exactly at the threshold
    anomalous: bool  # score >= 0.5
    method: str | None  # the method that gave the highest score (None: no method active)
    details: dict[str, float]  # per-method z (or ratio for a fixed rate threshold)


def _quiet() -> Score:
    return Score(0.0, False, None, {})


# --------------------------------------------------------------------------- robust stats


def median_sorted(values: list[float]) -> float:
    """Median of an already sorted, non-empty list. O(1)."""
    n = len(values)
    mid = n // 2
    if n % 2:
        return values[mid]
    return (values[mid - 1] + values[mid]) / 2.0


def mad_sorted(values: list[float], center: float) -> float:
    """Median absolute deviation from ``center`` of a sorted, non-empty list. O(log n).

    The deviations of the values below ``center`` grow walking left from it, those above
    grow walking right: two sorted runs, ``lo[i] = center - values[k - 1 - i]`` and
    ``hi[j] = values[k + j] - center``. The middle deviation of the two is found by a
    binary search on how many of the smallest come from ``lo`` (the k-th smallest of two
    sorted lists), not by merging them: robust_z does this for every point, and a Python
    merge loop over half the window cost about three times as much. The deviations are
    the same subtractions a merge would do, so the result is the same float.
    """
    n = len(values)
    k = bisect_left(values, center)  # values[:k] < center <= values[k:]
    n_lo, n_hi = k, n - k
    take = n // 2 + 1  # the smallest deviations up to and including the middle one
    # The smallest a (taken from lo, the rest from hi) such that hi's last taken is no
    # bigger than lo's first left out; it is monotone in a, so bisect it.
    a, top = max(0, take - n_hi), min(take, n_lo)
    while a < top:
        mid = (a + top) // 2
        b = take - mid
        if b > 0 and values[k + b - 1] - center > center - values[k - 1 - mid]:
            a = mid + 1
        else:
            top = mid
    b = take - a
    # The largest two of the `take` smallest: the middle deviation and the one before it.
    lo1 = center - values[k - a] if a > 0 else None  # lo[a - 1]
    hi1 = values[k + b - 1] - center if b > 0 else None  # hi[b - 1]
    if hi1 is None or (lo1 is not None and lo1 >= hi1):
        current = lo1
        lo2 = center - values[k - a + 1] if a > 1 else None  # lo[a - 2]
        previous = hi1 if lo2 is None or (hi1 is not None and hi1 > lo2) else lo2
    else:
        current = hi1
        hi2 = values[k + b - 2] - center if b > 1 else None  # hi[b - 2]
        previous = lo1 if hi2 is None or (lo1 is not None and lo1 > hi2) else hi2
    if n % 2:
        return current
    return (previous + current) / 2.0


def sigma_sorted(values: list[float], center: float) -> float:
    """Robust standard-deviation estimate around ``center`` of a sorted, non-empty list.

    ``1.4826 * MAD``; if the MAD is 0, ``1.2533 * mean absolute deviation``; if that is
    0 too, :func:`epsilon` of the center. Never below :func:`epsilon`.
    """
    sigma = MAD_TO_SIGMA * mad_sorted(values, center)
    if sigma == 0.0:
        # Sum of |v - center| from the sorted halves: two C-level slice sums, not a
        # Python loop over the window (a flat series lands here on every point).
        lo, hi = bisect_left(values, center), bisect_right(values, center)
        total = (math.fsum(values[hi:]) - center * (len(values) - hi)
                 + center * lo - math.fsum(values[:lo]))
        sigma = MEAN_AD_TO_SIGMA * max(total, 0.0) / len(values)
    return max(sigma, epsilon(center))


class RollingWindow:
    """The last ``maxlen`` values, kept both in arrival order and sorted.

    The deque knows which value to evict; the sorted list gives the median in O(1) and
    the MAD in O(n). Adding costs an O(log n) search plus an O(n) list shift.
    """

    __slots__ = ("_fifo", "_sorted")

    def __init__(self, maxlen: int) -> None:
        self._fifo: deque[float] = deque(maxlen=maxlen)
        self._sorted: list[float] = []

    def __len__(self) -> int:
        return len(self._sorted)

    @property
    def sorted_values(self) -> list[float]:
        """The window's values in ascending order (do not mutate)."""
        return self._sorted

    def add(self, value: float) -> None:
        fifo = self._fifo
        if len(fifo) == fifo.maxlen:
            oldest = fifo[0]
            del self._sorted[bisect_left(self._sorted, oldest)]
        fifo.append(value)
        insort(self._sorted, value)

    def median(self) -> float:
        return median_sorted(self._sorted)

    def mad(self) -> float:
        return mad_sorted(self._sorted, self.median())

    def robust_z(self, value: float) -> float:
        """``|value - median| / sigma`` (see :func:`sigma_sorted`); the window must not be empty."""
        center = median_sorted(self._sorted)
        return abs(value - center) / sigma_sorted(self._sorted, center)


# --------------------------------------------------------------------------- method states


class _Ewma:
    """Exponentially weighted mean and variance, the variance bias-corrected for warm-up."""

    __slots__ = ("alpha", "mean", "var", "_decay", "count")

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self.mean = 0.0
        self.var = 0.0
        self._decay = 1.0  # (1 - alpha) ** updates; the variance's missing weight is this
        self.count = 0

    def add(self, value: float) -> None:
        if self.count == 0:
            self.mean = value
        else:
            diff = value - self.mean
            increment = self.alpha * diff
            self.mean += increment
            self.var = (1.0 - self.alpha) * (self.var + diff * increment)
            self._decay *= 1.0 - self.alpha
        self.count += 1

    def std(self) -> float:
        weight = 1.0 - self._decay
        return math.sqrt(self.var / weight) if weight > 0.0 else 0.0

    def z(self, value: float) -> float:
        return abs(value - self.mean) / max(self.std(), epsilon(self.mean))


class _SeasonBucket:
    """One phase bucket of the seasonal method.

    ``history`` holds values of previous seasons; the current season's values go to an
    evenly thinned ``sample`` (keep every ``stride``-th value, and when the sample
    overflows drop every other kept value and double the stride) that moves into
    ``history`` once a later season reaches this bucket.
    """

    __slots__ = ("history", "seasons", "season", "sample", "stride", "seen", "cap")

    def __init__(self, window: int) -> None:
        self.history = RollingWindow(window)
        self.seasons = 0  # previous seasons merged into history
        self.season: int | None = None  # season index the sample belongs to
        self.sample: list[float] = []
        self.stride = 1
        self.seen = 0
        self.cap = max(2, window // 4)

    def add(self, season: int, value: float) -> None:
        if self.season is not None and season > self.season:
            self._close_season()
        if self.season is None or season > self.season:
            self.season = season
        if self.seen % self.stride == 0:
            self.sample.append(value)
            if len(self.sample) > self.cap:
                self.sample = self.sample[::2]
                self.stride *= 2
        self.seen += 1

    def _close_season(self) -> None:
        for value in self.sample:
            self.history.add(value)
        self.seasons += 1
        self.sample = []
        self.stride = 1
        self.seen = 0

    def z(self, season: int, value: float) -> float | None:
        """Robust z against previous seasons, or None while fewer than two are known.

        Does not mutate: a sample of an earlier season that has not been merged yet is
        combined with ``history`` on the fly.
        """
        pending = bool(self.sample) and self.season is not None and self.season < season
        if self.seasons + pending < 2:
            return None
        if not pending:
            return self.history.robust_z(value)
        values = sorted(self.history.sorted_values + self.sample)
        center = median_sorted(values)
        return abs(value - center) / sigma_sorted(values, center)


# --------------------------------------------------------------------------- detectors


class SeriesDetector:
    """The state of one series: only the structures its enabled methods need."""

    def __init__(self, settings: DetectorSettings = DetectorSettings()) -> None:
        self.settings = settings
        self.count = 0  # points added to the state
        self.last_ts: float | None = None
        self.last_value: float | None = None
        methods = settings.methods
        self._values = RollingWindow(settings.window) if "robust_z" in methods else None
        self._ewma = _Ewma(settings.ewma_alpha) if "ewma" in methods else None
        self._learn_rates = "rate" in methods and settings.rate_threshold is None
        self._rates = RollingWindow(settings.window) if self._learn_rates else None
        self._buckets: dict[int, _SeasonBucket] | None = {} if "seasonal" in methods else None
        evaluators: dict[str, Callable[[float, float], tuple[float, float] | None]] = {
            "robust_z": self._robust_z,
            "ewma": self._ewma_z,
            "rate": self._rate,
            "seasonal": self._seasonal,
        }
        self._evaluators = [(m, evaluators[m]) for m in methods]

    # ---- public

    def score(self, ts: float, value: float) -> Score:
        """Score the point, then add it to the state if it is finite and in order."""
        result = self.evaluate(ts, value)
        if self.accepts(ts, value):
            self.update(ts, value)
        return result

    def evaluate(self, ts: float, value: float) -> Score:
        """Score the point against the current state, without changing the state."""
        if not (math.isfinite(value) and math.isfinite(ts)):
            return _quiet()
        if self.count < self.settings.min_history or self.count == 0:
            return _quiet()
        details: dict[str, float] = {}
        best_score = 0.0
        best_method: str | None = None
        for method, evaluator in self._evaluators:
            outcome = evaluator(ts, value)
            if outcome is None:
                continue
            raw, normalised = outcome
            details[method] = raw
            method_score = squash(normalised)
            if best_method is None or method_score > best_score:
                best_score, best_method = method_score, method
        return Score(best_score, best_score >= 0.5, best_method, details)

    def accepts(self, ts: float, value: float) -> bool:
        """Whether :meth:`update` would take the point: finite, and newer than the last one."""
        if not (math.isfinite(value) and math.isfinite(ts)):
            return False
        return self.last_ts is None or ts > self.last_ts

    def update(self, ts: float, value: float) -> None:
        """Add an accepted point to the state (see :meth:`accepts`); others are ignored."""
        if not self.accepts(ts, value):
            return
        value = float(value)
        if self._values is not None:
            self._values.add(value)
        if self._ewma is not None:
            self._ewma.add(value)
        if self._rates is not None and self.last_ts is not None:
            self._rates.add((value - self.last_value) / (ts - self.last_ts))
        if self._buckets is not None:
            season, bucket = self._phase(ts)
            state = self._buckets.get(bucket)
            if state is None:
                state = self._buckets[bucket] = _SeasonBucket(self.settings.window)
            state.add(season, value)
        self.count += 1
        self.last_ts = ts
        self.last_value = value

    def snapshot(self) -> dict[str, Any]:
        """A small dict of the state for display; a statistic is None when not tracked yet."""
        snap: dict[str, Any] = {
            "n": self.count,
            "last_ts": self.last_ts,
            "last_value": self.last_value,
            "median": None,
            "mad": None,
            "ewma_mean": None,
            "ewma_std": None,
        }
        if self._values is not None and len(self._values):
            snap["median"] = self._values.median()
            snap["mad"] = self._values.mad()
        if self._ewma is not None and self._ewma.count:
            snap["ewma_mean"] = self._ewma.mean
            snap["ewma_std"] = self._ewma.std()
        if self._rates is not None and len(self._rates):
            snap["rate_median"] = self._rates.median()
        if self._buckets is not None:
            snap["seasonal_buckets"] = len(self._buckets)
        return snap

    # ---- methods: each returns (detail, normalised deviation) or None when inactive

    def _robust_z(self, ts: float, value: float) -> tuple[float, float] | None:
        if not self._values:
            return None
        z = self._values.robust_z(value)
        return z, z / self.settings.z_threshold

    def _ewma_z(self, ts: float, value: float) -> tuple[float, float] | None:
        if self._ewma is None or not self._ewma.count:
            return None
        z = self._ewma.z(value)
        return z, z / self.settings.z_threshold

    def _rate(self, ts: float, value: float) -> tuple[float, float] | None:
        if self.last_ts is None or ts <= self.last_ts:
            return None
        rate = (value - self.last_value) / (ts - self.last_ts)
        if not self._learn_rates:
            ratio = abs(rate) / self.settings.rate_threshold
            return ratio, ratio
        if not self._rates:
            return None
        z = self._rates.robust_z(rate)
        return z, z / self.settings.z_threshold

    def _seasonal(self, ts: float, value: float) -> tuple[float, float] | None:
        season, bucket = self._phase(ts)
        state = self._buckets.get(bucket)
        if state is None:
            return None
        z = state.z(season, value)
        if z is None:
            return None
        return z, z / self.settings.z_threshold

    def _phase(self, ts: float) -> tuple[int, int]:
        """(season index, phase bucket) of a timestamp."""
        season, offset = divmod(ts, self.settings.season)
        bucket = min(int(offset / self.settings.season * SEASON_BUCKETS), SEASON_BUCKETS - 1)
        return int(season), bucket


class Detector:
    """Causal anomaly detection for many independent series."""

    def __init__(self, settings: DetectorSettings = DetectorSettings()) -> None:
        self.settings = settings
        self._series: dict[Hashable, SeriesDetector] = {}

    def score(self, series: tuple, ts: float, value: float) -> Score:
        """Score ``value`` observed at ``ts`` (epoch seconds) for ``series``, then learn from it."""
        state = self._series.get(series)
        if state is None:
            state = self._series[series] = SeriesDetector(self.settings)
        return state.score(ts, value)

    def score_many(self, items: Iterable[tuple[tuple, float, float]]) -> list[Score]:
        """:meth:`score` for each ``(series, ts, value)``, in order."""
        return [self.score(series, ts, value) for series, ts, value in items]

    def series_count(self) -> int:
        return len(self._series)

    def snapshot(self, series: tuple) -> dict[str, Any] | None:
        """The display state of ``series`` (see :meth:`SeriesDetector.snapshot`), or None."""
        state = self._series.get(series)
        return None if state is None else state.snapshot()
