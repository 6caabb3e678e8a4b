"""Source recovery: circuit breakers with half-open probes and hysteresis.

Each source has a breaker. Outcomes of its fetches go into a sliding window;
when the failure rate over the window passes a threshold the breaker opens
and the source is not asked again until a cooldown has passed. Then it is
half-open: the next run probes it, and only after ``probes`` consecutive
successes does it close again. A failed probe reopens it with a doubled
cooldown (up to a maximum), so a flapping source does not flap the flow.

The state is plain data (``as_dict``/``from_dict``) so it survives restarts
in the store. Time comes from the injected clock.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from flowdeck.pipeline.core.shapes import BreakerSnapshot

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
BREAKER_CODES = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}


@dataclass(frozen=True)
class BreakerSettings:
    window: int = 10  # outcomes remembered
    min_requests: int = 3  # no opening before this many outcomes in the window
    failure_rate: float = 0.5  # open at or above this share of failures
    cooldown_s: float = 30.0  # first wait before probing
    max_cooldown_s: float = 600.0
    probes: int = 2  # consecutive successful probes to close


@dataclass
class Breaker:
    settings: BreakerSettings = field(default_factory=BreakerSettings)
    state: str = CLOSED
    outcomes: deque = field(default_factory=deque)  # True = success
    opened_ms: int | None = None
    retry_at_ms: int | None = None
    cooldown_s: float | None = None
    probe_successes: int = 0
    opens: int = 0

    def allows(self, now_ms: int) -> bool:
        """May this source be asked now? An open breaker turns half-open after its cooldown."""
        if self.state == OPEN and self.retry_at_ms is not None and now_ms >= self.retry_at_ms:
            self.state = HALF_OPEN
            self.probe_successes = 0
        return self.state != OPEN

    def failure_rate(self) -> float:
        if not self.outcomes:
            return 0.0
        return sum(1 for ok in self.outcomes if not ok) / len(self.outcomes)

    def record(self, ok: bool, now_ms: int) -> str | None:
        """Add an outcome. Returns the transition that happened: 'opened', 'reopened',
        'closed', or None."""
        s = self.settings
        self.outcomes.append(ok)
        while len(self.outcomes) > s.window:
            self.outcomes.popleft()
        if self.state == HALF_OPEN:
            if ok:
                self.probe_successes += 1
                if self.probe_successes >= s.probes:
                    self.reset()
                    return "closed"
                return None
            self._open(now_ms, (self.cooldown_s or s.cooldown_s) * 2)
            return "reopened"
        if self.state == CLOSED and not ok and len(self.outcomes) >= s.min_requests \
                and self.failure_rate() >= s.failure_rate:
            self._open(now_ms, s.cooldown_s)
            return "opened"
        return None

    def _open(self, now_ms: int, cooldown: float) -> None:
        cooldown = min(cooldown, self.settings.max_cooldown_s)
        self.state = OPEN
        self.opened_ms = now_ms
        self.cooldown_s = cooldown
        self.retry_at_ms = now_ms + int(cooldown * 1000)
        self.probe_successes = 0
        self.opens += 1

    def reset(self) -> None:
        self.state = CLOSED
        self.outcomes.clear()
        self.opened_ms = self.retry_at_ms = self.cooldown_s = None
        self.probe_successes = 0

    def as_dict(self) -> BreakerSnapshot:
        return {"state": self.state, "outcomes": list(self.outcomes), "opened_ms": self.opened_ms,
                "retry_at_ms": self.retry_at_ms, "cooldown_s": self.cooldown_s,
                "probe_successes": self.probe_successes, "opens": self.opens,
                "failure_rate": round(self.failure_rate(), 3)}

    @classmethod
    def from_dict(cls, data: dict, settings: BreakerSettings) -> Breaker:
        b = cls(settings=settings)
        b.state = data.get("state", CLOSED)
        b.outcomes = deque(data.get("outcomes", [])[-settings.window:])
        b.opened_ms = data.get("opened_ms")
        b.retry_at_ms = data.get("retry_at_ms")
        b.cooldown_s = data.get("cooldown_s")
        b.probe_successes = data.get("probe_successes", 0)
        b.opens = data.get("opens", 0)
        return b
