"""Streaming, causal anomaly detection per series, with one calibrated score.

A *series* is one ``(key, metric)`` pair of a flow. Every series owns a small, bounded
:class:`SeriesDetector`; the :class:`Detector` routes points to them by series. See
``docs/detection.md`` for the measurements behind the defaults.

Guarantees
----------
* **Causal** - a point is scored against the state built from the points that came
  before it, and only afterwards added to that state.
* **Late data cannot corrupt the state** - a point whose timestamp is not newer than the
  last accepted point of its series is scored against the current state but not added.
* **Non-finite input is ignored** - a nan/inf value (or timestamp) scores ``Score(0.0,
  False, None, {})`` and is not added.
* **Bounded memory** - each series keeps only fixed-size structures (see each method).
* **Restartable** - :meth:`SeriesDetector.state` is a JSON-able dict of the whole state and
  :meth:`SeriesDetector.from_state` rebuilds it: a restored series scores the next points
  exactly as the uninterrupted one would.

Methods
-------
Each method turns a point into a non-negative *statistic* (0 = perfectly normal):

``robust_z``
    ``|x - median| / sigma`` over the last ``window`` values (``sigma`` = 1.4826 MAD, falling
    back to 1.2533 x mean absolute deviation, then to a tiny epsilon of the scale: a flat
    series staying flat scores 0, a flat series with a jump very high).
``ewma``
    ``|x - mean| / std`` of an exponentially weighted mean and (bias-corrected) variance.
``rate``
    Change per second since the previous point: robust z against the last ``window`` rates
    (or, with a fixed ``rate_threshold``, the ratio to it). A steady ramp is normal.
``seasonal``
    Robust z of the residual against a seasonal profile. The period is ``season`` seconds
    when set; with ``season=None`` it is found: values are averaged into hourly bins (the
    last three weeks kept), and every day the autocorrelation of the bins, with the trend
    removed by a one-period moving average, is measured at one day and one week; the
    period whose autocorrelation reaches :data:`SEASON_MIN_ACF` wins (a week only if it beats
    the day), otherwise the series has none and the method stays inactive. The profile at a
    phase is the median of the bins at the same phase in up to seven previous periods,
    interpolated between bins; the residual's spread is that of the last ``window``
    residuals. Irregular spacing and gaps only leave bins empty, which are skipped.
``level_shift``
    Two-sided CUSUM of the standardised deviations from the rolling median (clipped at 3
    sigma so one spike cannot trip it, slack ``cusum_k``): a sustained shift of a sigma or
    more builds up within tens of points. Once the sum passes ``cusum_h`` it reports the
    shift and restarts from zero, holding off for half a window while the median moves
    to the new level: a shift is reported once, then the method adapts.
``flatline``
    The number of consecutive points repeating the previous value exactly (a stuck
    sensor). Integer counts repeat often; calibration learns how often.

Calibration (``calibrate=True``, the default)
---------------------------------------------
A raw statistic means different things on different series (a z of 5 is rare on gaussian
noise and common on heavy-tailed noise), so each method's statistic is turned into a tail
probability against that same statistic's own recent history on this series: the last
``calibration_window`` values are kept sorted; inside their range the probability is
empirical, beyond their top 2 % it follows the exponential tail fitted to those top values
(peaks over threshold, as in SPOT). The smallest probability of the active methods, times
their number (Bonferroni), is the point's probability ``p``, and

    ``score = min(1, 0.5 * log(p) / log(flag_probability))``

so the score is 0.5 exactly where ``p = flag_probability`` on every series, and 1 at
``flag_probability ** 2``. No method flags before it has ``warmup`` calibrated statistics
(the probation): a new series raises nothing. The statistics of a point scoring 0.5 or more
stay out of the tails (as in SPOT), so an anomaly does not teach them that it is normal.

Episodes: an in-order point at or above 0.5 that is not already inside an episode opens one: it is
the only flagged (``anomalous``) point of the episode and carries a new ``episode`` id;
later points keep that id while the episode lasts, which is until ``refractory`` points
in a row score below 0.5. So the stage raises one issue per episode. A late point (not
newer than the last one) is scored but never flagged and does not move the episode. With
``calibrate=False`` the scores are the raw statistics squashed as ``1 - 2 ** -(z /
z_threshold)`` (0.5 at the threshold) and every point at or above 0.5 is flagged.

Explanations: a scored point carries the winning method's ``expected`` value and the
range ``[low, high]`` outside which that method would flag, the ``observed`` value and the
``probability`` of a statistic this extreme.
"""

from __future__ import annotations

import math
import os
from bisect import bisect_left, bisect_right, insort
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

METHODS = ("robust_z", "ewma", "rate", "seasonal", "level_shift", "flatline")

DEFAULT_METHODS = ("robust_z", "rate", "seasonal", "level_shift", "flatline")

MAD_TO_SIGMA = 1.4826
"""Scales a MAD to the standard deviation of a normal distribution."""

MEAN_AD_TO_SIGMA = 1.2533
"""Scales a mean absolute deviation to the standard deviation of a normal (sqrt(pi/2))."""

RELATIVE_EPSILON = 1e-9
"""Smallest spread considered, relative to the magnitude of the values (see :func:`epsilon`)."""

ABSOLUTE_EPSILON = 1e-12
"""Smallest spread considered at all, for series that sit at (or very near) zero."""

