"""Collect's de-duplication memory is bounded and forgets each key's oldest readings first:
a reading among a key's newest remembered timestamps is a duplicate, an older one is new."""

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


def test_each_key_forgets_its_oldest_readings_first() -> None:
    c = Collector("f", parse_config(CONFIG, "f.yaml").flows["f"])
    c.sources["feed"].seen = collect.SeenTimestamps(limit=3, per_key=3)
    first = [("A", T0), ("A", T0 + 1), ("A", T0 + 2), ("A", T0 + 3)]
    assert collected(c, first) == first
    # Only A's newest three are remembered: T0 was forgotten, the rest are duplicates.
    assert collected(c, first) == [("A", T0)]
    assert collected(c, [("A", T0 + 1)]) == []  # among the newest three still
    assert collected(c, [("A", T0 + 4)]) == [("A", T0 + 4)]  # new; T0 + 1 goes
    assert collected(c, [("A", T0 + 1)]) == [("A", T0 + 1)]  # forgotten by then


def test_a_forgotten_pair_may_come_again() -> None:
    c = Collector("f", parse_config(CONFIG, "f.yaml").flows["f"])
    assert collected(c, [("A", T0), ("B", T0)]) == [("A", T0), ("B", T0)]
    c.forget("feed", [("A", T0)])
    assert collected(c, [("A", T0), ("B", T0)]) == [("A", T0)]
