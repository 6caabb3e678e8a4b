"""A small, safe expression language for config-defined fields and rules.

Expressions look like Python (``temp * 1.8 + 32``, ``temp_min <= temp_max``,
``coalesce(gust, wind) if wind_dir in ("N", "S") else None``) but only a
whitelisted subset is accepted.  The text is parsed with :func:`ast.parse` and
each node is turned into a Python closure, so evaluating an expression is a
plain chain of closure calls: nothing is ever passed to ``eval``/``exec``/
``compile`` and there is no per-call tree walking.

Evaluation semantics, chosen so that one odd record can never stop a batch:

* Names are looked up in the environment mapping; a missing name is ``None``.
* Null propagation: arithmetic and functions with a ``None`` operand give
  ``None`` (except ``coalesce``, ``concat`` and ``is_null``); comparisons
  involving ``None`` give ``False`` (``!=`` and ``not in`` included, as in SQL).
  ``and``/``or``/``not``/``x if c else y`` use ordinary Python truthiness, so
  ``None`` counts as false there.
* Evaluation never raises.  Math errors (division by zero, ``sqrt(-1)``,
  ``log(0)``, overflow to infinity from finite operands, complex results) and
  type mismatches (``"a" - 1``) give ``None``; incomparable operands (``"a" < 1``)
  compare ``False``.
* Arithmetic works on numbers (``int``/``float``/``bool``).  The only string
  operators are ``str + str`` and ``str * int``; the string functions are
  ``split(s, sep, index)``, ``regex(s, pattern[, group])``, ``replace(s, old, new)``,
  ``substr(s, start[, end])``, ``to_number(x)`` and ``to_str(x)``.
* ``regex``: the pattern must be a constant string; it is checked and compiled
  once, at compile time, by RE2 (google-re2: linear-time matching, so no pattern
  can backtrack catastrophically). Constructs that only a backtracking engine has
  (back-references, look-ahead and look-behind, possessive and atomic groups)
  are refused with a message, and inputs longer than 10,000 characters give
  ``None``.
* Resource guards: text longer than 1000 characters or nested deeper than 100
  levels is rejected at compile time; ``**`` with ``|exponent| > 1000``, integer
  results wider than 8192 bits and string results longer than 10,000
  characters give ``None``.
"""

from __future__ import annotations

import ast
import math
import operator
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from itertools import repeat
from typing import Any

import re2  # type: ignore[import-untyped]  # google-re2

__all__ = ["Expr", "ExprError", "compile_expr", "FUNCTIONS"]

MAX_TEXT = 1000
MAX_DEPTH = 100
MAX_STR = 10_000
MAX_EXPONENT = 1000
MAX_INT_BITS = 8192

Env = Mapping[str, Any]
Fn = Callable[[Env], Any]

_NUM = (int, float)
_MISSING = object()


class ExprError(ValueError):
    """An expression was rejected at compile time.

    ``message`` says what is wrong; ``col`` is the 1-based character position
    of the problem in the expression text (the column, for one-line
    expressions), or ``None`` when the problem has no single position.
    """

    def __init__(self, message: str, col: int | None = None) -> None:
        super().__init__(message, col)
        self.message = message
        self.col = col

    def __str__(self) -> str:
        if self.col is None:
            return self.message
        return f"{self.message} (at column {self.col})"


class Expr:
    """A compiled expression: call it with a mapping of field values, or give
    :meth:`over` a batch of them."""

    __slots__ = ("text", "names", "_fn", "_col")

    def __init__(self, text: str, names: frozenset[str], fn: Fn,
                 col: ColFn | None = None) -> None:
        self.text = text
        self.names = names
        self._fn = fn
        self._col = col

    def __call__(self, env: Env) -> Any:
        return self._fn(env)

    def over(self, envs: Sequence[Env]) -> list[Any]:
        """The value for each of ``envs``, in order: the same values as calling the
        expression on each, computed a column at a time where the expression is
        arithmetic on names and constants (see :func:`_columns`)."""
        if self._col is None:
            fn = self._fn
            return [fn(env) for env in envs]
        return self._col(envs)

    def __repr__(self) -> str:
        return f"Expr({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Expr) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