HOUR = 3600.0
DAY = 86400.0
WEEK = 7 * DAY
SEASON_BINS = 24
"""Bins per season when ``season`` is given (a found day has 24 hourly bins, a week 168)."""
SEASON_HISTORY = 7
"""Previous periods whose bins make a phase's profile."""
SEASON_MIN_ACF = 0.3
"""Autocorrelation (trend removed) at the period's lag that makes a series seasonal."""
TAIL_SHARE = 0.02
"""Top share of a statistic's history that the exponential tail is fitted to."""
TAIL_MIN = 5
"""Fewest top values to fit the tail to."""
TAIL_REFIT = 10
"""A full tail is refitted after this many new statistics (one rarely moves it)."""
CUSUM_CLIP = 3.0
"""Standardised deviations are clipped to this before they enter the CUSUM."""
FLAGGED_KEPT = 16
"""Flagged points per series whose verdicts are kept for a late re-merge (see ``_again``)."""


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


def calibrated_score(p: float, flag_probability: float) -> float:
    """``min(1, 0.5 * log(p) / log(flag_probability))``: 0.5 exactly at the flag probability."""
    if not p < 1.0:
        return 0.0
    if p <= 0.0:
        return 1.0
    return min(1.0, 0.5 * math.log(p) / math.log(flag_probability))


@dataclass(frozen=True)
class DetectorSettings:
    """Configuration shared by every series of a :class:`Detector`."""

    methods: tuple[str, ...] = DEFAULT_METHODS
    window: int = 120  # values kept for robust_z (and learned rates, seasonal residuals)
    z_threshold: float = 4.0  # raw mode only: a statistic above this is anomalous
    ewma_alpha: float = 0.1
    rate_threshold: float | None = None  # max |change per second|; None = learn it
    season: float | None = None  # seconds; None = find daily / weekly / none
    min_history: int = 10  # no score at all until a series has this many points
    calibrate: bool = True  # tail probabilities + episodes; False: raw squashed statistics
    flag_probability: float = 1e-4  # calibrated: p at which the score is 0.5 (the flag)
    calibration_window: int = 1000  # statistics kept per method for its tail
    warmup: int = 150  # calibrated statistics a method needs before it may flag
    refractory: int = 100  # points below 0.5 in a row that end an episode
    cusum_k: float = 0.5  # CUSUM slack, in sigmas
    cusum_h: float = 30.0  # CUSUM sum that reports a shift and restarts

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
        if self.season is not None and not (self.season > 0 and math.isfinite(self.season)):
            raise ValueError("season must be a positive number of seconds, or None to find it")
        if self.min_history < 0:
            raise ValueError("min_history must not be negative")
        if not 0 < self.flag_probability < 1:
            raise ValueError("flag_probability must be in (0, 1)")
        if self.calibration_window < 10:
            raise ValueError("calibration_window must be at least 10")
        if not 0 <= self.warmup <= self.calibration_window:
            raise ValueError("warmup must be in [0, calibration_window]")
        if self.refractory < 0:
            raise ValueError("refractory must not be negative")
        if not (self.cusum_k >= 0 and self.cusum_h > 0):
            raise ValueError("cusum_k must not be negative and cusum_h must be positive")


@dataclass(slots=True)
class Score:
    """The verdict on one point."""

    score: float  # 0..1, higher = more anomalous; 0.5 exactly at the flag threshold
    anomalous: bool  # flagged: calibrated, the first point of an episode; raw, score >= 0.5
    method: str | None  # the method that gave the highest score (None: no method active)
    details: dict[str, float]  # per-method raw statistic (z, ratio, CUSUM sum, run length)
    observed: float | None = None  # the value scored
    expected: float | None = None  # the winning method's baseline for it
    low: float | None = None  # the range outside which the winning method would flag
    high: float | None = None
    probability: float | None = None  # calibrated: tail probability of the point
    episode: int = 0  # calibrated: id of the episode the point belongs to (0: none)
    again: bool = False  # a late re-score of a flagged point: its first verdict, kept


    def reason(self) -> dict[str, Any] | None:
        """A small dict explaining the verdict (None when no method was active)."""
        if self.method is None:
            return None
        out: dict[str, Any] = {"detector": self.method, "observed": self.observed,
                               "expected": self.expected, "low": self.low, "high": self.high,
                               "score": round(self.score, 4)}
        if self.probability is not None:
            out["probability"] = self.probability
        if self.episode:
            out["episode"] = self.episode
        return out


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
    return sigma_from_mad(values, center, MAD_TO_SIGMA * mad_sorted(values, center))


def sigma_from_mad(values: list[float], center: float, sigma: float) -> float:
    """:func:`sigma_sorted` given ``sigma = 1.4826 * MAD`` already worked out."""
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

    __slots__ = ("maxlen", "_fifo", "_sorted")

    def __init__(self, maxlen: int) -> None:
        self.maxlen = maxlen
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


