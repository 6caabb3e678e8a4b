"""Injected time: every component asks a Clock, so tests and snapshots are deterministic."""

from __future__ import annotations

import time
from datetime import UTC, datetime


class Clock:
    """Wall-clock time in epoch seconds (float). Subclass for tests."""

    def now(self) -> float:
        return time.time()

    def now_ms(self) -> int:
        return int(self.now() * 1000)

    def utcnow(self) -> datetime:
        return datetime.fromtimestamp(self.now(), tz=UTC)


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
