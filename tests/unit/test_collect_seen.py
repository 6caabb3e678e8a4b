"""The collect stage's duplicate memory (SeenTimestamps): bounded by the keys, not by the
records ever seen, and still dropping what a source sends again (issue 19, rss_growth_soak)."""

from __future__ import annotations

import tracemalloc

from test_stages import COLLECT, MIN, NOW, T0, flow_of, iso, obs

from flowdeck.pipeline.model import Batch
from flowdeck.pipeline.stages.collect import Collector, SeenTimestamps


def _run(c: Collector, items: list, raw_id: int = 1) -> Batch:
    b = Batch("w", "a", raw_id, NOW, items=items)
    c.run(b, NOW)
    return b


def test_a_re_sent_window_is_dropped_and_a_late_reading_inside_it_is_kept():
    c = Collector("w", flow_of(COLLECT.replace("timestamps: {max_future: 5m, skew: 30s}",
                                               "timestamps: {max_future: 1000d}")))
    # A source that re-sends its last hour each poll, one reading a minute, 20 stations,
    # and once in a while a reading it had missed arrives late.
    hour = [obs(f"K{k}", iso(T0 + m * MIN), float(m)) for m in range(60) for k in range(20)
            if (k, m) != (3, 30)]
    first = _run(c, hour)
    assert len(first.records) == 60 * 20 - 1 and not first.dropped
    later = hour[20:] + [obs(f"K{k}", iso(T0 + 60 * MIN), 1.0) for k in range(20)]
    later.append(obs("K3", iso(T0 + 30 * MIN), 7.0))  # the missed one, late
    second = _run(c, later, raw_id=2)
    assert sorted((r.key, (r.ts - T0) // MIN) for r in second.records) == sorted(
        [(f"K{k}", 60) for k in range(20)] + [("K3", 30)])
    assert second.dropped["duplicate"] == len(hour) - 20
    # The late one is remembered too: sent again, it is a duplicate.
    third = _run(c, [obs("K3", iso(T0 + 30 * MIN), 7.0)], raw_id=3)
    assert not third.records and third.dropped["duplicate"] == 1


def test_the_memory_keeps_each_keys_newest_timestamps_and_stays_bounded():
    seen = SeenTimestamps(limit=1_000, per_key=16)
    for ts in range(100_000):  # one key, many records: at most limit * 1.25 remembered
        assert seen.add("k", ts)
    assert len(seen) <= 1_250
    assert ("k", 99_999) in seen and ("k", 99_000) in seen and ("k", 10) not in seen
    assert not seen.add("k", 99_500)  # recent: a duplicate
    for k in range(1_000):  # many keys: the share per key shrinks, never below per_key
        for ts in range(50):
            seen.add(f"s{k}", ts)
    assert seen.cap() == 16
    for k in range(1_000):
        assert (f"s{k}", 49) in seen and (f"s{k}", 34) in seen and (f"s{k}", 20) not in seen
        assert not seen.add(f"s{k}", 40)
    assert len(seen) <= 1_001 * 20  # per_key and its quarter's slack, for every key
    seen.add("k", 100_000)  # the old big key, trimmed to its share by its next record
    assert len(seen.by_key["k"]) <= 20


def test_a_million_records_of_600_keys_cost_a_few_megabytes_not_hundreds():
    seen = SeenTimestamps()  # the defaults a source gets
    ts0 = T0
    tracemalloc.start()
    try:
        for i in range(400_000):  # warm: every key has been trimmed to its share
            seen.add(f"K{i % 600}", ts0 + i)
        before = tracemalloc.get_traced_memory()[0]
        for i in range(400_000, 1_000_000):
            assert seen.add(f"K{i % 600}", ts0 + i)
        size = tracemalloc.get_traced_memory()[0]
        grew = size - before
    finally:
        tracemalloc.stop()
    assert len(seen) <= 200_000 * 5 // 4
    assert all((f"K{i % 600}", ts0 + i) in seen for i in range(999_000, 1_000_000))
    assert size < 4 * 2**20, size  # the old OrderedDicts of pairs and hashes: ~70 MB
    assert grew < 2**18, grew  # flat once warm