# --------------------------------------------------------------------------
# Safe value-level operations (never raise, return None on any failure)
# --------------------------------------------------------------------------


_INT_LIMIT = 1 << MAX_INT_BITS


def _checked(r: Any, a: Any, b: Any) -> Any:
    """Vet an arithmetic result: overflow, huge ints and complex numbers become None."""
    cls = r.__class__
    if cls is float:
        if math.isfinite(r) or not (math.isfinite(a) and math.isfinite(b)):
            return r
        return None  # finite operands overflowed to inf
    if cls is int:
        return r if r.bit_length() <= MAX_INT_BITS else None
    if isinstance(r, _NUM):
        return r
    return None  # complex, e.g. (-8) ** 0.5


def _arith(
    fn: Callable[[Any, Any], Any], strings: Callable[[Any, Any], Any] | None = None
) -> Callable[[Any, Any], Any]:
    """Turn ``operator.xxx`` into a never-raising operator on numbers.

    ``strings`` handles operands that are not both numbers (``str + str``,
    ``str * int``); without it such operands give None.
    """

    def op(a: Any, b: Any) -> Any:
        ca = a.__class__
        cb = b.__class__
        if (ca is float or ca is int) and (cb is float or cb is int):  # fast path
            try:
                r = fn(a, b)
            except (ArithmeticError, ValueError):
                return None
            if r.__class__ is float:
                return r if r - r == 0.0 else _checked(r, a, b)
            return r if -_INT_LIMIT < r < _INT_LIMIT else None
        if isinstance(a, _NUM) and isinstance(b, _NUM):  # bool, int/float subclasses
            try:
                r = fn(a, b)
            except (ArithmeticError, ValueError):
                return None
            return _checked(r, a, b)
        return None if strings is None else strings(a, b)

    return op


def _concat_strings(a: Any, b: Any) -> Any:
    if isinstance(a, str) and isinstance(b, str) and len(a) + len(b) <= MAX_STR:
        return a + b
    return None


def _repeat_string(a: Any, b: Any) -> Any:
    if isinstance(b, str):
        a, b = b, a
    if isinstance(a, str) and isinstance(b, int) and len(a) * b <= MAX_STR:
        return a * b
    return None


def _pow(a: Any, b: Any) -> Any:
    if not (isinstance(a, _NUM) and isinstance(b, _NUM)) or abs(b) > MAX_EXPONENT:
        return None
    if isinstance(a, int) and isinstance(b, int) and (a.bit_length() - 1) * b > MAX_INT_BITS:
        return None  # |a| ** b >= 2 ** ((bits - 1) * b): surely too wide, don't compute it
    try:
        r = a**b
    except (ArithmeticError, ValueError):
        return None
    return _checked(r, a, b)


_BINOPS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: _arith(operator.add, _concat_strings),
    ast.Sub: _arith(operator.sub),
    ast.Mult: _arith(operator.mul, _repeat_string),
    ast.Div: _arith(operator.truediv),
    ast.FloorDiv: _arith(operator.floordiv),
    ast.Mod: _arith(operator.mod),
    ast.Pow: _pow,
}

_REJECTED_BINOPS = {
    ast.BitAnd: "&",
    ast.BitOr: "|",
    ast.BitXor: "^",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.MatMult: "@",
}


def _neg(a: Any) -> Any:
    return -a if isinstance(a, _NUM) else None


def _pos(a: Any) -> Any:
    return +a if isinstance(a, _NUM) else None


_CMPOPS: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}


