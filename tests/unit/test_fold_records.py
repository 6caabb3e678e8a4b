"""The roll-ups' fold of a batch from its records (``fold_records``: a key at a time, a
minute of values summed at once) equals folding the points the engine used to build
one by one (``fold_points`` of (flow, key, metric, ts, value) for every finite number,
ints as floats, bools and strings and NaN left out), for batches of every shape."""

from __future__ import annotations

import math
import random
from decimal import Decimal

import pytest

from flowdeck.storage.derived import fold_points, fold_records

METRICS = ("temp", "pressure", "count")
ODD = [None, True, False, "12.5", math.nan, math.inf, -math.inf, 7, -3, 0, Decimal("2.5")]


def points_of(records: list[dict]) -> list[tuple]:
    """The points as the engine built them before ``BatchWrite.metrics``."""
    out = []
    for r in records:
        for m in METRICS:
            v = r["data"].get(m)
            tv = v.__class__
            if tv is float:
                if v - v == 0:
                    out.append((r["flow"], r["key"], m, r["ts_ms"], v))
            elif tv is int or (tv is not bool and isinstance(v, int | float)):
                if v - v == 0:
                    out.append((r["flow"], r["key"], m, r["ts_ms"], float(v)))
    return out


def batch(rng: random.Random, n: int, odd: float) -> list[dict]:
    t0 = 1_795_521_600_000
    out = []
    for _ in range(n):
        data = {}
        for m in METRICS:
            if rng.random() < odd:
                if rng.random() < 0.2:
                    continue  # the field missing
                data[m] = rng.choice(ODD)
            else:
                data[m] = round(rng.uniform(-50, 50), 3)
        out.append({"flow": rng.choice(["f", "g"]), "key": rng.choice("ABCDE"),
                    "ts_ms": t0 + rng.randint(0, 600) * 1000, "data": data})
    return out


@pytest.mark.parametrize("odd", [0.0, 0.05, 0.5, 1.0])
def test_folding_records_equals_folding_their_points(odd):
    rng = random.Random(int(odd * 100))
    for _ in range(30):
        records = batch(rng, rng.randint(0, 300), odd)
        want = fold_points(points_of(records), {})
        got = fold_records(records, METRICS, {})
        assert got.keys() == want.keys()
        for k, (n, total, lo, hi) in want.items():
            assert got[k][0] == n and got[k][2] == lo and got[k][3] == hi
            assert got[k][1] == pytest.approx(total, rel=1e-12, abs=1e-9)  # summed in time order


def test_folding_adds_to_what_is_folded_already():
    rng = random.Random(5)
    a, b = batch(rng, 200, 0.1), batch(rng, 200, 0.1)
    both = fold_records(b, METRICS, fold_records(a, METRICS, {}))
    want = fold_points(points_of(a + b), {})
    assert {k: (v[0], v[2], v[3]) for k, v in both.items()} == {
        k: (v[0], v[2], v[3]) for k, v in want.items()}
