"""``Expr.over``: a derived field computed over a whole batch (transform's path) gives,
record for record, exactly what the expression gives called on each record: the same
values, the same types, None where one record's arithmetic fails (division by zero,
overflow, a string operand), whatever else the batch holds."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from flowdeck.pipeline.expr import compile_expr

TEXTS = ["temperature * 1.8 + 32", "a / b", "a - 2 * b", "(a + b) % 3", "a // b", "10 / a",
         "a * 1e308", "a + b * 2.5 - a / 7", "a", "a + 'x'", "a * 2", "2 - a", "1 + 2",
         "b // 0.0", "a % b", "coalesce(a, b) * 2", "a if b else 3", "abs(a) + b"]
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                   st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(["x", ""]),
                   st.floats(-1e6, 1e6))
FLOATS = st.floats(-1e6, 1e6)  # a float column: the one computed a column at a time


def same(got: object, want: object) -> bool:
    if isinstance(got, float) and isinstance(want, float):
        return (math.isnan(got) and math.isnan(want)) or (
            got == want and math.copysign(1, got) == math.copysign(1, want))
    return type(got) is type(want) and got == want


def batches(values: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(st.fixed_dictionaries(
        {"temperature": values, "a": values, "b": values}), max_size=12)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(TEXTS), st.one_of(batches(VALUES), batches(FLOATS)))
def test_over_a_batch_is_each_record_on_its_own(text: str, envs: list[dict]) -> None:
    expr = compile_expr(text)
    got = expr.over(envs)
    want = [expr(env) for env in envs]
    assert len(got) == len(want)
    assert all(same(g, w) for g, w in zip(got, want, strict=True)), (got, want)


def test_one_bad_record_is_none_and_the_others_are_computed() -> None:
    expr = compile_expr("10 / a")
    assert expr.over([{"a": 2.0}, {"a": 0.0}, {"a": 4.0}, {}]) == [5.0, None, 2.5, None]
    big = compile_expr("a * 1e308")
    assert big.over([{"a": 0.5}, {"a": 10.0}]) == [5e307, None]  # overflow from finite: None