class _Tail:
    """The recent history of one method's statistic, and tail probabilities against it.

    The last ``size`` statistics, sorted. ``p(s)`` is the share of them at least ``s`` (with
    one pseudo-count) inside their range; beyond the top :data:`TAIL_SHARE` it is the
    exponential tail fitted to those top values: ``k / (n + 1) * exp(-(s - u) / m)``, ``u``
    the largest value below the top ``k`` and ``m`` their mean excess over ``u`` (at least
    ``min_excess``). While the history fills, the fit follows every new statistic; once
    it is full, every :data:`TAIL_REFIT` statistics.
    """

    __slots__ = ("window", "min_excess", "fit", "stale")

    def __init__(self, size: int, min_excess: float) -> None:
        self.window = RollingWindow(size)
        self.min_excess = min_excess
        self.fit: list | None = None  # [n, k, u, m], refitted every TAIL_REFIT additions
        self.stale = 0

    def __len__(self) -> int:
        return len(self.window)

    def add(self, stat: float) -> None:
        window = self.window  # RollingWindow.add, inline: four tails learn every point
        fifo, ordered = window._fifo, window._sorted
        if len(fifo) == window.maxlen:
            del ordered[bisect_left(ordered, fifo[0])]
            fifo.append(stat)
            insort(ordered, stat)
            self.stale += 1
            if self.stale >= TAIL_REFIT:
                self.fit = None
        else:  # filling: refit after every statistic but the one that fills it (as before)
            fifo.append(stat)
            insort(ordered, stat)
            self.stale += 1
            if self.stale >= TAIL_REFIT or len(ordered) < window.maxlen:
                self.fit = None

    def _fit(self) -> list:
        if self.fit is not None:
            return self.fit
        values = self.window.sorted_values
        n = len(values)
        k = min(max(TAIL_MIN, int(TAIL_SHARE * n)), n - 1)
        u = values[n - k - 1]
        m = max(math.fsum(values[n - k:]) / k - u, self.min_excess, epsilon(u))
        self.fit = [n, k, u, m]
        self.stale = 0
        return self.fit

    def p(self, stat: float) -> float:
        values = self.window._sorted
        n, k, u, m = self.fit or self._fit()
        if stat <= u:
            return (n - bisect_left(values, stat) + 1) / (n + 1)
        return k / (n + 1) * math.exp(-(stat - u) / m)

    def threshold(self, p: float) -> float:
        """The statistic whose tail probability is ``p`` (the inverse of :meth:`p`)."""
        values = self.window.sorted_values
        n, k, u, m = self._fit()
        if p >= k / (n + 1):
            return values[max(0, min(n - 1, math.ceil(n + 1 - p * (n + 1))))]
        return u + m * math.log(k / (n + 1) / p)


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

    def spread(self) -> float:
        return max(self.std(), epsilon(self.mean))


class _Seasonal:
    """Bins of the values, the period they show, and residuals against its profile.

    ``bins`` holds the mean of each closed bin (None: no value fell in it), oldest first,
    ending with the bin just before ``current``; the open bin accumulates ``total``/``n``.
    """

    __slots__ = ("fixed", "period", "width", "bins", "current", "total", "n", "since_check",
                 "residuals", "_memo", "_last")

    def __init__(self, season: float | None, window: int) -> None:
        self.fixed = season is not None
        if season is not None:
            self.period: float | None = season
            self.width = season / SEASON_BINS
            size = SEASON_HISTORY * SEASON_BINS + 1
        else:
            self.period = None
            self.width = HOUR
            size = 3 * int(WEEK / HOUR)
        self.bins: deque[float | None] = deque(maxlen=size)
        self.current: int | None = None
        self.total = 0.0
        self.n = 0
        self.since_check = 0
        self.residuals = RollingWindow(window)
        self._memo: tuple[int, dict[int, float | None]] | None = None
        self._last: tuple[float, int | None, float | None] | None = None  # (ts, bin, expected)

    # -- bins and the period

    def _close_until(self, index: int) -> None:
        assert self.current is not None  # a bin is open
        steps = index - self.current
        self.bins.append(self.total / self.n if self.n else None)
        for _ in range(min(steps - 1, self.bins.maxlen or steps)):
            self.bins.append(None)
        self.current, self.total, self.n = index, 0.0, 0
        self.since_check += steps
        if not self.fixed and self.since_check >= int(DAY / HOUR):
            self.since_check = 0
            self._find_period()

    def _find_period(self) -> None:
        period = _season_period(list(self.bins))
        if period != self.period:
            self.period = period
            self._memo = None
            self.residuals = RollingWindow(self.residuals.maxlen)

    def _bin(self, index: int) -> float | None:
        assert self.current is not None  # a bin is open
        offset = self.current - index
        if offset == 0:
            return self.total / self.n if self.n else None
        if 0 < offset <= len(self.bins):
            return self.bins[-offset]
        return None

    def _profile(self, index: int) -> float | None:
        """Median of the bins one to :data:`SEASON_HISTORY` periods before bin ``index``."""
        current, period = self.current, self.period
        assert current is not None and period is not None  # only called by expected()
        memo = self._memo
        if memo is None or memo[0] != current:
            memo = self._memo = (current, {})
        if index in memo[1]:
            return memo[1][index]
        lag = round(period / self.width)
        seen = sorted(v for j in range(1, SEASON_HISTORY + 1)
                      if (v := self._bin(index - j * lag)) is not None)
        result = median_sorted(seen) if len(seen) >= 2 else None
        if index - lag < current:  # only closed bins: fixed until the next one closes
            memo[1][index] = result
        return result

    def expected(self, ts: float) -> float | None:
        """The profile at ``ts``, interpolated between the centres of its two nearest bins."""
        if self.period is None or self.current is None:
            return None
        position = ts / self.width - 0.5
        first = math.floor(position)
        a, b = self._profile(first), self._profile(first + 1)
        if a is None or b is None:
            return a if b is None else b
        f = position - first
        return a + (b - a) * f

    # -- the method

    def measure(self, ts: float, value: float) -> tuple[float, float, float] | None:
        """(z, expected, spread) of the residual, or None while inactive."""
        if len(self.residuals) < min(10, self.residuals.maxlen):
            return None
        base = self.expected(ts)
        self._last = (ts, self.current, base)  # add() of the same point reuses it
        if base is None:
            return None
        values = self.residuals._sorted
        n = len(values)
        center = values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2.0
        spread = MAD_TO_SIGMA * mad_sorted(values, center)
        if spread == 0.0 or spread < ABSOLUTE_EPSILON or spread < abs(center) * RELATIVE_EPSILON:
            spread = sigma_from_mad(values, center, spread)
        return abs(value - base - center) / spread, base + center, spread

    def add(self, ts: float, value: float) -> None:
        index = math.floor(ts / self.width)
        if self.current is None:
            self.current = index
        elif index > self.current:
            self._close_until(index)
        last = self._last
        if last is not None and last[0] == ts and last[1] == self.current:
            base = last[2]  # measured for this point, no bin closed since
        else:
            base = self.expected(ts)
        if base is not None:
            self.residuals.add(value - base)
        self.total += value
        self.n += 1


