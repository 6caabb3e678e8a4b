"""One flow's state in the engine (its stage chain, sources, breakers, counters) and the
summary of one run."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from flowdeck.pipeline.config import Config, FlowConfig
from flowdeck.pipeline.core.shapes import RunSource, RunSummaryDict
from flowdeck.pipeline.engine.breakers import CLOSED, Breaker, BreakerSettings
from flowdeck.pipeline.engine.failover import SourceHealth
from flowdeck.pipeline.model import STAGES, StageStats
from flowdeck.pipeline.sources.base import Source
from flowdeck.pipeline.stages.chain import StageChain


@dataclass
class RunSummary:
    flow: str
    run_id: int | None
    trigger: str
    started_ms: int
    finished_ms: int = 0
    status: str = "ok"
    stages: dict[str, StageStats] = field(default_factory=lambda: {s: StageStats()
                                                                   for s in STAGES})
    sources: dict[str, RunSource] = field(default_factory=dict)
    payloads: int = 0
    quarantined: int = 0
    issues_raised: int = 0
    issues_opened: int = 0
    conflicts: int = 0
    anomalies: int = 0
    buffered: int = 0  # payloads spooled because the store was unavailable
    error: str | None = None
    changed_keys: set[str] = field(default_factory=set)  # keys with new values stored
    all_quarantined: bool = False  # records came in, every one was quarantined

    def as_dict(self) -> RunSummaryDict:
        return {"flow": self.flow, "run_id": self.run_id, "trigger": self.trigger,
                "status": self.status, "started_ms": self.started_ms,
                "finished_ms": self.finished_ms,
                "duration_ms": self.finished_ms - self.started_ms,
                "payloads": self.payloads, "quarantined": self.quarantined,
                "issues_raised": self.issues_raised, "issues_opened": self.issues_opened,
                "conflicts": self.conflicts, "anomalies": self.anomalies,
                "buffered": self.buffered,
                "stages": {k: v.as_dict() for k, v in self.stages.items()},
                "sources": self.sources, "error": self.error}


class FlowRuntime:
    """A flow's stages, sources and counters."""

    def __init__(self, name: str, cfg: FlowConfig, config: Config) -> None:
        self.name = name
        self.cfg = cfg
        self.chain = StageChain(name, cfg, config)
        self.metrics = cfg.metrics()
        self.fetchers: dict[str, Source] = {}  # opened at start (sources.SOURCES)
        self.health: dict[str, SourceHealth] = {s.name: SourceHealth() for s in cfg.sources}
        self.version_id: int | None = None
        self.paused = False
        self.totals: dict[str, StageStats] = {s: StageStats() for s in STAGES}
        self.runs = 0
        self.failed_runs = 0
        self.last_run: RunSummary | None = None
        self.last_success_ms: int | None = None
        self.throughput: deque[tuple[int, int]] = deque(maxlen=120)  # (finished_ms, records out)
        self.running = False
        self.lock = asyncio.Lock()
        b = cfg.recovery.breaker
        self.breaker_settings = BreakerSettings(
            window=b.window, min_requests=b.min_requests, failure_rate=b.failure_rate,
            cooldown_s=b.cooldown, max_cooldown_s=b.max_cooldown, probes=b.probes)
        self.breakers = {s.name: Breaker(self.breaker_settings) for s in cfg.sources}
        self.pinned: str | None = None  # operator's forced failover: only this source
        self.primary: str | None = None  # best source that answered in the last run
        self.active: list[str] = []  # sources that answered in the last run
        self.incident = False  # every source down: serving last-known-good, marked stale
        self.store_down_since: int | None = None  # this flow met the store unavailable
        self.resume_pending = False  # committed payloads left unprocessed by a store failure
        # Sources whose field paths were checked against a real payload (the first one with
        # records in it since this engine started): a path that matches nothing is said once.
        self.paths_checked: set[str] = set()
        # L1 entries dropped just before a run's records event, reported by the run's
        # invalidation (Engine._publish_stored)
        self.dropped_early: dict[str, int] = {}
        self.spool_full_noted = False

    def state(self) -> str:
        if self.paused:
            return "paused"
        enabled = [s.name for s in self.cfg.sources if s.enabled]
        down = [s for s in enabled if self.health[s].consecutive_failures > 0
                or self.breakers[s].state != CLOSED]
        if self.incident or (enabled and len(down) == len(enabled)):
            return "failing"
        if down or self.store_down_since is not None or (
                self.last_run and self.last_run.status != "ok"):
            return "degraded"
        if any(self.health[s].stale or self.health[s].error_rate_high for s in enabled):
            return "degraded"
        return "healthy"

    def account(self, summary: RunSummary) -> None:
        """A finished run into the flow's counters."""
        self.runs += 1
        self.last_run = summary
        if summary.status == "failed":
            self.failed_runs += 1
        else:
            self.last_success_ms = summary.finished_ms
        for k, v in summary.stages.items():
            self.totals[k].add(v)
        self.throughput.append((summary.finished_ms, summary.stages["store"].records_out))
