"""Injected time: every component asks a Clock, so tests and snapshots are deterministic."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

log = logging.getLogger("flowdeck.clock")

# A testing aid (docs/operations.md, "A month in minutes"): simulated time N times faster
# than the wall, from a given start, for a whole daemon.
SPEED_ENV = "FLOWDECK_CLOCK_SPEED"
START_ENV = "FLOWDECK_CLOCK_START"
ANCHOR_ENV = "FLOWDECK_CLOCK_ANCHOR"  # the wall time (epoch s) at which it reads START


class Clock:
    """Wall-clock time in epoch seconds (float). Subclass for tests.

    ``speed`` is how many of this clock's seconds pass per wall second (1 but for a
    :class:`ScaledClock`); ``to_wall``/``from_wall`` map between the two and
    ``wall_seconds`` turns a duration on this clock into one to sleep for. For a clock of
    speed 1 all three are the identity, so code that sleeps or schedules through them
    behaves as before under the system clock or a test's ManualClock.
    """

    speed: float = 1.0

    def now(self) -> float:
        return time.time()

    def now_ms(self) -> int:
        return int(self.now() * 1000)

    def utcnow(self) -> datetime:
        return datetime.fromtimestamp(self.now(), tz=UTC)

    def to_wall(self, t: float) -> float:
        """The wall time (epoch s) at which this clock reads ``t``."""
        return t

    def from_wall(self, wall: float) -> float:
        """What this clock reads at wall time ``wall`` (epoch s)."""
        return wall

    def wall_seconds(self, seconds: float) -> float:
        """How long to sleep (wall seconds) for ``seconds`` of this clock to pass."""
        return seconds


class SystemClock(Clock):
    pass


class ManualClock(Clock):
    """A clock that only moves when told to."""

    def __init__(self, start: float | datetime = 1_767_225_600.0) -> None:  # 2026-01-01T00:00Z
        if isinstance(start, datetime):
            start = start.timestamp()
        self._t = float(start)

    def now(self) -> float:
        return self._t

    def advance(self, seconds: float) -> float:
        self._t += seconds
        return self._t

    def set(self, t: float | datetime) -> None:
        self._t = t.timestamp() if isinstance(t, datetime) else float(t)


class ScaledClock(Clock):
    """Simulated time running ``speed`` times faster than the wall from ``start`` (epoch
    s; default: the wall's now): a month in minutes for a whole daemon, its schedule,
    sources, simulator and retention (a testing aid, see ``clock_from_env``)."""

    def __init__(self, speed: float, start: float | datetime | None = None, *,
                 anchor: float | None = None, wall: Callable[[], float] = time.time) -> None:
        """``anchor``: the wall time at which the clock reads ``start`` (default: now),
        so a restarted daemon, or a benchmark watching one, shares its simulated time."""
        if not speed > 0:
            raise ValueError(f"clock speed must be > 0, not {speed!r}")
        self.speed = float(speed)
        self._wall = wall
        self._w0 = wall() if anchor is None else float(anchor)
        if isinstance(start, datetime):
            start = start.timestamp()
        self._s0 = self._w0 if start is None else float(start)

    def now(self) -> float:
        return self._s0 + (self._wall() - self._w0) * self.speed

    def to_wall(self, t: float) -> float:
        return self._w0 + (t - self._s0) / self.speed

    def from_wall(self, wall: float) -> float:
        return self._s0 + (wall - self._w0) * self.speed

    def wall_seconds(self, seconds: float) -> float:
        return seconds / self.speed


def parse_start(value: str) -> float:
    """Epoch seconds, or an ISO 8601 time (UTC when it names no zone)."""
    try:
        return float(value)
    except ValueError:
        pass
    dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def clock_from_env(environ: Mapping[str, str] | None = None) -> Clock:
    """The engine's clock when none is injected: a :class:`ScaledClock` if
    ``$FLOWDECK_CLOCK_SPEED`` is set (reading ``$FLOWDECK_CLOCK_START``, epoch seconds or
    ISO 8601, default now, at the wall time ``$FLOWDECK_CLOCK_ANCHOR``, epoch seconds,
    default now), else the system clock. A testing aid for running months in minutes (bench/retention.py); a bad value
    is a ValueError naming the variable."""
    env = os.environ if environ is None else environ
    raw = (env.get(SPEED_ENV) or "").strip()
    if not raw:
        return SystemClock()
    try:
        speed = float(raw)
        start = parse_start(env[START_ENV]) if env.get(START_ENV, "").strip() else None
        anchor = float(env[ANCHOR_ENV]) if env.get(ANCHOR_ENV, "").strip() else None
        clock: Clock = (SystemClock() if speed == 1 and start is None
                        else ScaledClock(speed, start, anchor=anchor))
    except ValueError as exc:
        raise ValueError(f"${SPEED_ENV}={raw!r} / ${START_ENV}={env.get(START_ENV)!r}: "
                         f"{exc}") from None
    if isinstance(clock, ScaledClock):
        log.warning("simulated clock: %g x the wall, now %s (%s, a testing aid)", speed,
                    clock.utcnow().strftime("%Y-%m-%dT%H:%M:%SZ"), SPEED_ENV)
    return clock