def _season_period(values: list[float | None]) -> float | None:
    """The period the hourly bins show (oldest first): a week, a day, or None.

    Called once per day of data by both paths (the kernel calls it too)."""
    day, week = int(DAY / HOUR), int(WEEK / HOUR)
    period: float | None = None
    if len(values) >= 5 * week // 2:
        # With the weekly trend removed, a weekly rhythm repeats at a week but not from
        # one day to the next (weekdays differ from weekends); a daily one at both.
        detrended = _detrend(values, week)
        daily, weekly = _acf(detrended, day), _acf(detrended, week)
        if (weekly is not None and weekly >= SEASON_MIN_ACF
                and weekly > (daily or 0.0) + 0.1):
            period = WEEK
    if period is None and len(values) >= 3 * day:
        daily = _acf(_detrend(values, day), day)
        if daily is not None and daily >= SEASON_MIN_ACF:
            period = DAY
    return period


def _detrend(values: list[float | None], lag: int) -> list[float | None]:
    """The bins minus their centred ``lag``-bin moving average (classical decomposition).

    A moving average over exactly one period cancels the seasonal part and keeps the
    trend, so what is left is the seasonal part plus noise. Empty bins stay empty.
    """
    n = len(values)
    sums = [0.0] * (n + 1)
    counts = [0] * (n + 1)
    for i, v in enumerate(values):
        sums[i + 1] = sums[i] + (v if v is not None else 0.0)
        counts[i + 1] = counts[i] + (v is not None)
    half = lag // 2
    detrended: list[float | None] = [None] * n
    for i in range(half, n - half):
        v = values[i]
        c = counts[i + half] - counts[i - half]
        if v is None or c < half:
            continue
        detrended[i] = v - (sums[i + half] - sums[i - half]) / c
    return detrended


def _acf(detrended: list[float | None], lag: int) -> float | None:
    """Autocorrelation at ``lag`` over the pairs of non-empty bins; None if too few pair up."""
    num = left = right = 0.0
    pairs = 0
    for i in range(len(detrended) - lag):
        a, b = detrended[i], detrended[i + lag]
        if a is None or b is None:
            continue
        num += a * b
        left += a * a
        right += b * b
        pairs += 1
    if pairs < lag or left <= 0.0 or right <= 0.0:
        return None
    return num / math.sqrt(left * right)


class _Cusum:
    """Two-sided CUSUM of clipped, standardised deviations, restarted at each report."""

    __slots__ = ("k", "h", "holdoff", "pos", "neg", "hold")

    def __init__(self, k: float, h: float, holdoff: int) -> None:
        self.k, self.h, self.holdoff = k, h, holdoff
        self.pos = self.neg = 0.0
        self.hold = 0

    def step(self, e: float) -> tuple[float, float]:
        e = max(-CUSUM_CLIP, min(CUSUM_CLIP, e))
        return max(0.0, self.pos + e - self.k), max(0.0, self.neg - e - self.k)

    def measure(self, e: float) -> float:
        if self.hold:
            return 0.0
        return max(self.step(e))

    def add(self, e: float) -> None:
        if self.hold:
            self.hold -= 1
            return
        pos, neg = self.step(e)
        if max(pos, neg) > self.h:
            self.pos = self.neg = 0.0
            self.hold = self.holdoff
        else:
            self.pos, self.neg = pos, neg


# --------------------------------------------------------------------------- state (de)serialising

_STATE_CLASSES: dict[str, type] = {}


def _dump(obj: Any) -> Any:
    if isinstance(obj, RollingWindow):
        return {"rolling": obj._fifo.maxlen, "values": list(obj._fifo)}
    if isinstance(obj, deque):
        return {"deque": obj.maxlen, "values": [_dump(v) for v in obj]}
    if isinstance(obj, list | tuple):
        return [_dump(v) for v in obj]
    name = type(obj).__name__
    if name in _STATE_CLASSES:
        return {"state": name, "slots": {s: _dump(getattr(obj, s)) for s in obj.__slots__
                                          if s not in ("_memo", "_last")}}
    return obj


def _load(data: Any) -> Any:
    if isinstance(data, list):
        return [_load(v) for v in data]
    if not isinstance(data, dict):
        return data
    if "rolling" in data:
        window = RollingWindow(data["rolling"])
        for v in data["values"]:
            window.add(v)
        return window
    if "deque" in data:
        return deque((_load(v) for v in data["values"]), maxlen=data["deque"])
    obj: Any = object.__new__(_STATE_CLASSES[data["state"]])
    for slot, value in data["slots"].items():
        setattr(obj, slot, _load(value))
    if isinstance(obj, _Seasonal):
        obj._memo = None
        obj._last = None
    return obj


for _cls in (_Tail, _Ewma, _Seasonal, _Cusum):
    _STATE_CLASSES[_cls.__name__] = _cls


# --------------------------------------------------------------------------- detectors

Measure = tuple[str, float, float | None, float | None]
"""(method, statistic, expected value, spread: the statistic's unit in value terms)."""

RAW_SCALE = {"level_shift": "cusum_h", "flatline": "window"}
"""Raw mode: the setting a method's statistic is divided by (the rest: ``z_threshold``)."""


