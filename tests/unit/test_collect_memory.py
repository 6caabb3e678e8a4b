"""Collect's de-duplication memory is bounded and forgets the oldest first: a reading
seen again within the last SEEN_LIMIT readings is a duplicate, an older one is new."""

from __future__ import annotations

from flowdeck.pipeline.config import parse_config
from flowdeck.pipeline.model import Batch
from flowdeck.pipeline.stages import collect
from flowdeck.pipeline.stages.collect import Collector

CONFIG = """
flows:
  f:
    key: station
    sources:
      - name: feed
        kind: file
        path: unused.jsonl
        format: jsonl
        fields: {station: s, ts: t, v: v}
        timestamp: {format: epoch_ms}
    fields:
      station: {type: str, required: true}
      v: {type: float}
"""
T0 = 1_795_000_000_000


def collected(c: Collector, readings: list[tuple[str, int]]) -> list[tuple[str, int]]:
    batch = Batch("f", "feed", 1, T0)
    batch.items = [{"s": s, "t": t, "v": 1.0} for s, t in readings]
    c.run(batch, T0)
    return [(r.key, r.ts) for r in batch.records]


def test_the_oldest_readings_are_forgotten_first(monkeypatch) -> None:
    monkeypatch.setattr(collect, "SEEN_LIMIT", 3)
    c = Collector("f", parse_config(CONFIG, "f.yaml").flows["f"])
    first = [("A", T0), ("A", T0 + 1), ("A", T0 + 2), ("A", T0 + 3)]
    assert collected(c, first) == first
    # Only the newest three are remembered: T0 was forgotten, the rest are duplicates.
    assert collected(c, first) == [("A", T0)]
    assert collected(c, [("A", T0 + 1)]) == [("A", T0 + 1)]  # forgotten by then
    assert collected(c, [("A", T0 + 3)]) == []  # remembered still


def test_a_forgotten_pair_may_come_again() -> None:
    c = Collector("f", parse_config(CONFIG, "f.yaml").flows["f"])
    assert collected(c, [("A", T0), ("B", T0)]) == [("A", T0), ("B", T0)]
    c.forget("feed", [("A", T0)])
    assert collected(c, [("A", T0), ("B", T0)]) == [("A", T0)]
