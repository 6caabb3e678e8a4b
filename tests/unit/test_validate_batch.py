"""The validate stage's per-value checks (the path most records take) decide exactly
as the pydantic model does: for any batch, the records kept (their values, types and key
order), the records quarantined and every message are those of the model alone."""

from __future__ import annotations

import copy

from hypothesis import given, settings
from hypothesis import strategies as st

from flowdeck.pipeline.config import parse_config
from flowdeck.pipeline.model import Batch, Rec
from flowdeck.pipeline.stages.validate import Validator

CONFIG = """
flows:
  f:
    key: station
    sources:
      - name: feed
        kind: file
        path: unused.jsonl
        format: jsonl
        fields: {station: s, ts: t, temperature: temp, pressure: p, count: c, ok: ok,
                 kind: kind, level: level, note: note}
        units: {temperature: degF}
    fields:
      station: {type: str, required: true, pattern: "^[A-Z0-9]{4}$"}
      temperature: {type: float, required: true, unit: degC, range: [-90, 60]}
      pressure: {type: float, range: [850, 1090]}
      count: {type: int, range: [0, 100]}
      ok: {type: bool}
      kind: {type: str, allowed: [a, b]}
      level: {type: int, allowed: [1, 2, 3]}
      note: {type: str}
    rules: ["pressure > 900"]
"""
FLOW = parse_config(CONFIG, "f.yaml").flows["f"]

ANY = st.one_of(st.none(), st.booleans(), st.integers(-200, 2000), st.floats(-200, 2000),
                st.floats(allow_nan=True, allow_infinity=True),
                st.sampled_from(["S001", "S00", "s001", "S001\n", " 12 ", "1e3", "yes", "a",
                                 "b", "2", "2.0", "nan", ""]),
                st.lists(st.integers(), max_size=2))
RECORD = st.dictionaries(st.sampled_from(
    ["station", "temperature", "pressure", "count", "ok", "kind", "level", "note", "extra"]),
    ANY)
GOOD = st.fixed_dictionaries(
    {"station": st.sampled_from(["S001", "AB12"]), "temperature": st.floats(-100, 140),
     "pressure": st.one_of(st.none(), st.integers(800, 1100), st.floats(800, 1100),
                           st.sampled_from([float("nan"), float("inf"), True, "950"])),
     "count": st.one_of(st.none(), st.integers(-1, 101), st.floats(0, 100)),
     "ok": st.one_of(st.none(), st.booleans(), st.sampled_from(["yes", "0"])),
     "kind": st.sampled_from(["a", "b", "c", None]),
     "level": st.sampled_from([1, 2, 4, 2.0, "3", None]), "note": st.sampled_from(["", "x", 5])})

# Every field present, in the model's order: the records whose dicts are kept (coerced in
# place) when the whole batch is like that.
FULL = st.tuples(
    st.sampled_from(["S001", "AB12"]), st.floats(-100, 140),
    st.one_of(st.integers(850, 1090), st.floats(850, 1090)),
    st.one_of(st.integers(0, 100), st.sampled_from([3.0, "7"])),
    st.one_of(st.booleans(), st.sampled_from(["yes", 0])), st.sampled_from(["a", "b"]),
    st.sampled_from([1, 2, 2.0, "3"]), st.sampled_from(["", "x", 5, 2.5]),
).map(lambda values: dict(zip(["station", "temperature", "pressure", "count", "ok", "kind",
                                "level", "note"], values, strict=True)))


def run(validator: Validator, datas: list[dict]) -> Batch:
    batch = Batch("f", "feed", 1, 0)
    batch.records = [Rec(f"k{i}", i, copy.deepcopy(d), "feed", 1, i) for i, d in enumerate(datas)]
    validator.run(batch, 0)
    return batch


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.lists(st.one_of(GOOD, RECORD), max_size=10), st.lists(FULL, max_size=6)))
def test_per_value_checks_decide_as_the_model(datas: list[dict]) -> None:
    fast = Validator("f", FLOW)
    model = Validator("f", FLOW)
    model.fast = {name: None for name in model.fast}  # every record through the model
    a, b = run(fast, datas), run(model, datas)
    assert [(r.key, list(r.data.items())) for r in a.records] == \
        [(r.key, list(r.data.items())) for r in b.records]
    assert [[type(v) for v in r.data.values()] for r in a.records] == \
        [[type(v) for v in r.data.values()] for r in b.records]
    assert [(q.item, q.reason, q.message) for q in a.quarantine] == \
        [(q.item, q.reason, q.message) for q in b.quarantine]


def test_a_bad_record_is_quarantined_and_its_neighbours_kept_in_order() -> None:
    good = {"station": "S001", "temperature": 50.0, "pressure": 1000}
    batch = run(Validator("f", FLOW), [good, {**good, "station": "S001\n"}, good,
                                       {**good, "pressure": 880}])
    assert [r.key for r in batch.records] == ["k0", "k2"]
    assert batch.records[0].data == {"station": "S001", "temperature": 50.0,
                                     "pressure": 1000.0, "count": None, "ok": None,
                                     "kind": None, "level": None, "note": None}
    assert [(q.item, q.reason) for q in batch.quarantine] == [(1, "invalid"), (3, "rule")]
    assert "String should match pattern" in batch.quarantine[0].message