def _math1(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Wrap a one-argument math function: numbers only, errors become None."""

    def call(x: Any) -> Any:
        if not isinstance(x, _NUM):
            return None
        try:
            r = fn(x)
        except (ArithmeticError, ValueError):
            return None
        return r if r.__class__ is not float or math.isfinite(r) or not math.isfinite(x) else None

    return call


def _log(x: Any, base: Any = _MISSING) -> Any:
    if not isinstance(x, _NUM):
        return None
    try:
        if base is _MISSING:
            return math.log(x)
        if not isinstance(base, _NUM):
            return None
        return math.log(x, base)
    except (ArithmeticError, ValueError):
        return None


def _round(x: Any, ndigits: Any = _MISSING) -> Any:
    if not isinstance(x, _NUM):
        return None
    try:
        if ndigits is _MISSING:
            return round(x)
        if not isinstance(ndigits, int) or abs(ndigits) > MAX_EXPONENT:
            return None
        return round(x, ndigits)
    except (ArithmeticError, ValueError):
        return None


def _extreme(pick: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        try:
            return pick(args) if len(args) > 1 else args[0]
        except TypeError:
            return None

    return call


def _clamp(x: Any, lo: Any, hi: Any) -> Any:
    try:
        if x < lo:
            return lo
        if x > hi:
            return hi
    except TypeError:
        return None
    return x


def _upper(s: Any) -> Any:
    if not isinstance(s, str):
        return None
    r = s.upper()
    return r if len(r) <= MAX_STR else None


def _lower(s: Any) -> Any:
    if not isinstance(s, str):
        return None
    r = s.lower()
    return r if len(r) <= MAX_STR else None


def _concat(*args: Any) -> Any:
    try:
        r = "".join([a if a.__class__ is str else str(a) for a in args if a is not None])
    except ValueError:  # int too large to print
        return None
    return r if len(r) <= MAX_STR else None


def _coalesce(*args: Any) -> Any:
    return next((a for a in args if a is not None), None)


def _is_null(x: Any) -> bool:
    return x is None


def _split(s: Any, sep: Any, index: Any) -> Any:
    if not (isinstance(s, str) and isinstance(sep, str) and sep and type(index) is int):
        return None
    parts = s.split(sep)
    return parts[index] if -len(parts) <= index < len(parts) else None


def _replace(s: Any, old: Any, new: Any) -> Any:
    if not (isinstance(s, str) and isinstance(old, str) and isinstance(new, str)) or not old:
        return None
    if len(new) > len(old) and len(s) + s.count(old) * (len(new) - len(old)) > MAX_STR:
        return None
    return s.replace(old, new)


def _substr(s: Any, start: Any, end: Any = _MISSING) -> Any:
    if not isinstance(s, str) or type(start) is not int:
        return None
    if end is _MISSING:
        return s[start:]
    if type(end) is not int:
        return None
    return s[start:end]


_INT_TEXT = re.compile(r"[+-]?\d+")


def _to_number(x: Any) -> Any:
    """A number from a number or numeric text (whitespace ignored); None if it is not one."""
    cls = x.__class__
    if cls is int or cls is float:
        return x if cls is int or math.isfinite(x) else None
    if not isinstance(x, str) or len(x) > 400:
        return None
    text = x.strip()
    if _INT_TEXT.fullmatch(text):
        return int(text)
    try:
        r = float(text)
    except ValueError:
        return None
    return r if math.isfinite(r) else None


def _to_str(x: Any) -> Any:
    if isinstance(x, str):
        return x
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, int | float):
        try:
            r = str(x)
        except ValueError:  # int too large to print
            return None
        return r if len(r) <= MAX_STR else None
    return None


# Constructs only a backtracking engine has, refused with a message before RE2 sees them.
_BACKTRACKING_ONLY = (
    (re.compile(r"\\[1-9]|\\g<|\(\?P="), "back-references"),
    (re.compile(r"\(\?<?[=!]"), "look-ahead and look-behind"),
    (re.compile(r"\(\?>|[*+?}]\+"), "atomic groups and possessive quantifiers"),
)
MAX_PATTERN = 200


def compile_regex(pattern: str) -> Any:
    """An RE2 pattern (linear-time matching) or ExprError saying why not."""
    if len(pattern) > MAX_PATTERN:
        raise ExprError(f"regex pattern is too long (max {MAX_PATTERN} characters)")
    for rx, what in _BACKTRACKING_ONLY:
        if rx.search(pattern):
            raise ExprError(f"regex pattern uses {what}, which can backtrack without bound; "
                            "only the RE2 syntax is allowed")
    try:
        re.compile(pattern)  # the clearer message for plain syntax errors
    except re.error as exc:
        raise ExprError(f"bad regex pattern: {exc}") from None
    try:
        opts = re2.Options()
        opts.log_errors = False
        return re2.compile(pattern, opts)
    except re2.error as exc:
        raise ExprError(f"regex pattern is not in the RE2 syntax: {exc}") from None


def _regex_fn(compiled: Any, group: int) -> Callable[[Any], Any]:
    search = compiled.search

    def run(s: Any) -> Any:
        if not isinstance(s, str) or len(s) > MAX_STR:
            return None
        m = search(s)
        return None if m is None else m.group(group)

    return run


# name -> (implementation, min args, max args or None, propagates None)
FUNCTIONS: dict[str, tuple[Callable[..., Any], int, int | None, bool]] = {
    "abs": (_math1(abs), 1, 1, True),
    "ceil": (_math1(math.ceil), 1, 1, True),
    "clamp": (_clamp, 3, 3, True),
    "coalesce": (_coalesce, 1, None, False),  # compiled lazily, see _Compiler.call
    "concat": (_concat, 1, None, False),
    "exp": (_math1(math.exp), 1, 1, True),
    "floor": (_math1(math.floor), 1, 1, True),
    "is_null": (_is_null, 1, 1, False),
    "log": (_log, 1, 2, True),
    "log10": (_math1(math.log10), 1, 1, True),
    "lower": (_lower, 1, 1, True),
    "max": (_extreme(max), 1, None, True),
    "min": (_extreme(min), 1, None, True),
    "round": (_round, 1, 2, True),
    "sqrt": (_math1(math.sqrt), 1, 1, True),
    "upper": (_upper, 1, 1, True),
    "split": (_split, 3, 3, True),
    "regex": (_regex_fn, 2, 3, True),  # compiled specially, see _Compiler.regex
    "replace": (_replace, 3, 3, True),
    "substr": (_substr, 2, 3, True),
    "to_number": (_to_number, 1, 1, True),
    "to_str": (_to_str, 1, 1, True),
}
_ALLOWED = ", ".join(sorted(FUNCTIONS))

_REJECTED_NODES: dict[type[ast.AST], str] = {
    ast.Subscript: "subscripts are not allowed",
    ast.Lambda: "lambda is not allowed",
    ast.ListComp: "list comprehensions are not allowed",
    ast.SetComp: "set comprehensions are not allowed",
    ast.DictComp: "dict comprehensions are not allowed",
    ast.GeneratorExp: "generator expressions are not allowed",
    ast.JoinedStr: "f-strings are not allowed",
    ast.NamedExpr: "assignment expressions (:=) are not allowed",
    ast.Starred: "starred expressions are not allowed",
    ast.Await: "await is not allowed",
    ast.Yield: "yield is not allowed",
    ast.YieldFrom: "yield is not allowed",
    ast.Dict: "dict literals are not allowed",
    ast.Set: "set literals are not allowed",
    ast.List: "list literals are only allowed after 'in'",
    ast.Tuple: "tuple literals are only allowed after 'in'",
    ast.Slice: "slices are not allowed",
}


# --------------------------------------------------------------------------
# Compiler: AST node -> closure
# --------------------------------------------------------------------------


class _Const:
    """Marks a compile-time constant so parents can specialise or fold."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


_Node = Fn | _Const


def _as_fn(node: _Node) -> Fn:
    if isinstance(node, _Const):
        value = node.value
        return lambda env: value
    return node


class _Compiler:
    def __init__(self, text: str) -> None:
        self.text = text
        self.names: set[str] = set()
        self._line_starts = [0]
        for i, ch in enumerate(text):
            if ch == "\n":
                self._line_starts.append(i + 1)

    # -- error helpers -----------------------------------------------------

    def col(self, node: ast.AST) -> int | None:
        """1-based character position of ``node`` in the text."""
        lineno = getattr(node, "lineno", None)
        offset = getattr(node, "col_offset", None)
        if lineno is None or offset is None or lineno > len(self._line_starts):
            return None
        start = self._line_starts[lineno - 1]
        line = self.text[start:]
        chars = len(line.encode("utf-8")[:offset].decode("utf-8", errors="ignore"))
        return start + chars + 1

    def error(self, message: str, node: ast.AST) -> ExprError:
        return ExprError(message, self.col(node))

    # -- dispatch ------------------------------------------------------------

    def build(self, node: ast.AST, depth: int) -> _Node:
        if depth > MAX_DEPTH:
            raise self.error(f"expression is nested too deeply (max {MAX_DEPTH} levels)", node)
        depth += 1
        if isinstance(node, ast.Constant):
            return self.constant(node)
        if isinstance(node, ast.Name):
            return self.name(node)
        if isinstance(node, ast.BinOp):
            return self.binop(node, depth)
        if isinstance(node, ast.UnaryOp):
            return self.unaryop(node, depth)
        if isinstance(node, ast.Compare):
            return self.compare(node, depth)
        if isinstance(node, ast.BoolOp):
            return self.boolop(node, depth)
        if isinstance(node, ast.IfExp):
            return self.ifexp(node, depth)
        if isinstance(node, ast.Call):
            return self.call(node, depth)
        if isinstance(node, ast.Attribute):
            raise self.error(f"attribute access ('.{node.attr}') is not allowed", node)
        message = _REJECTED_NODES.get(type(node), f"{type(node).__name__} is not allowed")
        raise self.error(message, node)

    # -- leaves --------------------------------------------------------------

    def constant(self, node: ast.Constant) -> _Const:
        value = node.value
        if value is None or isinstance(value, bool | int | float | str):
            return _Const(value)
        kind = (
            "complex numbers" if isinstance(value, complex) else f"{type(value).__name__} literals"
        )
        message = "'...' is not allowed" if value is Ellipsis else f"{kind} are not allowed"
        raise self.error(message, node)

    def name(self, node: ast.Name) -> Fn:
        key = node.id
        self.names.add(key)
        return lambda env: env.get(key)

    # -- operators -----------------------------------------------------------

    def binop(self, node: ast.BinOp, depth: int) -> _Node:
        op = _BINOPS.get(type(node.op))
        if op is None:
            symbol = _REJECTED_BINOPS.get(type(node.op), type(node.op).__name__)
            raise self.error(f"operator '{symbol}' is not allowed", node)
        left = self.build(node.left, depth)
        right = self.build(node.right, depth)
        if isinstance(left, _Const) and isinstance(right, _Const):
            a, b = left.value, right.value
            return _Const(None if a is None or b is None else op(a, b))
        if isinstance(right, _Const):
            b = right.value
            if b is None:
                return _Const(None)

            def run_rc(env: Env) -> Any:
                a = left(env)
                return None if a is None else op(a, b)

            return run_rc
        if isinstance(left, _Const):
            a = left.value
            if a is None:
                return _Const(None)

            def run_lc(env: Env) -> Any:
                b = right(env)
                return None if b is None else op(a, b)

            return run_lc

        def run(env: Env) -> Any:
            a = left(env)
            if a is None:
                return None
            b = right(env)
            return None if b is None else op(a, b)

        return run

    def unaryop(self, node: ast.UnaryOp, depth: int) -> _Node:
        operand = self.build(node.operand, depth)
        if isinstance(node.op, ast.Not):
            if isinstance(operand, _Const):
                return _Const(not operand.value)
            return lambda env: not operand(env)
        if isinstance(node.op, ast.USub):
            op = _neg
        elif isinstance(node.op, ast.UAdd):
            op = _pos
        else:
            raise self.error("operator '~' is not allowed", node)
        if isinstance(operand, _Const):
            value = operand.value
            return _Const(None if value is None else op(value))

        def run(env: Env) -> Any:
            a = operand(env)
            return None if a is None else op(a)

        return run

    def membership_values(self, node: ast.expr, depth: int) -> frozenset[Any]:
        """The literal right-hand side of ``in``: a tuple/list of constants."""
        if not isinstance(node, ast.Tuple | ast.List):
            raise self.error(
                "'in' needs a literal tuple or list on the right, e.g. x in (1, 2)", node
            )
        values = []
        for element in node.elts:
            if isinstance(element, ast.Starred):
                raise self.error("starred expressions are not allowed", element)
            compiled = self.build(element, depth)
            if not isinstance(compiled, _Const):
                raise self.error("'in (...)' may only list constants", element)
            values.append(compiled.value)
        return frozenset(values)

    def compare(self, node: ast.Compare, depth: int) -> Fn:
        steps: list[tuple[Callable[[Any, Any], bool], _Node]] = []
        for op_node, comparator in zip(node.ops, node.comparators, strict=True):
            if isinstance(op_node, ast.In | ast.NotIn):
                values = self.membership_values(comparator, depth)
                negate = isinstance(op_node, ast.NotIn)
                steps.append((_membership(values, negate), _Const(values)))
            elif isinstance(op_node, ast.Is | ast.IsNot):
                raise self.error("'is' is not allowed; use is_null(x) or ==", node)
            else:
                steps.append((_CMPOPS[type(op_node)], self.build(comparator, depth)))
        left = _as_fn(self.build(node.left, depth))

        if len(steps) == 1:
            op, right = steps[0]
            if isinstance(right, _Const):
                b = right.value
                if b is None:
                    return lambda env: False

                def run_rc(env: Env) -> bool:
                    a = left(env)
                    if a is None:
                        return False
                    try:
                        return op(a, b)
                    except TypeError:
                        return False

                return run_rc
            right_fn = right

            def run_one(env: Env) -> bool:
                a = left(env)
                if a is None:
                    return False
                b = right_fn(env)
                if b is None:
                    return False
                try:
                    return op(a, b)
                except TypeError:
                    return False

            return run_one

        chain = [(op, _as_fn(right)) for op, right in steps]

        def run_chain(env: Env) -> bool:
            a = left(env)
            if a is None:
                return False
            for op, right in chain:
                b = right(env)
                if b is None:
                    return False
                try:
                    if not op(a, b):
                        return False
                except TypeError:
                    return False
                a = b
            return True

        return run_chain

    def boolop(self, node: ast.BoolOp, depth: int) -> Fn:
        parts = [_as_fn(self.build(value, depth)) for value in node.values]
        if isinstance(node.op, ast.And):

            def run_and(env: Env) -> Any:
                value = None
                for part in parts:
                    value = part(env)
                    if not value:
                        return value
                return value

            return run_and

        def run_or(env: Env) -> Any:
            value = None
            for part in parts:
                value = part(env)
                if value:
                    return value
            return value

        return run_or

    def ifexp(self, node: ast.IfExp, depth: int) -> _Node:
        test = self.build(node.test, depth)
        body = self.build(node.body, depth)
        orelse = self.build(node.orelse, depth)
        if isinstance(test, _Const):
            return body if test.value else orelse
        body_fn, else_fn = _as_fn(body), _as_fn(orelse)
        return lambda env: body_fn(env) if test(env) else else_fn(env)

    # -- calls ---------------------------------------------------------------

    def regex(self, node: ast.Call, depth: int) -> Fn:
        return _regex_call(self, node, depth)

    def call(self, node: ast.Call, depth: int) -> Fn:
        func = node.func
        if not isinstance(func, ast.Name):
            self.build(func, depth)  # raises for attributes, subscripts, ...
            raise self.error("only plain function names can be called", func)
        name = func.id
        spec = FUNCTIONS.get(name)
        if spec is None:
            raise self.error(f"function '{name}' is not allowed (allowed: {_ALLOWED})", func)
        if node.keywords:
            raise self.error(
                f"keyword arguments are not allowed ({name}() takes positional arguments only)",
                node.keywords[0],
            )
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                raise self.error("starred arguments are not allowed", arg)
        impl, min_args, max_args, propagate = spec
        n = len(node.args)
        if n < min_args or (max_args is not None and n > max_args):
            if max_args is None:
                expected = f"at least {min_args}"
            elif min_args == max_args:
                expected = str(min_args)
            else:
                expected = f"{min_args} to {max_args}"
            plural = "" if expected.endswith(" 1") or expected == "1" else "s"
            raise self.error(f"{name}() takes {expected} argument{plural}, got {n}", node)
        if name == "regex":
            return self.regex(node, depth)
        args = [_as_fn(self.build(arg, depth)) for arg in node.args]

        if name == "coalesce":

            def run_coalesce(env: Env) -> Any:
                for arg in args:
                    value = arg(env)
                    if value is not None:
                        return value
                return None

            return run_coalesce

        if len(args) == 1:
            (only,) = args
            if propagate:

                def run1(env: Env) -> Any:
                    value = only(env)
                    return None if value is None else impl(value)

                return run1
            return lambda env: impl(only(env))

        if propagate and len(args) == 2:
            first, second = args

            def run2(env: Env) -> Any:
                a = first(env)
                if a is None:
                    return None
                b = second(env)
                return None if b is None else impl(a, b)

            return run2
        if propagate:

            def run_n(env: Env) -> Any:
                values = [arg(env) for arg in args]
                return None if None in values else impl(*values)

            return run_n
        return lambda env: impl(*[arg(env) for arg in args])


def _regex_call(self: _Compiler, node: ast.Call, depth: int) -> Fn:
    """``regex(s, "pattern"[, group])``: the pattern (and group) constants, compiled now."""
    pattern_node = node.args[1]
    if not (isinstance(pattern_node, ast.Constant) and isinstance(pattern_node.value, str)):
        raise self.error("regex() needs its pattern as a constant string", pattern_node)
    try:
        compiled = compile_regex(pattern_node.value)
    except ExprError as exc:
        raise self.error(exc.message, pattern_node) from None
    group = 1 if compiled.groups else 0
    if len(node.args) == 3:
        g = node.args[2]
        if not (isinstance(g, ast.Constant) and type(g.value) is int):
            raise self.error("regex() needs its group as a constant integer", g)
        group = g.value
    if not 0 <= group <= compiled.groups:
        raise self.error(f"regex pattern has {compiled.groups} group(s), no group {group}",
                         node)
    subject = _as_fn(self.build(node.args[0], depth))
    run = _regex_fn(compiled, group)

    def call(env: Env) -> Any:
        value = subject(env)
        return None if value is None else run(value)

    return call


def _membership(values: frozenset[Any], negate: bool) -> Callable[[Any, Any], bool]:
    """Operator for ``in`` / ``not in`` against a precomputed set of constants."""
    if negate:
        return lambda a, _values: a not in values
    return lambda a, _values: a in values


# --------------------------------------------------------------------------
# Batches: arithmetic a column at a time
# --------------------------------------------------------------------------

ColFn = Callable[[Sequence[Env]], list[Any]]

# The plain operators behind _BINOPS' never-raising ones: on floats whose results are all
# finite they give exactly what those give (which check each result, one call per value).
_RAW_ARITH: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
}
_FLOATS = {float}


