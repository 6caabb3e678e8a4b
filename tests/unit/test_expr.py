"""Tests for flowdeck.pipeline.expr: the safe expression language."""

from __future__ import annotations

import math
import operator
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowdeck.pipeline.expr import Expr, ExprError, compile_expr


def ev(text: str, **env: object) -> object:
    return compile_expr(text)(env)


# --------------------------------------------------------------------------
# Basics
# --------------------------------------------------------------------------


def test_derived_field_example() -> None:
    expr = compile_expr("temp * 1.8 + 32")
    assert isinstance(expr, Expr)
    assert expr.text == "temp * 1.8 + 32"
    assert expr.names == frozenset({"temp"})
    assert expr({"temp": 100}) == pytest.approx(212.0)
    assert expr({"temp": -40.0}) == pytest.approx(-40.0)


def test_rule_example() -> None:
    rule = compile_expr("temp_min <= temp_max")
    assert rule.names == frozenset({"temp_min", "temp_max"})
    assert rule({"temp_min": 1, "temp_max": 2}) is True
    assert rule({"temp_min": 3, "temp_max": 2}) is False


def test_names_exclude_function_names() -> None:
    assert compile_expr("round(a, 1) + max(b, c)").names == frozenset({"a", "b", "c"})
    assert compile_expr("1 + 2").names == frozenset()


def test_env_can_be_any_mapping() -> None:
    from types import MappingProxyType

    assert compile_expr("a + 1")(MappingProxyType({"a": 1})) == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("2 ** 3 ** 2", 512),  # right associative
        ("-2 ** 2", -4),  # ** binds tighter than unary minus
        ("(-2) ** 2", 4),
        ("10 - 4 - 3", 3),  # left associative
        ("100 / 10 / 5", 2.0),
        ("7 // 2", 3),
        ("-7 // 2", -4),
        ("7 % 3", 1),
        ("-7 % 3", 2),
        ("2 * 3 % 4", 2),
        ("1 + 2 < 4", True),
        ("not 1 + 1 == 3", True),
        ("1 < 2 and 3 < 2 or 5 > 4", True),
        ("not 0 and 1", 1),
        ("1 if 0 else 2 + 3", 5),
        ("+5", 5),
        ("- -5", 5),
        ("1e3 + 0.5", 1000.5),
        ("'ab' + 'cd'", "abcd"),
        ("'ab' * 3", "ababab"),
        ("3 * 'ab'", "ababab"),
        ("True + 1", 2),
    ],
)
def test_precedence_and_operators(text: str, expected: object) -> None:
    assert ev(text) == expected
    assert ev(text) == eval(text)  # the oracle: Python's own semantics


def test_constants() -> None:
    assert ev("None") is None
    assert ev("True") is True
    assert ev("'x'") == "x"
    assert ev("1.5") == 1.5


def test_missing_name_is_none() -> None:
    assert ev("nope") is None
    assert ev("nope + 1") is None


def test_whitespace_and_multiline() -> None:
    assert ev("   a + 1  ", a=1) == 2
    assert ev("(a +\n 1)", a=1) == 2


def test_expr_equality_and_repr() -> None:
    assert compile_expr("a + 1") == compile_expr("a + 1")
    assert hash(compile_expr("a + 1")) == hash(compile_expr("a + 1"))
    assert compile_expr("a + 1") != compile_expr("a + 2")
    assert repr(compile_expr("a + 1")) == "Expr('a + 1')"


def test_non_string_text_is_type_error() -> None:
    with pytest.raises(TypeError):
        compile_expr(42)  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# Null semantics
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "x + 1",
        "1 + x",
        "x - y",
        "x * 2",
        "x / 2",
        "x // 2",
        "x % 2",
        "x ** 2",
        "2 ** x",
        "-x",
        "+x",
        "abs(x)",
        "min(x, 1)",
        "max(1, x, 2)",
        "round(x)",
        "round(1.5, x)",
        "sqrt(x)",
        "log(x)",
        "log10(x)",
        "exp(x)",
        "floor(x)",
        "ceil(x)",
        "clamp(x, 0, 1)",
        "clamp(0.5, x, 1)",
        "upper(x)",
        "lower(x)",
        "x + None",
        "None * 2",
    ],
)
def test_none_propagates_through_arithmetic_and_functions(text: str) -> None:
    assert ev(text, x=None, y=1) is None


@pytest.mark.parametrize(
    "text",
    [
        "x < 1",
        "x <= 1",
        "x > 1",
        "x >= 1",
        "x == 1",
        "x != 1",
        "1 == x",
        "x == None",
        "x != None",
        "x in (1, 2)",
        "x not in (1, 2)",
        "0 < x < 2",
        "0 < 1 < x",
    ],
)
def test_comparisons_with_none_are_false(text: str) -> None:
    assert ev(text, x=None) is False


