"""Fuzzing the expression language (issue 15, item 1): token soups and generated ASTs.

Properties, for any text: ``compile_expr`` returns an Expr or raises ExprError (nothing
else); an accepted expression contains no attribute access, import, lambda, subscript,
comprehension, walrus or call of anything but a whitelisted function, and every other
name (``__class__``, ``open`` and ``os`` included) is a field read from the record;
evaluating it on any environment returns a plain value (None, bool,
int, float, str) without raising, and in bounded work: the resource-hungry classics
(``9**9**9``, ``'a'*10**9``, deep nesting) are refused or give None at once.
``FLOWDECK_FUZZ_EXAMPLES`` sets the examples per property (default modest, for CI).
"""

from __future__ import annotations

import ast
import os
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowdeck.pipeline.expr import FUNCTIONS, MAX_INT_BITS, MAX_STR, Expr, ExprError, compile_expr

EXAMPLES = int(os.environ.get("FLOWDECK_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=timedelta(seconds=5),
                suppress_health_check=[HealthCheck.too_slow])

NAMES = ["temp", "wind", "x", "y", "station", "__class__", "__import__", "_private", "open",
         "eval", "exec", "getattr", "globals", "os", "sys", "self", "builtins", "True",
         "None", "print", "type", "object", "lambda", "import", "from", "yield", "await"]
TOKENS = (NAMES + list(FUNCTIONS) + [
    "+", "-", "*", "/", "//", "%", "**", "^", "(", ")", "[", "]", "{", "}", ",", ":", ".",
    "==", "!=", "<", "<=", ">", ">=", "and", "or", "not", "in", "not in", "is", "if", "else",
    "for", ":=", "@", "~", "&", "|", "<<", ">>", ";", "\\", "#", "'", '"', "'a'", '"b"',
    "0", "1", "9", "10", "1e308", "1e309", "-1", "0.5", "nan", "inf", "9**9**9",
    "'a'*10**9", "10**9", "f'{x}'", "b'x'", "...", "__builtins__", "__subclasses__()",
    "().__class__", "[].__class__.__base__", "\n", "\t", " ", "\x00", "é", "∞",
])

token_soup = st.lists(st.sampled_from(TOKENS), min_size=1, max_size=25).map(" ".join)

values = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(),
                                                         max_size=2),
)
envs = st.dictionaries(st.sampled_from(["temp", "wind", "x", "y", "station"]), values)

# Generated expression trees: every construct of the language and the ones it refuses.
leaf = st.one_of(
    st.sampled_from(["temp", "wind", "x", "y", "station", "None", "True", "_x", "__class__"]),
    st.integers(-(10**12), 10**12).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.text(alphabet="ab'\\\"", max_size=5).map(repr),
)


def _combine(children):
    unary = st.tuples(st.sampled_from(["-", "+", "not ", "~"]), children).map(
        lambda t: f"{t[0]}({t[1]})")
    binary = st.tuples(children, st.sampled_from(
        ["+", "-", "*", "/", "//", "%", "**", "==", "<", ">=", "!=", "and", "or", "in",
         "not in", "&", "<<"]), children).map(lambda t: f"({t[0]} {t[1]} {t[2]})")
    cond = st.tuples(children, children, children).map(lambda t: f"({t[0]} if {t[1]} else {t[2]})")
    call = st.tuples(st.sampled_from([*FUNCTIONS, "getattr", "open", "__import__", "eval"]),
                     st.lists(children, max_size=3)).map(lambda t: f"{t[0]}({', '.join(t[1])})")
    attr = st.tuples(children, st.sampled_from(["real", "__class__", "upper", "__dict__"])).map(
        lambda t: f"({t[0]}).{t[1]}")
    sub = st.tuples(children, children).map(lambda t: f"({t[0]})[{t[1]}]")
    tup = st.lists(children, max_size=3).map(lambda xs: f"({', '.join(xs)},)")
    lam = children.map(lambda c: f"(lambda: {c})")
    comp = children.map(lambda c: f"[{c} for _ in (1,)]")
    return st.one_of(unary, binary, cond, call, attr, sub, tup, lam, comp)


trees = st.recursive(leaf, _combine, max_leaves=20)

FORBIDDEN_NODES = (ast.Attribute, ast.Lambda, ast.Subscript, ast.ListComp, ast.SetComp,
                   ast.DictComp, ast.GeneratorExp, ast.NamedExpr, ast.Starred, ast.JoinedStr,
                   ast.Await, ast.Yield, ast.YieldFrom, ast.Slice)


def check(text: str, env: dict) -> None:
    try:
        expr = compile_expr(text)
    except ExprError as exc:
        assert str(exc)  # a message the config error can show
        return
    assert isinstance(expr, Expr)
    tree = ast.parse(text.strip(), mode="eval")
    called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    for node in ast.walk(tree):
        assert not isinstance(node, FORBIDDEN_NODES), f"{text!r} accepted a {type(node).__name__}"
        if isinstance(node, ast.Name) and id(node) not in called:
            # Any other name ('__class__', 'open', 'os' included) is a field of the record:
            # read from the environment mapping, never from Python's namespaces.
            assert node.id in expr.names, (text, node.id)
        if isinstance(node, ast.Call):
            assert isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS, text
            assert not node.keywords, text
    if isinstance(tree.body, ast.Name) and tree.body.id not in ("True", "False", "None"):
        assert expr({}) is None  # a missing field, whatever its name
        assert expr({tree.body.id: "v"}) == "v"
    result = expr(env)
    passed_through = any(result is v for v in env.values())  # a field's own value, as is
    assert result is None or passed_through or type(result) in (bool, int, float, str), (
        text, result)
    if type(result) is int:
        assert result.bit_length() <= MAX_INT_BITS
    if type(result) is str:
        assert len(result) <= MAX_STR


@FUZZ
@given(text=token_soup, env=envs)
def test_token_soup_compiles_or_is_refused_and_never_escapes(text, env):
    check(text, env)


@FUZZ
@given(text=trees, env=envs)
def test_generated_trees_compile_or_are_refused_and_never_escape(text, env):
    check(text, env)


@FUZZ
@given(text=st.text(max_size=200), env=envs)
def test_any_unicode_text(text, env):
    check(text, env)


@pytest.mark.parametrize("text", [
    "9**9**9", "9**9**9**9", "(9**9)**(9**9)", "2**8192 * 2**8192", "'a'*10**9",
    "'a'*10**9*10**9", "('ab' + 'cd') * 10**6", "10**1000000", "-(9**9**9)",
    "(" * 99 + "1" + ")" * 99, "(" * 200 + "1" + ")" * 200, "-" * 500 + "1",
    "not " * 300 + "x", "+".join(["1"] * 499), "x" + " + x" * 300,
    "max(" * 60 + "1" + ")" * 60, "[1]" * 300, "1 if " * 100 + "1" + " else 2" * 100,
])
def test_resource_hungry_expressions_are_refused_or_cheap(text):
    """Each is refused at compile time or evaluates to a bounded value (None past a guard);
    bounded work is what the fuzz deadline of the properties above asserts in general."""
    check(text, {"x": 1})