def _all_finite(values: list[float]) -> bool:
    # A sum of floats is finite only if every one is (inf and nan propagate); a sum that
    # overflows says no too, and its column is then computed value by value.
    total = sum(values)
    return total - total == 0.0


def _columns(node: ast.AST) -> _Const | ColFn | None:
    """``node`` (already accepted by the compiler) as a function from a batch of
    environments to its column of values, or a _Const; None when it is more than
    names, constants and arithmetic (the batch is then evaluated record by record)."""
    if isinstance(node, ast.Constant):
        return _Const(node.value)
    if isinstance(node, ast.Name):
        key = node.id

        def name(envs: Sequence[Env]) -> list[Any]:
            return [env.get(key) for env in envs]

        return name
    if not (isinstance(node, ast.BinOp) and type(node.op) in _RAW_ARITH):
        return None
    left, right = _columns(node.left), _columns(node.right)
    if left is None or right is None:
        return None
    op, raw = _BINOPS[type(node.op)], _RAW_ARITH[type(node.op)]
    if isinstance(left, _Const) and isinstance(right, _Const):
        a, b = left.value, right.value
        return _Const(None if a is None or b is None else op(a, b))
    if isinstance(right, _Const) or isinstance(left, _Const):
        on_right = isinstance(right, _Const)
        k = right.value if isinstance(right, _Const) else left.value  # type: ignore[union-attr]
        column = left if on_right else right
        assert not isinstance(column, _Const)
        if k is None:
            return _Const(None)
        k_number = k.__class__ is float or k.__class__ is int

        def with_const(envs: Sequence[Env]) -> list[Any]:
            values = column(envs)
            if k_number and set(map(type, values)) == _FLOATS:
                try:
                    out = (list(map(raw, values, repeat(k))) if on_right
                           else list(map(raw, repeat(k), values)))
                except (ArithmeticError, ValueError):
                    pass
                else:
                    if _all_finite(out):
                        return out
            if on_right:
                return [None if a is None else op(a, k) for a in values]
            return [None if b is None else op(k, b) for b in values]

        return with_const
    lcol, rcol = left, right

    def both(envs: Sequence[Env]) -> list[Any]:
        xs, ys = lcol(envs), rcol(envs)
        if set(map(type, xs)) == _FLOATS and set(map(type, ys)) == _FLOATS:
            try:
                out = list(map(raw, xs, ys))
            except (ArithmeticError, ValueError):
                pass
            else:
                if _all_finite(out):
                    return out
        return [None if a is None or b is None else op(a, b) for a, b in zip(xs, ys, strict=True)]

    return both