def test_coalesce_concat_is_null_handle_none() -> None:
    assert ev("coalesce(a, b, 3)", a=None, b=None) == 3
    assert ev("coalesce(a, b, 3)", a=None, b=0) == 0
    assert ev("coalesce(a)", a=None) is None
    assert ev("concat('a', x, 1, '-', 2.5)", x=None) == "a1-2.5"
    assert ev("concat(x)", x=None) == ""
    assert ev("is_null(x)", x=None) is True
    assert ev("is_null(x)", x=0) is False
    assert ev("is_null(missing)") is True


def test_coalesce_is_lazy() -> None:
    calls: list[str] = []

    class Env(dict):
        def get(self, key, default=None):
            calls.append(key)
            return super().get(key, default)

    assert compile_expr("coalesce(a, b)")(Env(a=1, b=2)) == 1
    assert calls == ["a"]


def test_boolean_logic_uses_truthiness() -> None:
    assert ev("a and b", a=None, b=1) is None
    assert ev("a or b", a=None, b=5) == 5
    assert ev("not a", a=None) is True
    assert ev("1 if a else 2", a=None) == 2
    assert ev("a > 0 and b > 0", a=1, b=None) is False


# --------------------------------------------------------------------------
# Comparisons
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "x", "expected"),
    [
        ("0 < x < 10", 5, True),
        ("0 < x < 10", 10, False),
        ("0 < x < 10", -1, False),
        ("0 <= x <= 10 != 11", 10, True),
        ("1 < 2 < x < 4 < 5", 3, True),
        ("1 < 2 < x < 4 < 5", 4, False),
        ("x == 1 == 1.0", 1, True),
    ],
)
def test_chained_comparisons(text: str, x: object, expected: bool) -> None:
    assert ev(text, x=x) is expected


def test_chained_comparison_evaluates_each_operand_once() -> None:
    calls: list[str] = []

    class Env(dict):
        def get(self, key, default=None):
            calls.append(key)
            return super().get(key, default)

    assert compile_expr("0 < x < 10")(Env(x=5)) is True
    assert calls == ["x"]


def test_membership() -> None:
    assert ev("x in (1, 2, -3)", x=-3) is True
    assert ev("x in [1, 2]", x=3) is False
    assert ev("x not in ('N', 'S')", x="E") is True
    assert ev("x not in ('N', 'S')", x="N") is False
    assert ev("x in ()", x=1) is False
    assert ev("x in (1,)", x=1.0) is True
    assert ev("x in (1, 2)", x=[1]) is False  # unhashable value: no match, no error


def test_incomparable_types_compare_false() -> None:
    assert ev("a < b", a="x", b=1) is False
    assert ev("a == b", a="1", b=1) is False
    assert ev("0 < a < 2", a="1") is False


def test_string_comparisons() -> None:
    assert ev("name == 'KSEA'", name="KSEA") is True
    assert ev("'a' < name", name="b") is True


# --------------------------------------------------------------------------
# Functions
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("abs(-2.5)", 2.5),
        ("min(3, 1, 2)", 1),
        ("max(3, 1, 2)", 3),
        ("min(4)", 4),
        ("max('a', 'b')", "b"),
        ("round(2.567, 2)", 2.57),
        ("round(2.5)", 2),
        ("round(1234, -2)", 1200),
        ("sqrt(16)", 4.0),
        ("log(1)", 0.0),
        ("log(8, 2)", 3.0),
        ("log10(1000)", 3.0),
        ("exp(0)", 1.0),
        ("floor(-1.5)", -2),
        ("ceil(1.2)", 2),
        ("clamp(5, 0, 3)", 3),
        ("clamp(-5, 0, 3)", 0),
        ("clamp(2, 0, 3)", 2),
        ("upper('abc')", "ABC"),
        ("lower('ABC')", "abc"),
        ("concat('t=', 20, 'C')", "t=20C"),
    ],
)
def test_functions(text: str, expected: object) -> None:
    result = ev(text)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    "text",
    [
        "abs('x')",
        "sqrt('4')",
        "upper(1)",
        "lower(None)",
        "min(1, 'a')",
        "clamp('a', 0, 1)",
        "round(1.5, 1.5)",
        "round('1.5')",
        "log(8, 'x')",
        "'a' - 'b'",
        "'a' + 1",
        "'a' * 'b'",
        "'a' * 1.5",
        "'%s' % 1",
        "-'a'",
        "x * 2",
    ],
)
def test_type_mismatches_give_none(text: str) -> None:
    assert ev(text, x=[1, 2]) is None


