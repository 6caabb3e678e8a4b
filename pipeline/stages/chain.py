"""The stage chain: a flow's stages, built from its config in the one stage order
(``model.SOURCE_STAGES`` then ``model.RUN_STAGES``), run over whole batches.

The engine runs every payload of a run through ``collect`` and ``refine``, then all of
them together through ``merge``; lineage (serve/queries.py) re-runs one stored payload
through ``collect`` and ``refine`` stage by stage; a replay is an engine run over stored
payloads. Each stage's time and counts go into the run's ``StageStats`` when a
``stats`` dict is given.
"""

from __future__ import annotations

import operator
import time
from collections.abc import Callable
from typing import cast

from flowdeck.pipeline.config import Config, FlowConfig
from flowdeck.pipeline.model import RUN_STAGES, SOURCE_STAGES, Batch, StageStats
from flowdeck.pipeline.stages.base import STAGE_FACTORIES, Stage
from flowdeck.pipeline.stages.collect import Collector
from flowdeck.pipeline.stages.detect import AnomalyDetector
from flowdeck.pipeline.stages.resolve import Resolver
from flowdeck.storage.model import RawDraft

_KEY_TS = operator.attrgetter("key", "ts")

# Called after each stage with the stage and the batch it has just changed (lineage).
AfterStage = Callable[[Stage, Batch], None]


def timed(stats: StageStats | None, n_in: int, batch: Batch, fn: Callable[[], None],
          t0: float | None = None) -> None:
    """Run one stage over ``batch``, adding its time and counts to ``stats``."""
    if stats is None:
        fn()
        return
    t = t0 if t0 is not None else time.perf_counter()
    q0 = len(batch.quarantine)
    d0 = sum(batch.dropped.values())
    try:
        fn()
    except Exception:
        stats.errors += 1
        raise
    finally:
        stats.seconds += time.perf_counter() - t
    stats.records_in += n_in
    stats.rejected += len(batch.quarantine) - q0
    stats.dropped += sum(batch.dropped.values()) - d0
    stats.records_out += len(batch.records)


class StageChain:
    """One flow's stages in order. ``collector`` (first: it decodes a payload),
    ``resolver`` (first of a run: it merges with what is stored) and ``detector``
    (warmed from stored history) are also reachable by name for what only they do."""

    def __init__(self, flow_name: str, flow: FlowConfig, config: Config) -> None:
        self.flow_name = flow_name
        self.stages: dict[str, Stage] = {
            name: STAGE_FACTORIES[name](flow_name, flow, config)
            for name in (*SOURCE_STAGES, *RUN_STAGES)}
        first, *rest = SOURCE_STAGES
        self.collector = cast(Collector, self.stages[first])
        self.source_stages: list[Stage] = [self.stages[n] for n in rest]
        first, *rest = RUN_STAGES
        self.resolver = cast(Resolver, self.stages[first])
        self.run_stages: list[Stage] = [self.stages[n] for n in rest]
        self.detector = cast(AnomalyDetector, self.stages["detect"])

    def versions(self) -> dict[str, str]:
        """Every stage's version, in order (stored as the flow's pipeline version)."""
        return {name: st.version for name, st in self.stages.items()}

    def collect(self, payload: RawDraft, now_ms: int, *, replay: bool = False,
                stats: dict[str, StageStats] | None = None) -> tuple[Batch, int]:
        """A committed payload decoded and collected into one batch of its source's
        records; returns it and how many items the payload held (collect's input)."""
        batch = Batch(self.flow_name, payload.source, payload.raw_id, payload.fetched_ms)
        t = time.perf_counter()
        collector = self.collector
        if payload.truncated:
            batch.reject(None, stage="collect", reason="too_large", item=-1,
                         message=f"payload larger than max_bytes "
                                 f"({len(payload.body)} bytes read before stopping)")
        else:
            collector.decode(batch, payload.body, payload.content_type)
        n_items = len(batch.items) or (1 if batch.quarantine else 0)
        timed(stats and stats[collector.name], n_items, batch,
              lambda: collector.run(batch, now_ms, replay=replay), t)
        return batch, n_items

    def refine(self, batch: Batch, now_ms: int, *, stats: dict[str, StageStats] | None = None,
               after: AfterStage | None = None) -> None:
        """The per-source stages after collect (validate ... quality) over one batch."""
        for stage in self.source_stages:
            timed(stats and stats[stage.name], len(batch.records), batch,
                  lambda s=stage: s.run(batch, now_ms))
            if after is not None:
                after(stage, batch)

    def merge(self, merged: Batch, now_ms: int,
              stored: Callable[[set[tuple[str, int]]], dict[tuple[str, int], dict]], *,
              stats: dict[str, StageStats] | None = None) -> None:
        """A run's records of every source through resolve, detect ...: resolve merges
        them with what ``stored`` returns for their (key, window) pairs (late sources
        merge in)."""
        t = time.perf_counter()
        resolver = self.resolver
        w = resolver.window_ms  # resolver.bucket(ts), inlined: once per record
        contributions = stored({(r.key, r.ts - r.ts % w) for r in merged.records} if w > 0
                               else set(map(_KEY_TS, merged.records)))
        timed(stats and stats[resolver.name], len(merged.records), merged,
              lambda: resolver.run(merged, now_ms, contributions), t)
        for stage in self.run_stages:
            timed(stats and stats[stage.name], len(merged.records), merged,
                  lambda s=stage: s.run(merged, now_ms))
