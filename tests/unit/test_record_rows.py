"""The records rows a batch is written as: encoded a column at a time (``record_rows``)
they are exactly the rows the record-by-record encoder gives (``record_rows_one_by_one``,
the store's encoder before the column path), value for value and byte for byte, for the
common shape the column path takes and for every shape it hands back."""

from __future__ import annotations

import copy
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowdeck.storage.codec import (
    RECORD_COLS,
    RECORD_JSON,
    _rows_by_column,
    record_rows,
    record_rows_one_by_one,
)

T = 1_795_000_000_000


def rec(i: int, key: str | None = None, **over) -> dict:
    key = key or f"S{i % 7:02d}"
    ts = T + i * 1000
    data = {"station": key, "temperature": 10 + (i % 37) * 0.5, "pressure": 1000.0 + i % 20,
            "n": i, "ok": i % 2 == 0, "region": "R1"}
    r = {"flow": "f", "key": key, "ts_ms": ts, "data": data, "quality": 1.0,
         "anomaly_score": 0.25 * (i % 3), "anomalous": i % 5 == 0, "flags": [],
         "sources": ["feed"], "raw_ids": [3], "version_id": 1,
         "contributions": {"feed": {"v": data, "ts": ts, "raw": 3, "q": 1.0, "f": []}},
         "updated_ms": T}
    r.update(over)
    return r


def same_rows(records: list[dict]) -> list[tuple]:
    """record_rows equals the one-by-one rows, column by column, with the same types
    (1 == 1.0 == True would hide a changed type), and leaves the records as they were."""
    before = copy.deepcopy(records)
    fast, slow = record_rows(records), record_rows_one_by_one(records)
    assert len(fast) == len(slow)
    for a, b in zip(fast, slow, strict=True):
        for col, x, y in zip(RECORD_COLS, a, b, strict=True):
            assert type(x) is type(y), col
            if isinstance(x, float) and math.isnan(x):
                assert math.isnan(y), col
            else:
                assert x == y, (col, x, y)
    assert records == before or _has_nan(records)
    return fast


def _has_nan(records) -> bool:
    return any(isinstance(v, float) and math.isnan(v) for r in records
               for v in (*r["data"].values(), r["quality"]))


def test_the_common_shape_goes_by_column_and_gives_the_same_rows():
    records = [rec(i) for i in range(600)]  # more than one part (codec._CHUNK)
    assert _rows_by_column(records) is not None  # the fast path itself, not its fallback
    rows = same_rows(records)
    assert rows[0][RECORD_COLS.index("contributions")] == '"row"'
    assert rows[0][RECORD_COLS.index("data")] == (
        '{"station":"S00","temperature":10.0,"pressure":1000.0,"n":0,"ok":true,'
        '"region":"R1"}')


@pytest.mark.parametrize("change", [
    # data values the column path must encode as dumps() does, or hand back
    lambda r: r["data"].update(temperature=float("nan")),
    lambda r: r["data"].update(temperature=float("-inf")),
    lambda r: r["data"].update(gone=None),
    lambda r: r["data"].update(name="null"),
    lambda r: r["data"].update(name='a"},{"b":1'),  # the cut inside a string
    lambda r: r["data"].update(name="line\nnext\ttab \\ back"),
    lambda r: r["data"].update(name="Zürich ☃ \u2028"),
    lambda r: r["data"].update(big=2 ** 70),
    lambda r: r["data"].update(nested={"a": [1, 2.5]}),
    lambda r: r["data"].update(items=[1, 2]),
    lambda r: r["data"].update({1: "int key"}),
    lambda r: r.update(data={}),
    # lists
    lambda r: r.update(flags=["late", "clamped"]),
    lambda r: r.update(flags=[1.0]),
    lambda r: r.update(flags=[True]),
    lambda r: r.update(raw_ids=[3, 4], sources=["a", "b"]),
    lambda r: r.update(raw_ids=()),
    # contributions that are not the row's own
    lambda r: r.update(contributions={}),
    lambda r: r.update(contributions={"feed": {"v": {"x": 1}, "ts": r["ts_ms"], "raw": 3,
                                               "q": 1.0, "f": []}}),
    lambda r: r.update(contributions={"feed": dict(r["contributions"]["feed"], ts=1)}),
    lambda r: r.update(contributions={"feed": dict(r["contributions"]["feed"], f=[1.0])}),
    lambda r: r.update(contributions={"feed": dict(r["contributions"]["feed"], q=1)}),
    lambda r: r.update(contributions={"a": dict(r["contributions"]["feed"]),
                                      "b": dict(r["contributions"]["feed"])},
                       sources=["a", "b"]),
    lambda r: r.update(contributions={"other": dict(r["contributions"]["feed"])}),
    lambda r: r.update(contributions={"feed": {"v": r["data"]}}),
    lambda r: r.update(quality=float("nan"),
                       contributions={"feed": dict(r["contributions"]["feed"],
                                                   q=float("nan"))}),
    # other columns
    lambda r: r.update(anomalous=1),
    lambda r: r.update(quality=1),
    lambda r: r.update(version_id=None),
    lambda r: r.pop("anomaly_score"),
    lambda r: r.pop("version_id"),
])
@pytest.mark.parametrize("where", ["one", "one in a later part", "all"])
def test_any_other_shape_gives_the_same_rows(change, where):
    records = [rec(i) for i in range(30 if where != "one in a later part" else 600)]
    for r in records if where == "all" else records[-7:-6]:
        change(r)
    same_rows(records)


def test_the_list_cache_of_the_one_by_one_path_is_kept_for_lists_of_other_types():
    # Its cache is keyed by equality, so [1] and [1.0] in one batch share a text: the
    # column path hands such a batch back rather than write them otherwise.
    records = [rec(0, raw_ids=[1])] * 300 + [rec(1, flags=[1.0])]  # across parts too
    assert _rows_by_column(records) is None
    same_rows(records)


plain = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70),
                  st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(
    st.dictionaries(st.text(max_size=5), plain, max_size=5),
    st.sampled_from([[], ["late"], ["a", "b"], [1], [True]]),
    st.booleans(),  # a contribution that is the row's own
    st.sampled_from([1.0, 0.5, 1, float("nan")]),
), min_size=1, max_size=12))
def test_random_batches_give_the_same_rows(spec):
    records = []
    for i, (data, flags, own, q) in enumerate(spec):
        ts = T + i
        c = {"v": data if own else {"x": i}, "ts": ts, "raw": 3, "q": q, "f": list(flags)}
        records.append(rec(i, data=data, flags=flags, quality=q,
                           contributions={"feed": c}))
    same_rows(records)


def test_json_columns_are_text():
    for row in record_rows([rec(i) for i in range(3)]):
        for col in RECORD_JSON:
            assert isinstance(row[RECORD_COLS.index(col)], str)
