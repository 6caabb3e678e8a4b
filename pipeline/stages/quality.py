"""Quality: a 0..1 score per record from completeness, validity, freshness and reliability."""

from __future__ import annotations

import operator

from flowdeck.pipeline.config import FlowConfig
from flowdeck.pipeline.model import Batch
from flowdeck.pipeline.stages.base import register
from flowdeck.storage.model import IssueDraft

VERSION = "quality/1"
# Flags that make a record less trustworthy, and how much each costs its validity.
FLAG_PENALTY = {"clock_skew": 0.5, "out_of_order": 0.25, "unenriched": 0.25, "conflict": 0.25}


@register("quality")
class QualityCheck:
    name = "quality"
    version = VERSION

    def __init__(self, flow_name: str, flow: FlowConfig) -> None:
        self.flow_name = flow_name
        w = flow.quality.weights
        total = (w.completeness + w.validity + w.freshness + w.reliability) or 1.0
        self.w = (w.completeness / total, w.validity / total, w.freshness / total,
                  w.reliability / total)
        self.threshold = flow.quality.threshold
        self.fields = [n for n in flow.fields if n not in (flow.ts,)]
        # The fields' values of a record as one tuple (validate gives every field a key).
        self.values = operator.itemgetter(*self.fields) if len(self.fields) > 1 else None
        # Historical flows (history: true, freshness: null) are not scored on age.
        self.freshness_ms = None if flow.historical else (flow.freshness or 0) * 1000
        self.reliability = {s.name: s.reliability for s in flow.sources}

    def score(self, data: dict, flags: list[str], age_ms: float, reliability: float) -> float:
        fields = self.fields
        present = sum(1 for n in fields if data.get(n) is not None)
        completeness = present / len(fields) if fields else 1.0
        validity = 1.0
        for f in flags:
            validity -= FLAG_PENALTY.get(f, 0.0)
        validity = max(validity, 0.0)
        fr = self.freshness_ms
        freshness = 1.0 if fr is None or age_ms <= fr else max(0.0, 1.0 - (age_ms - fr) / fr)
        wc, wv, wf, wr = self.w
        return round(wc * completeness + wv * validity + wf * freshness + wr * reliability, 4)

    def run(self, batch: Batch, now_ms: int, reliability: float | None = None) -> None:
        """Score each record. Freshness is measured at fetch time, so replays score the same."""
        rel = self.reliability.get(batch.source, 1.0) if reliability is None else reliability
        fetched = batch.fetched_ms
        threshold = self.threshold
        score = self.score
        getter, n_fields = self.values, len(self.fields)
        # A record without flags scores by how many of its fields are present and its age
        # alone: one score() per (count, age) and batch, then a lookup per record.
        known: dict[tuple[int, int], float] = {}
        low = []
        for rec in batch.records:
            flags = rec.flags
            age = fetched - rec.ts
            if flags or getter is None:
                q = score(rec.data, flags, age, rel)
            else:
                try:
                    present = n_fields - getter(rec.data).count(None)
                except KeyError:  # a field not in the record at all (not from validate)
                    q = score(rec.data, flags, age, rel)
                else:
                    cached = known.get((present, age))
                    if cached is None:
                        cached = known[(present, age)] = score(rec.data, flags, age, rel)
                    q = cached
            rec.quality = q
            if q < threshold:
                low.append(rec)
        if low:
            sample = low[:20]
            batch.issues.append(IssueDraft(
                flow=self.flow_name, kind="low_quality", severity="warning",
                title=f"{len(low)} record(s) from {batch.source} below quality "
                      f"{self.threshold:g}",
                fingerprint=f"low_quality:{self.flow_name}:{batch.source}",
                source=batch.source,
                detail={"count": len(low), "threshold": self.threshold,
                        "lowest": min(r.quality for r in low),
                        "keys": sorted({r.key for r in sample})},
                record_keys=[(r.key, r.ts) for r in sample],
                raw_ids=[batch.raw_id] if batch.raw_id is not None else []))
