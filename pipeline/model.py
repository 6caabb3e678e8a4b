"""The data that moves through the stages: records in batches, and their counters."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from flowdeck.pipeline.core.shapes import StageCounts
from flowdeck.storage.model import IssueDraft, QuarantineRow

# The stage order, written here only (stages/chain.py runs it, the console shows it):
# per payload, from its bytes to scored records of one source ...
SOURCE_STAGES = ("collect", "validate", "transform", "enrich", "quality")
# ... then once per run, over every source's records together; then they are stored.
RUN_STAGES = ("resolve", "detect")
STAGES = (*SOURCE_STAGES, *RUN_STAGES, "store")
STAGE_TITLES = {
    "collect": "Collector",
    "validate": "Validator",
    "transform": "Transformer",
    "enrich": "Enricher",
    "quality": "Quality check",
    "resolve": "Conflict resolver",
    "detect": "Anomaly detector",
    "store": "Stores",
}


class Rec:
    """One record. ``data`` holds the flow's fields; the rest is what the stages learn."""

    __slots__ = ("key", "ts", "data", "source", "raw_id", "item", "flags", "quality",
                 "anomaly", "anomalous", "contrib", "sources", "raw_ids")

    def __init__(self, key: str, ts: int, data: dict, source: str, raw_id: int, item: int) -> None:
        self.key = key
        self.ts = ts  # epoch milliseconds, UTC
        self.data = data
        self.source = source
        self.raw_id = raw_id
        self.item = item  # index in the raw payload
        self.flags: list[str] = []
        self.quality = 1.0
        self.anomaly = 0.0
        self.anomalous = False
        self.contrib: dict[str, dict] | None = None  # set by resolve
        self.sources: list[str] = [source]
        self.raw_ids: list[int] = [raw_id]

    def __repr__(self) -> str:
        return f"Rec({self.key!r}, {self.ts}, {self.data!r}, source={self.source!r})"


@dataclass
class Batch:
    """One fetch's records (or, from resolve on, one run's merged records)."""

    flow: str
    source: str | None
    raw_id: int | None
    fetched_ms: int
    records: list[Rec] = field(default_factory=list)
    items: list[Any] = field(default_factory=list)  # decoded payload items, before collect
    quarantine: list[QuarantineRow] = field(default_factory=list)
    issues: list[IssueDraft] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)  # reason -> count (e.g. duplicates)

    def reject(self, rec: Rec | None, *, stage: str, reason: str, message: str,
               item: int | None = None, record: Any = None) -> None:
        """Quarantine a record (never silently drop it) with a reason and its raw link."""
        raw_id = rec.raw_id if rec is not None else self.raw_id
        idx = rec.item if rec is not None else (item if item is not None else -1)
        payload = record if record is not None else (
            {"key": rec.key, "ts": rec.ts, **rec.data} if rec is not None else None)
        self.quarantine.append(QuarantineRow(
            flow=self.flow, source=rec.source if rec is not None else (self.source or ""),
            raw_id=raw_id, item=idx, stage=stage, reason=reason, message=message,
            record=_jsonable(payload)))


def _jsonable(value: Any) -> Any:
    """Quarantined values go into a JSON column: make NaN/inf and odd types safe."""
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | bool):
        return value
    return repr(value)


@dataclass
class StageStats:
    """Counters of one stage for one run: records in, out, rejected, errors, and time."""

    records_in: int = 0
    records_out: int = 0
    rejected: int = 0
    dropped: int = 0
    errors: int = 0
    seconds: float = 0.0

    def add(self, other: StageStats) -> None:
        self.records_in += other.records_in
        self.records_out += other.records_out
        self.rejected += other.rejected
        self.dropped += other.dropped
        self.errors += other.errors
        self.seconds += other.seconds

    def as_dict(self) -> StageCounts:
        return {"in": self.records_in, "out": self.records_out, "rejected": self.rejected,
                "dropped": self.dropped, "errors": self.errors,
                "ms": round(self.seconds * 1000, 3)}