def test_function_arity_is_checked_at_compile_time() -> None:
    for text, message in [
        ("abs()", "abs() takes 1 argument, got 0"),
        ("abs(1, 2)", "abs() takes 1 argument, got 2"),
        ("clamp(1, 2)", "clamp() takes 3 arguments, got 2"),
        ("round(1, 2, 3)", "round() takes 1 to 2 arguments, got 3"),
        ("min()", "min() takes at least 1 argument, got 0"),
        ("coalesce()", "coalesce() takes at least 1 argument, got 0"),
    ]:
        with pytest.raises(ExprError, match=message.replace("(", r"\(").replace(")", r"\)")):
            compile_expr(text)


# --------------------------------------------------------------------------
# Math errors and resource guards never raise at evaluation time
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "x / 0",
        "x // 0",
        "x % 0",
        "1.5 / 0.0",
        "0 ** -1",
        "sqrt(-1)",
        "log(0)",
        "log(-1)",
        "log(8, 1)",
        "log10(0)",
        "exp(1000)",
        "1e308 * 10",
        "-1e308 - 1e308",
        "1e300 ** 2",
        "(-8) ** 0.5",  # complex result
        "2 ** 1001",
        "2 ** -1001",
        "1.0001 ** 100000",
        "floor(1e308 * 10)",
        "10 ** 1000 * 1.0",  # int too large to convert to float
        "9 ** 999 * 9 ** 999 * 9 ** 999",  # int result over the size limit
        "(9 ** 999) ** 3",
        "'ab' * 5001",
        "'x' * 10000 + 'y'",
        "upper(s)",
    ],
)
def test_math_errors_and_guards_give_none(text: str) -> None:
    assert ev(text, x=1, s="x" * 10_000 + "ß") is None


def test_nan_and_inf_operands_follow_python() -> None:
    inf, nan = math.inf, math.nan
    assert ev("x + 1", x=inf) == inf
    assert math.isnan(ev("x - x", x=inf))
    assert math.isnan(ev("x * 2", x=nan))
    assert ev("x > 1", x=nan) is False


def test_guard_boundaries_are_inclusive() -> None:
    assert ev("2 ** 1000") == 2**1000
    assert ev("2.0 ** -1000") == 2.0**-1000
    assert ev("'ab' * 5000") == "ab" * 5000
    assert ev("x + 'y'", x="x" * 9_999) == "x" * 9_999 + "y"


def test_long_environment_strings_pass_through_unchanged() -> None:
    big = "x" * 50_000
    assert ev("s", s=big) == big
    assert ev("coalesce(None, s)", s=big) == big


def test_text_length_limit() -> None:
    compile_expr("+".join(["1"] * 40) + " " * (1000 - 79))  # exactly 1000 chars is fine
    with pytest.raises(ExprError, match="too long") as info:
        compile_expr("1" * 1001)
    assert info.value.col is None


def test_nesting_limit() -> None:
    with pytest.raises(ExprError, match="nested too deeply"):
        compile_expr("-" * 500 + "1")
    with pytest.raises(ExprError, match="nested too deeply|syntax error"):
        compile_expr("(" * 300 + "1" + ")" * 300)


# --------------------------------------------------------------------------
# Rejected constructs
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message", "col"),
    [
        ("__import__('os')", "function '__import__' is not allowed (allowed: abs,", 1),
        ("().__class__", "attribute access ('.__class__') is not allowed", 1),
        ("().__class__.__bases__[0]", "subscripts are not allowed", 1),
        ("open('x')", "function 'open' is not allowed (allowed: abs,", 1),
        ("eval('1')", "function 'eval' is not allowed", 1),
        ("x + foo(1)", "function 'foo' is not allowed", 5),
        ("lambda: 1", "lambda is not allowed", 1),
        ("[x for x in y]", "list comprehensions are not allowed", 1),
        ("{x for x in y}", "set comprehensions are not allowed", 1),
        ("{x: 1 for x in y}", "dict comprehensions are not allowed", 1),
        ("sum(x for x in y)", "function 'sum' is not allowed", 1),
        ("abs(x for x in y)", "generator expressions are not allowed", 4),
        ("f'{x}'", "f-strings are not allowed", 1),
        ("(y := 1)", "assignment expressions (:=) are not allowed", 2),
        ("abs(x=1)", "keyword arguments are not allowed", 5),
        ("max(*xs)", "starred arguments are not allowed", 5),
        ("x.real", "attribute access ('.real') is not allowed", 1),
        ("x[0]", "subscripts are not allowed", 1),
        ("x in y", "'in' needs a literal tuple or list", 6),
        ("x in (y, 1)", "'in (...)' may only list constants", 7),
        ("x is None", "'is' is not allowed", 1),
        ("a & b", "operator '&' is not allowed", 1),
        ("a << 2", "operator '<<' is not allowed", 1),
        ("~a", "operator '~' is not allowed", 1),
        ("1j", "complex numbers are not allowed", 1),
        ("b'x'", "bytes literals are not allowed", 1),
        ("...", "'...' is not allowed", 1),
        ("{1: 2}", "dict literals are not allowed", 1),
        ("{1, 2}", "set literals are not allowed", 1),
        ("(1, 2)", "tuple literals are only allowed after 'in'", 1),
        ("[1, 2]", "list literals are only allowed after 'in'", 1),
        ("x +", "syntax error", 4),
        ("x = 1", "syntax error", 3),
        ("  open(1)", "function 'open' is not allowed", 3),
        ("é + open(1)", "function 'open' is not allowed", 5),  # columns count characters
        ("(x +\n open(1))", "function 'open' is not allowed", 7),
    ],
)
def test_rejected_constructs(text: str, message: str, col: int) -> None:
    with pytest.raises(ExprError) as info:
        compile_expr(text)
    assert message in info.value.message
    assert info.value.col == col
    assert str(info.value) == f"{info.value.message} (at column {col})"