def compile_expr(text: str) -> Expr:
    """Compile expression ``text``; raise :class:`ExprError` if it is not allowed."""
    if not isinstance(text, str):
        raise TypeError(f"expression must be a string, not {type(text).__name__}")
    if len(text) > MAX_TEXT:
        raise ExprError(f"expression is too long ({len(text)} characters, max {MAX_TEXT})")
    # ast.parse rejects leading whitespace ("unexpected indent"), so parse the
    # stripped text and shift reported columns back by the leading whitespace.
    source = text.strip()
    if not source:
        raise ExprError("expression is empty")
    lead = len(text) - len(text.lstrip())
    try:
        with warnings.catch_warnings():
            # e.g. "invalid decimal literal" for "1if x else 2", "invalid escape
            # sequence" for "'\\d'": the parse result is well defined, stay quiet.
            warnings.simplefilter("ignore")
            tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        col = _syntax_col(source, exc)
        raise ExprError(f"syntax error: {exc.msg}", None if col is None else col + lead) from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise ExprError(f"cannot parse expression: {exc}") from None
    compiler = _Compiler(source)
    try:
        fn = _as_fn(compiler.build(tree.body, 0))
    except ExprError as exc:
        if exc.col is not None:
            exc.col += lead
        raise
    columns = _columns(tree.body)
    # A constant (or a name-free sum) needs no column work: called per record, as before.
    return Expr(text, frozenset(compiler.names), fn,
                None if isinstance(columns, _Const) else columns)


def _syntax_col(source: str, exc: SyntaxError) -> int | None:
    """Best-effort 1-based character position of a syntax error in ``source``."""
    if exc.lineno is None or exc.offset is None:
        return None
    lines = source.split("\n")
    if not 1 <= exc.lineno <= len(lines):
        return None
    start = sum(len(line) + 1 for line in lines[: exc.lineno - 1])
    line = lines[exc.lineno - 1]
    # CPython reports offset 0 for an unexpected end of input: point past the end.
    offset = exc.offset if 1 <= exc.offset <= len(line) + 1 else len(line) + 1
    return start + offset