class SeriesDetector:
    """The state of one series: only the structures its enabled methods need."""

    STATE_VERSION = 1

    def __init__(self, settings: DetectorSettings = DetectorSettings(),
                 kernel: bool | None = None) -> None:
        """``kernel``: run the compiled kernel (True), the Python reference (False), or
        whichever :data:`KERNEL` says (None); both give the very same results."""
        self.settings = settings
        # The verdicts of the last flagged in-order points, so a point merged again later
        # (a late source) keeps the verdict it was given, not a late point's (see score).
        self._flagged: deque[tuple[float, Score]] = deque(maxlen=FLAGGED_KEPT)
        if kernel is None:
            kernel = KERNEL
        if kernel:
            if _kernel is None:
                raise RuntimeError("the compiled detector kernel is not built or is off "
                                   "(FLOWDECK_PURE_PYTHON)")
            # The whole state lives in the kernel; the Python structures below are only
            # made for the Python path (see _to_python, __getattr__).
            self._k: Any = _kernel.Series(settings, self._flagged)
            return
        self._k = None
        methods = settings.methods
        self.count = 0  # points added to the state
        self.last_ts: float | None = None
        self.last_value: float | None = None
        needs_values = "robust_z" in methods or "level_shift" in methods
        self._values = RollingWindow(settings.window) if needs_values else None
        self._ewma = _Ewma(settings.ewma_alpha) if "ewma" in methods else None
        self._learn_rates = "rate" in methods and settings.rate_threshold is None
        self._rates = RollingWindow(settings.window) if self._learn_rates else None
        self._seasonal = (_Seasonal(settings.season, settings.window)
                          if "seasonal" in methods else None)
        self._cusum = (_Cusum(settings.cusum_k, settings.cusum_h, settings.window // 2)
                       if "level_shift" in methods else None)
        self._run = 0  # flatline: points in a row repeating the previous value
        self._window_memo: tuple[int, float, float] | None = None
        self._tails: dict[str, _Tail] = {
            m: _Tail(settings.calibration_window, 1.0 if m == "flatline" else 0.0)
            for m in methods} if settings.calibrate else {}
        self._episodes = 0  # episodes opened so far
        self._in_episode = False
        self._below = 0  # points in a row below the flag since the episode's last high one
        self._measures: list[tuple[str, Callable[[float, float], Measure | None]]] = [
            (m, getattr(self, "_m_" + m)) for m in methods]
        self._log_flag = math.log(settings.flag_probability)
        # Calibrated statistics before a method may flag: at least two, since a tail's fit
        # takes its top k >= 1 values above the (k+1)-th (``warmup`` 0 or 1 reads as 2).
        self._need = max(settings.warmup, 2)
        self._min_history = max(settings.min_history, 1)

    # ---- public

    def __getattr__(self, name: str) -> Any:
        # Kernel path: the Python-side attributes (count, last_ts, _values, _tails, ...)
        # read from a Python copy of the current state (a snapshot, not a live view).
        if name in _PY_ATTRS and self.__dict__.get("_k") is not None:
            twin = SeriesDetector.from_state(self.state(), self.settings, kernel=False)
            return getattr(twin, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __getstate__(self) -> dict[str, Any]:
        # Pickling (Bytewax snapshots its operators' state): on the kernel path the state
        # travels as state(), and is restored on whichever path the loading process runs.
        if self.__dict__.get("_k") is None:
            return self.__dict__
        return {"_kernel_state": self.state(), "settings": self.settings}

    def __setstate__(self, data: dict[str, Any]) -> None:
        if "_kernel_state" not in data:
            self.__dict__.update(data)
            return
        twin = SeriesDetector.from_state(data["_kernel_state"], data["settings"])
        self.__dict__.update(twin.__dict__)
        if twin._k is None:  # no kernel here: the Python path, its methods bound to self
            self._measures = [(m, getattr(self, "_m_" + m)) for m in self.settings.methods]

    def _to_python(self) -> None:
        """Move this series from the kernel to the Python path, with the same state (for
        a point the kernel cannot take: a seasonal bin index beyond 64 bits)."""
        twin = SeriesDetector.from_state(self.state(), self.settings, kernel=False)
        self.__dict__.update(twin.__dict__)
        self._measures = [(m, getattr(self, "_m_" + m)) for m in self.settings.methods]
        self._k = None

    def score(self, ts: float, value: float) -> Score:
        """Score the point, then add it to the state if it is finite and in order."""
        k = self._k
        if k is not None:
            try:
                return k.score(ts, value)  # type: ignore[no-any-return]
            except _KernelLimit:
                self._to_python()
        if not (math.isfinite(value) and math.isfinite(ts)):
            return _quiet()
        measures = self._measure(ts, value)
        result = self._verdict(value, measures)
        last_ts = self.last_ts
        if last_ts is None or ts > last_ts:  # accepted (see accepts)
            flagged = result.score >= 0.5
            if flagged or self._in_episode:
                if self.settings.calibrate:
                    self._episode(result)
                if flagged:
                    self._flagged.append((ts, result))
            self._learn(ts, float(value), measures, flagged)
            return result
        again = self._again(ts, value)
        if again is not None:
            return again
        if self.settings.calibrate:  # late: scored, but it neither flags nor moves the episode
            result.anomalous = False
            result.episode = self._episodes if self._in_episode else 0
        return result

    def score_many(self, ts: Sequence[float], values: Sequence[float]) -> list[Score]:
        """:meth:`score` for each point of this series, in order, with the same results.

        The stage hands each series its points of a batch at once (per-series batching):
        one series' state is worked on while it sits in the CPU's caches, instead of
        hopping between series record by record."""
        k = self._k
        if k is not None:
            got: list[Score] = k.score_many(ts, values)
            if len(got) == len(ts):
                return got
            self._to_python()  # the kernel stopped at a point it cannot take
        else:
            got = []
        score = self.score
        return got + [score(ts[i], values[i]) for i in range(len(got), len(ts))]

    def score_batch(self, ts: Sequence[float], values: Sequence[float]
                    ) -> tuple[list[float], dict[int, Score]]:
        """:meth:`score_many`, compact: each point's ``score``, and the whole
        :class:`Score` of each point scoring 0.5 or more, by its index (the stage needs no
        more; the kernel then builds no Score for the rest)."""
        k = self._k
        scores: list[float]
        full: dict[int, Score]
        if k is not None:
            scores, full, done = k.score_batch(ts, values)
            if done == len(ts):
                return scores, full
            self._to_python()
        else:
            scores, full, done = [], {}, 0
        score = self.score
        for i in range(done, len(ts)):
            sc = score(ts[i], values[i])
            scores.append(sc.score)
            if sc.score >= 0.5:
                full[i] = sc
        return scores, full

    def _again(self, ts: float, value: float) -> Score | None:
        return _again_of(self._flagged, ts, value)

    def evaluate(self, ts: float, value: float) -> Score:
        """Score the point against the current state, without changing the state.

        The episode is not advanced, so ``anomalous`` here is ``score >= 0.5``.
        """
        k = self._k
        if k is not None:
            try:
                return k.evaluate(ts, value)  # type: ignore[no-any-return]
            except _KernelLimit:
                self._to_python()
        if not (math.isfinite(value) and math.isfinite(ts)):
            return _quiet()
        return self._verdict(value, self._measure(ts, value))

    def accepts(self, ts: float, value: float) -> bool:
        """Whether :meth:`update` would take the point: finite, and newer than the last one."""
        if self._k is not None:
            return self._k.accepts(ts, value)  # type: ignore[no-any-return]
        if not (math.isfinite(value) and math.isfinite(ts)):
            return False
        return self.last_ts is None or ts > self.last_ts

    def update(self, ts: float, value: float) -> None:
        """Add an accepted point to the state (see :meth:`accepts`); others are ignored."""
        k = self._k
        if k is not None:
            try:
                k.update(ts, value)
                return
            except _KernelLimit:
                self._to_python()
        if self.accepts(ts, value):
            self._learn(ts, float(value), self._measure(ts, value))

    def snapshot(self) -> dict[str, Any]:
        """A small dict of the state for display; a statistic is None when not tracked yet."""
        if self._k is not None:
            return SeriesDetector.from_state(self.state(), self.settings,
                                             kernel=False).snapshot()
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
        if self._seasonal is not None:
            snap["period"] = self._seasonal.period
        if self.settings.calibrate:
            snap["episodes"] = self._episodes
            snap["in_episode"] = self._in_episode
            snap["calibrated"] = {m: len(t) for m, t in self._tails.items()}
        return snap

    def state(self) -> dict[str, Any]:
        """The whole state as a JSON-able dict (see :meth:`from_state`)."""
        if self._k is not None:
            part = self._k.export()
            return {"version": self.STATE_VERSION, "settings": _settings_dict(self.settings),
                    **part, "flagged": [[ts, _score_state(sc)] for ts, sc in self._flagged]}
        return {
            "version": self.STATE_VERSION,
            "settings": _settings_dict(self.settings),
            "count": self.count, "last_ts": self.last_ts, "last_value": self.last_value,
            "values": _dump(self._values), "ewma": _dump(self._ewma),
            "rates": _dump(self._rates), "seasonal": _dump(self._seasonal),
            "cusum": _dump(self._cusum), "run": self._run,
            "tails": {m: _dump(t) for m, t in self._tails.items()},
            "episodes": self._episodes, "in_episode": self._in_episode, "below": self._below,
            "flagged": [[ts, _score_state(sc)] for ts, sc in self._flagged],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], settings: DetectorSettings,
                   kernel: bool | None = None) -> SeriesDetector:
        """Rebuild a series from :meth:`state`; ``settings`` must be the ones it was made with.

        A state made by either path restores in either (``kernel`` as in the constructor)."""
        if state.get("version") != cls.STATE_VERSION:
            raise ValueError(f"unknown detector state version {state.get('version')!r}")
        if state.get("settings") != _settings_dict(settings):
            raise ValueError("detector state was made with other settings")
        self = cls(settings, kernel)
        if self._k is not None:
            self._k.load(state)
            self._flagged.extend((ts, Score(**sc)) for ts, sc in state.get("flagged", []))
            return self
        self.count, self.last_ts, self.last_value = (state["count"], state["last_ts"],
                                                     state["last_value"])
        self._values = _load(state["values"])
        self._ewma = _load(state["ewma"])
        self._rates = _load(state["rates"])
        self._seasonal = _load(state["seasonal"])
        self._cusum = _load(state["cusum"])
        self._run = state["run"]
        self._tails = {m: _load(t) for m, t in state["tails"].items()}
        self._episodes, self._in_episode, self._below = (state["episodes"],
                                                         state["in_episode"], state["below"])
        self._flagged.extend((ts, Score(**sc)) for ts, sc in state.get("flagged", []))
        return self

    # ---- scoring

    def _measure(self, ts: float, value: float) -> list[Measure]:
        if self.count < self._min_history:
            return []
        out = []
        for _, method in self._measures:
            m = method(ts, value)
            if m is not None:
                out.append(m)
        return out

    def _verdict(self, value: float, measures: list[Measure]) -> Score:
        if not measures:
            return _quiet()
        settings = self.settings
        details = {m[0]: m[1] for m in measures}
        if not settings.calibrate:
            best, best_score = measures[0], -1.0
            for m in measures:
                s = squash(m[1] / self._raw_scale(m[0]))
                if s > best_score:
                    best, best_score = m, s
            threshold = self._raw_scale(best[0])
            return self._explain(Score(best_score, best_score >= 0.5, best[0], details,
                                       value), best, threshold)
        # Per point: one tail look-up per method past its warm-up, no other allocation
        # than the Score; the flag range is only worked out for a point at the flag.
        tails, need = self._tails, self._need
        winner: Measure | None = None
        p_best, ready = 2.0, 0
        for m in measures:
            tail = tails[m[0]]
            if len(tail.window._sorted) >= need:
                ready += 1
                pm = tail.p(m[1])
                if pm < p_best:
                    p_best, winner = pm, m
        if winner is None:
            return Score(0.0, False, measures[0][0], details, value)
        best = winner
        p = p_best * ready
        if p >= 1.0:
            p, score = 1.0, 0.0
        elif p <= 0.0:
            score = 1.0
        else:  # calibrated_score, inline: this runs for every point
            score = min(1.0, 0.5 * math.log(p) / self._log_flag)
        if score < 0.5:
            return Score(score, False, best[0], details, value, best[2], probability=p)
        threshold = tails[best[0]].threshold(settings.flag_probability / ready)
        return self._explain(Score(score, True, best[0], details, value,
                                   probability=p), best, threshold)

    def _raw_scale(self, method: str) -> float:
        if method == "rate" and not self._learn_rates:
            return 1.0
        return float(getattr(self.settings, RAW_SCALE.get(method, "z_threshold")))

    @staticmethod
    def _explain(result: Score, measure: Measure, threshold: float) -> Score:
        _, _, expected, spread = measure
        result.expected = expected
        if expected is not None and spread is not None:
            result.low = expected - threshold * spread
            result.high = expected + threshold * spread
        return result

    def _episode(self, result: Score) -> None:
        if result.score >= 0.5:
            self._below = 0
            if self._in_episode:
                result.anomalous = False
            else:
                self._episodes += 1
                self._in_episode = True
        elif self._in_episode:
            self._below += 1
            if self._below >= self.settings.refractory:
                self._in_episode = False
        result.episode = self._episodes if self._in_episode else 0

    def _learn(self, ts: float, value: float, measures: list[Measure],
               flagged: bool = False) -> None:
        # A flagged point's statistics stay out of the tails (as in SPOT): an anomaly that
        # lasts must not teach the tail that it is normal while it is being reported.
        if self._tails and not flagged:
            for m in measures:
                if m[0] != "flatline":
                    self._tails[m[0]].add(m[1])
        repeat = value == self.last_value
        if "flatline" in self._tails and not repeat and self.last_value is not None:
            # Flat-line statistics are run lengths: the tail learns each run once, when it
            # ends, so a stuck stretch does not teach it that a long run is normal.
            self._tails["flatline"].add(float(self._run))
        if self._cusum is not None and self._values:
            center, spread = self._center_spread()
            self._cusum.add((value - center) / spread)
        if self._values is not None:
            self._values.add(value)
        if self._ewma is not None:
            self._ewma.add(value)
        if self._rates is not None and self.last_ts is not None:
            self._rates.add((value - self.last_value) / (ts - self.last_ts))
        if self._seasonal is not None:
            self._seasonal.add(ts, value)
        self._run = self._run + 1 if repeat else 0
        self.count += 1
        self.last_ts = ts
        self.last_value = value

    # ---- methods: each returns (method, statistic, expected, spread) or None when inactive

    def _center_spread(self) -> tuple[float, float]:
        """Median and robust sigma of the value window, computed once per state."""
        memo = self._window_memo
        if memo is not None and memo[0] == self.count:
            return memo[1], memo[2]
        assert self._values is not None  # robust_z, level_shift: the value window is kept
        values = self._values._sorted
        n = len(values)
        center = values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2.0
        spread = MAD_TO_SIGMA * mad_sorted(values, center)
        if spread == 0.0 or spread < ABSOLUTE_EPSILON or spread < abs(center) * RELATIVE_EPSILON:
            spread = sigma_from_mad(values, center, spread)  # the fallbacks
        self._window_memo = (self.count, center, spread)
        return center, spread

    def _m_robust_z(self, ts: float, value: float) -> Measure | None:
        if not self._values:
            return None
        center, spread = self._center_spread()
        return "robust_z", abs(value - center) / spread, center, spread

    def _m_ewma(self, ts: float, value: float) -> Measure | None:
        if self._ewma is None or not self._ewma.count:
            return None
        spread = self._ewma.spread()
        return "ewma", abs(value - self._ewma.mean) / spread, self._ewma.mean, spread

    def _m_rate(self, ts: float, value: float) -> Measure | None:
        last = self.last_value
        if self.last_ts is None or last is None or ts <= self.last_ts:
            return None
        dt = ts - self.last_ts
        rate = (value - last) / dt
        if not self._learn_rates:
            threshold = self.settings.rate_threshold
            assert threshold is not None  # a fixed threshold is why rates are not learned
            return "rate", abs(rate) / threshold, last, threshold * dt
        if not self._rates:
            return None
        rates = self._rates._sorted
        n = len(rates)
        center = rates[n // 2] if n % 2 else (rates[n // 2 - 1] + rates[n // 2]) / 2.0
        spread = MAD_TO_SIGMA * mad_sorted(rates, center)
        if spread == 0.0 or spread < ABSOLUTE_EPSILON or spread < abs(center) * RELATIVE_EPSILON:
            spread = sigma_from_mad(rates, center, spread)
        return "rate", abs(rate - center) / spread, last + center * dt, spread * dt

    def _m_seasonal(self, ts: float, value: float) -> Measure | None:
        assert self._seasonal is not None  # the method is enabled
        measured = self._seasonal.measure(ts, value)
        if measured is None:
            return None
        z, expected, spread = measured
        return "seasonal", z, expected, spread

    def _m_level_shift(self, ts: float, value: float) -> Measure | None:
        if not self._values:
            return None
        assert self._cusum is not None  # the method is enabled
        center, spread = self._center_spread()
        return "level_shift", self._cusum.measure((value - center) / spread), center, None

    def _m_flatline(self, ts: float, value: float) -> Measure | None:
        if self.last_value is None:
            return None
        run = self._run + 1 if value == self.last_value else 0
        return "flatline", float(run), None, None


def _again_of(flagged: Sequence[tuple[float, Score]], ts: float, value: float
               ) -> Score | None:
    """The first verdict of a flagged point scored again at the same timestamp (resolve
    merged a late source into it), with the value it has now; None if the point was not
    flagged or its new value falls inside the range its detector expected (then it is
    scored as a late point: the state has already learned from that timestamp, so its
    first verdict cannot be re-derived, only kept or withdrawn)."""
    for seen_ts, first in reversed(flagged):
        if seen_ts != ts:
            continue
        if (value != first.observed and first.low is not None and first.high is not None
                and first.low <= value <= first.high):
            return None
        return Score(first.score, first.anomalous, first.method, dict(first.details),
                     value, first.expected, first.low, first.high, first.probability,
                     first.episode, True)
    return None


def _score_state(score: Score) -> dict[str, Any]:
    return {f: getattr(score, f) for f in Score.__slots__}  # type: ignore[attr-defined]


def _settings_dict(settings: DetectorSettings) -> dict[str, Any]:
    out = dict(settings.__dict__)
    out["methods"] = list(settings.methods)
    return out


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

    def series_detector(self, series: tuple) -> SeriesDetector:
        """The state of ``series`` (made on first use): scoring many points of one series,
        call its :meth:`SeriesDetector.score` directly."""
        state = self._series.get(series)
        if state is None:
            state = self._series[series] = SeriesDetector(self.settings)
        return state

    def score_columns(self, series: Sequence[tuple], index: list[int], ts: list[float],
                      values: list[float]
                      ) -> tuple[list[tuple[int, float]], dict[int, Score]]:
        """Score a batch of many series' points given as columns: point ``i`` is
        ``(ts[i], values[i])`` of ``series[index[i]]``; each series takes its points in
        the given order (as :meth:`SeriesDetector.score_batch`; the series are
        independent, so the order between them does not change any score).

        Returns ``(low, full)``: ``(i, score)`` of each point scoring other than 0 and
        below 0.5, and ``{i: Score}`` of each point scoring 0.5 or more. On the kernel
        path the whole batch is one C call (the stage's Python is one pass to gather the
        columns and one over the nonzero scores)."""
        known = self._series
        sds: list[SeriesDetector] = []
        for key in series:
            sd = known.get(key)
            if sd is None:
                sd = known[key] = SeriesDetector(self.settings)
            sds.append(sd)
        low: list[tuple[int, float]]
        full: dict[int, Score]
        if _kernel is not None:
            low, full, rest = _kernel.score_columns(
                [sd._k for sd in sds], index, ts, values)
            if not rest:
                return low, full
        else:
            low, full, rest = [], {}, [(p, 0) for p in range(len(sds))]
        # The series the kernel left (Python-path series, or a point it cannot take):
        # their remaining points, through score_batch.
        points: dict[int, list[int]] = {p: [] for p, _ in rest}
        for i, p in enumerate(index):
            got = points.get(p)
            if got is not None:
                got.append(i)
        for p, done in rest:
            rows = points[p][done:]
            if not rows:
                continue
            scores, flagged = sds[p].score_batch([ts[i] for i in rows],
                                                 [values[i] for i in rows])
            for j, sc in enumerate(scores):
                if sc == 0.0:
                    continue
                top = flagged.get(j)
                if top is None:
                    low.append((rows[j], sc))
                else:
                    full[rows[j]] = top
        return low, full

    def score_many(self, items: Iterable[tuple[tuple, float, float]]) -> list[Score]:
        """:meth:`score` for each ``(series, ts, value)``, in order."""
        return [self.score(series, ts, value) for series, ts, value in items]

    def series_count(self) -> int:
        return len(self._series)

    def snapshot(self, series: tuple) -> dict[str, Any] | None:
        """The display state of ``series`` (see :meth:`SeriesDetector.snapshot`), or None."""
        state = self._series.get(series)
        return None if state is None else state.snapshot()

    def state(self, series: tuple) -> dict[str, Any] | None:
        """The restorable state of ``series`` (see :meth:`SeriesDetector.state`), or None."""
        state = self._series.get(series)
        return None if state is None else state.state()

    def restore(self, series: tuple, state: dict[str, Any]) -> None:
        """Replace the state of ``series`` with one from :meth:`state`."""
        self._series[series] = SeriesDetector.from_state(state, self.settings)


# --------------------------------------------------------------------------- the compiled kernel

_PY_ATTRS = frozenset({
    "count", "last_ts", "last_value", "_values", "_ewma", "_learn_rates", "_rates",
    "_seasonal", "_cusum", "_run", "_window_memo", "_tails", "_episodes", "_in_episode",
    "_below", "_measures", "_log_flag", "_need", "_min_history"})
"""The Python path's state attributes, read from a copy on the kernel path."""


class _NoKernelLimit(Exception):
    """Stands for the kernel's KernelLimit when there is no kernel (never raised)."""


_kernel: Any = None
_KernelLimit: type[Exception] = _NoKernelLimit
if os.environ.get("FLOWDECK_PURE_PYTHON", "") in ("", "0"):
    try:
        from flowdeck.pipeline import _kernel  # type: ignore[attr-defined, no-redef]
    except ImportError:  # not built (no compiler at install time): the Python path
        _kernel = None
    else:
        _kernel.setup(Score, _again_of, _season_period)
        _KernelLimit = _kernel.KernelLimit

KERNEL: bool = _kernel is not None
"""Whether series run the compiled kernel (pipeline/_kernel.pyx, built when a C compiler
was there at install time) or the Python reference above; ``FLOWDECK_PURE_PYTHON=1``
forces the Python path. The results are the same float for float."""