def test_rejection_in_dead_branch() -> None:
    with pytest.raises(ExprError, match="function 'open'"):
        compile_expr("1 if True else open('x')")


@pytest.mark.parametrize("text", ["", "   ", "\n"])
def test_empty_expression(text: str) -> None:
    with pytest.raises(ExprError, match="empty"):
        compile_expr(text)


def test_expr_error_is_value_error_and_picklable() -> None:
    with pytest.raises(ValueError):
        compile_expr("open('x')")
    err = ExprError("bad thing", 3)
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.message, copy.col, str(copy)) == ("bad thing", 3, "bad thing (at column 3)")


# --------------------------------------------------------------------------
# Property tests: agreement with Python's own arithmetic
# --------------------------------------------------------------------------

_OPS = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
    "//": operator.floordiv,
    "%": operator.mod,
    "**": operator.pow,
}
_COMPILED = {symbol: compile_expr(f"a {symbol} b") for symbol in _OPS}


def _same(actual: object, expected: object) -> bool:
    if isinstance(expected, float) and math.isnan(expected):
        return isinstance(actual, float) and math.isnan(actual)
    return actual == expected and type(actual) is type(expected)


def _expected(symbol: str, a: float, b: float) -> object:
    """Python's result, mapped to the documented None-for-errors semantics."""
    if symbol == "**" and abs(b) > 1000:
        return None
    try:
        result = _OPS[symbol](a, b)
    except (ArithmeticError, ValueError):
        return None
    if isinstance(result, complex):
        return None
    if isinstance(result, int):
        return result if result.bit_length() <= 8192 else None
    if math.isinf(result) and math.isfinite(a) and math.isfinite(b):
        return None  # overflow from finite operands
    return result


numbers = st.one_of(st.floats(), st.integers(min_value=-(10**6), max_value=10**6))


@settings(max_examples=300)
@given(symbol=st.sampled_from(sorted(_OPS)), a=numbers, b=numbers)
def test_binary_arithmetic_agrees_with_python(symbol: str, a: float, b: float) -> None:
    expected = _expected(symbol, a, b)
    assert _same(_COMPILED[symbol]({"a": a, "b": b}), expected)


# Random expression trees over +, -, *, / with variables and constants.  Values
# are bounded multiples of 1/64, so no overflow can happen at this depth and the
# only failure mode is division by zero, which Python raises and we map to None.
values = st.integers(min_value=-(10**6), max_value=10**6).map(lambda i: i / 64)
leaves = st.sampled_from(["a", "b", "c", "2", "0.5", "(-3)"])


def _trees(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    binary = st.tuples(children, st.sampled_from(["+", "-", "*", "/"]), children)
    return st.one_of(
        binary.map(lambda t: f"{t[0]} {t[1]} {t[2]}"),
        binary.map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        children.map(lambda s: f"-{s}"),
    )


expressions = st.recursive(leaves, _trees, max_leaves=8)


@settings(max_examples=300)
@given(text=expressions, a=values, b=values, c=values)
def test_expression_trees_agree_with_python(text: str, a: float, b: float, c: float) -> None:
    env = {"a": a, "b": b, "c": c}
    try:
        expected = eval(text, {"__builtins__": {}}, dict(env))  # test oracle only
    except ZeroDivisionError:
        expected = None
    actual = compile_expr(text)(env)
    assert actual == expected


@settings(max_examples=200)
@given(st.text(max_size=60))
def test_arbitrary_text_never_crashes(text: str) -> None:
    try:
        expr = compile_expr(text)
    except ExprError:
        return
    expr({})  # must not raise for a syntactically valid, allowed expression
    expr({name: None for name in expr.names})


def test_parse_warnings_are_silenced() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert compile_expr("1if a else 2")({}) == 2
        assert compile_expr(r"'\d'")({}) == "\\d"
