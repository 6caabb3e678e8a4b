"""Validate: types, required fields, ranges, allowed values, patterns, cross-field rules.

One pydantic ``TypeAdapter`` per source is built once from the config. A batch is
checked a field at a time (one type, the extremes of a number column, each distinct
pattern-checked value once); the records those checks cannot pass for certain are
validated by the model in one call, which also words every message. Values arrive in the source's units, so the
configured ranges (in the flow's units) are converted into each source's units
once, when the model is built, instead of converting every value twice.
"""

from __future__ import annotations

import math
import re
from itertools import repeat
from operator import attrgetter, contains, is_not
from typing import Annotated, Any, Literal, NotRequired, Required

from pydantic import ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError
from typing_extensions import TypedDict

from flowdeck.pipeline.config import FieldSpec, FlowConfig, SourceConfig
from flowdeck.pipeline.expr import compile_expr
from flowdeck.pipeline.model import Batch, Rec
from flowdeck.pipeline.stages.base import register
from flowdeck.pipeline.stages.transform import source_conversions, to_flow_units
from flowdeck.pipeline.units import affine

VERSION = "validate/1"
_TYPES = {"str": str, "int": int, "float": float, "bool": bool}

# ---------------------------------------------------------------- coercion
# Before validation, each value is converted to its field's type by one rule per type
# (docs/configuration.md, "Coercion"); a value no rule converts is left as it came, and
# validation then refuses it with its original value in the message.
_INT_TEXT = re.compile(r"[+-]?\d+")
_TRUE = {"true", "yes", "1"}
_FALSE = {"false", "no", "0"}


def _to_int(v: Any) -> Any:
    t = type(v)
    if t is float:  # integral floats only (12.0 -> 12); 12.5 stays and is refused
        return int(v) if v.is_integer() else v
    if t is str:
        text = v.strip()
        if _INT_TEXT.fullmatch(text):
            return int(text)
        try:
            x = float(text)
        except ValueError:
            return v
        return int(x) if x.is_integer() else v
    return v


def _to_float(v: Any) -> Any:
    t = type(v)
    if t is int:
        return float(v)
    if t is str:
        try:
            return float(v.strip())  # NaN and infinities are refused by validation
        except ValueError:
            return v
    return v


def _to_bool(v: Any) -> Any:
    t = type(v)
    if t is int and v in (0, 1):
        return bool(v)
    if t is str:
        text = v.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    return v


def _to_str(v: Any) -> Any:
    t = type(v)
    if t is int:
        return str(v)
    if t is float and math.isfinite(v):
        return str(int(v)) if v.is_integer() else repr(v)
    return v


# type name -> (the value's type when it needs nothing, the rule)
COERCE = {"int": (int, _to_int), "float": (float, _to_float), "bool": (bool, _to_bool),
          "str": (str, _to_str)}


def coercions(flow: FlowConfig) -> list[tuple[str, type, Any]]:
    """[(field, type it already has when fine, rule)] for the flow's fields."""
    return [(n, *COERCE[spec.type]) for n, spec in flow.fields.items() if n != flow.ts]


def _bounds_in_source(spec: FieldSpec, src_unit: str | None, inverted: bool):
    lo, hi = spec.range if spec.range else (None, None)
    if src_unit and spec.unit and (lo is not None or hi is not None):
        # value_flow = a * value_src + b  =>  value_src = (value_flow - b) / a
        a, b = affine(src_unit, spec.unit)
        conv = [None if x is None else (x - b) / a for x in (lo, hi)]
        lo, hi = (conv[0], conv[1]) if a > 0 else (conv[1], conv[0])
    if inverted and lo is not None and hi is not None and lo > 0:
        lo, hi = 1 / hi, 1 / lo
    elif inverted:
        lo = hi = None
    return lo, hi


def _field_type(spec: FieldSpec, lo: float | None, hi: float | None) -> Any:
    base = _TYPES[spec.type]
    if spec.allowed is not None:
        return Literal[tuple(spec.allowed)]
    if spec.type == "str":
        if spec.pattern:
            return Annotated[str, StringConstraints(pattern=spec.pattern)]
        return str
    if spec.type in ("int", "float"):
        kw: dict[str, Any] = {}
        if lo is not None:
            kw["ge"] = lo
        if hi is not None:
            kw["le"] = hi
        if spec.type == "float":
            kw["allow_inf_nan"] = False
        return Annotated[base, Field(**kw)] if kw else base
    return base


def build_model(flow: FlowConfig, src: SourceConfig) -> TypeAdapter:
    """A TypedDict of the fields this source provides, validated as a list in one call."""
    annotations: dict[str, Any] = {}
    # Key parts that are derived (computed in collect) and the duration of interval
    # timestamps are kept without a declared type, unless the flow declares them.
    for name in flow.key_fields:
        if name not in flow.fields:
            annotations[name] = NotRequired[Any]
    duration = src.timestamp.duration_field or f"{flow.ts}_duration_s"
    if duration not in flow.fields:
        annotations[duration] = NotRequired[float | None]
    for name, spec in flow.fields.items():
        if name == flow.ts:
            continue
        lo, hi = _bounds_in_source(spec, src.units.get(name), name in src.invert)
        t = _field_type(spec, lo, hi)
        if spec.required:
            annotations[name] = Required[t]
        else:
            annotations[name] = NotRequired[t | None]
    td = TypedDict(f"Record_{src.name}", annotations)  # type: ignore[misc]
    td.__pydantic_config__ = ConfigDict(extra="ignore", coerce_numbers_to_str=False)
    return TypeAdapter(list[td])


# ---------------------------------------------------------------- the fast path
# Most records arrive with every value of its field's type (after the field's coercion)
# and inside its range: for those, the checks give what the pydantic model gives (same
# values, same key order: the model's), without building its input. A record the checks
# do not pass for certain goes through the model, which also words what is wrong.
_MEMO_LIMIT = 4096
_EXACT_INT = float(2 ** 53)

# Check kinds: what a value must be to pass without the model.
ANY, FLOAT, INT, BOOL, STR, MEMO, ANY_FLOAT = range(7)


def _fast_checks(flow: FlowConfig, src: SourceConfig) -> list[tuple] | None:
    """[(field, kind, lo, hi, required, memo, type, coercion)] in the model's field order,
    or None when a field has no exact check (the model then validates every record of the
    source)."""
    checks: list[tuple] = []
    for name in flow.key_fields:
        if name not in flow.fields:
            checks.append((name, ANY, None, None, False, None, None, None))
    duration = src.timestamp.duration_field or f"{flow.ts}_duration_s"
    if duration not in flow.fields:
        checks.append((duration, ANY_FLOAT, None, None, False, None, None, None))
    for name, spec in flow.fields.items():
        if name == flow.ts:
            continue
        lo, hi = _bounds_in_source(spec, src.units.get(name), name in src.invert)
        memo: tuple[Any, dict, set] | None = None
        if spec.allowed is not None or (spec.type == "str" and spec.pattern):
            kind = MEMO  # the field's own validator, once per distinct value
            memo = (TypeAdapter(_field_type(spec, lo, hi)).validate_python, {}, set())
        elif spec.type == "float":
            kind = FLOAT
        elif spec.type == "int":
            if not all(b is None or (float(b).is_integer() and abs(b) < _EXACT_INT)
                       for b in (lo, hi)):
                return None
            kind = INT
        elif spec.type == "bool":
            kind = BOOL
        else:
            kind = STR
        needs, rule = COERCE[spec.type]
        checks.append((name, kind, lo, hi, spec.required, memo, needs, rule))
    return checks


_SLOW: Any = object()  # "the model decides"
_DATA = attrgetter("data")
_get = dict.get
_NONE = type(None)
_NUMBERS = {int, float, _NONE}


def _one(check: tuple, v: Any) -> Any:
    """One present value (not None) through its field's coercion and checks: what the
    model makes of it, or _SLOW."""
    _name, kind, lo, hi, _required, memo, needs, rule = check
    c = v.__class__
    if c is not needs and needs is not None:  # the field's coercion, as the model's input
        try:
            v = rule(v)
        except (OverflowError, ValueError):  # the model's path says (or raises) the same
            return _SLOW
        c = v.__class__
    if kind == FLOAT:
        if c is not float or v - v != 0 or (lo is not None and v < lo) or (
                hi is not None and v > hi):
            return _SLOW
    elif kind == STR:
        if c is not str:
            return _SLOW
    elif kind == MEMO:
        validate, seen, _good = memo
        if c is not needs:
            return _SLOW
        try:
            got = seen.get((c, v))
        except TypeError:  # unhashable: the model says what it is
            return _SLOW
        if got is None:
            try:
                got = (validate(v),)
            except ValidationError:
                got = ()
            if len(seen) >= _MEMO_LIMIT:
                seen.clear()
            seen[(c, v)] = got
        if not got:
            return _SLOW
        v = got[0]
    elif kind == INT:
        if c is not int or (lo is not None and v < lo) or (hi is not None and v > hi):
            return _SLOW
    elif kind == BOOL:
        if c is not bool:
            return _SLOW
    elif kind == ANY_FLOAT:
        if c is not float:
            return _SLOW
    return v


def _whole_column(check: tuple, column: list[Any], types: set[type]) -> bool:
    """Whether every value of ``column`` (none of them None) is what the model makes of
    it, told from the column as a whole: one type, and for numbers its extremes."""
    _name, kind, lo, hi, _required, memo, needs, _rule = check
    if len(types) != 1:
        return False
    (t,) = types
    if kind == FLOAT or kind == INT:
        if t is not (float if kind == FLOAT else int):
            return False
        if kind == FLOAT:
            total = sum(column)  # finite only if every value is (inf and nan propagate)
            if total - total != 0:
                return False
        return (lo is None or min(column) >= lo) and (hi is None or max(column) <= hi)
    if kind == STR:
        return t is str
    if kind == BOOL:
        return t is bool
    if kind == ANY_FLOAT:
        return t is float
    if kind == MEMO:  # each distinct value once; valid and given back as it is
        if t is not needs:
            return False
        good = memo[2]  # values of exactly that type known to pass unchanged
        try:
            distinct = set(column)
        except TypeError:
            return False
        if distinct <= good:
            return True
        if len(good) >= _MEMO_LIMIT:
            good.clear()
        for v in distinct - good:
            got = _one(check, v)
            if got is _SLOW or got.__class__ is not t or got != v:
                return False
            good.add(v)
        return True
    return True  # ANY


def _fast_batch(checks: list[tuple], datas: list[dict]) -> list[dict | None]:
    """What the model makes of each of ``datas`` (absent optional fields not yet added),
    or None for a record the model must decide; a field at a time over the batch."""
    n = len(datas)
    slow = bytearray(n)  # 1: the model decides
    names: list[str] = []
    columns: list[list[Any]] = []
    changed: list[tuple[str, list[Any]]] = []  # columns with values coerced
    gaps = False  # some value is None (absent): such a record leaves the field out
    for check in checks:
        name, required = check[0], check[4]
        column = list(map(_get, datas, repeat(name)))
        types = set(map(type, column))
        coerced = False
        if check[1] == FLOAT and int in types and types <= _NUMBERS:
            # Coerced as _to_float does (ints to floats), the column at once.
            try:
                column = (list(map(float, column)) if _NONE not in types  # type: ignore[arg-type]
                          else [None if v is None else float(v) for v in column])
            except OverflowError:  # an int too large for a float: value by value
                pass
            else:
                types = {float, _NONE} if _NONE in types else {float}
                coerced = True
        if types == {_NONE}:
            if required:
                return [None] * n
            continue
        if _NONE in types:
            gaps = True
            if required:
                for i, v in enumerate(column):
                    if v is None:
                        slow[i] = 1
            present = types - {_NONE}
            whole = _whole_column(check, [v for v in column if v is not None], present)
        else:
            whole = _whole_column(check, column, types)
        if not whole:
            coerced = True
            for i, v in enumerate(column):
                if v is not None and not slow[i]:
                    got = _one(check, v)
                    if got is _SLOW:
                        slow[i] = 1
                    else:
                        column[i] = got
        names.append(name)
        columns.append(column)
        if coerced:
            changed.append((name, column))
    if not gaps and not any(slow):
        # Every record holds exactly the model's fields in its order (the usual case:
        # collect maps a source's fields in one order): its dict is kept, with the
        # coerced values put in place, instead of a new one per record.
        keys = tuple(names)
        if all(map(keys.__eq__, map(tuple, datas))):  # per record, in C
            for name, column in changed:
                for d, v in zip(datas, column, strict=True):
                    d[name] = v
            return list(datas)
    if not gaps:
        out: list[dict | None] = [dict(zip(names, row, strict=True))
                                  for row in zip(*columns, strict=True)]
    else:
        out = [{k: v for k, v in zip(names, row, strict=True) if v is not None}
               if None in row else dict(zip(names, row, strict=True))
               for row in zip(*columns, strict=True)]
    if any(slow):
        for i in range(n):
            if slow[i]:
                out[i] = None
    return out


@register("validate")
class Validator:
    name = "validate"
    version = VERSION

    def __init__(self, flow_name: str, flow: FlowConfig) -> None:
        self.flow = flow
        self.models = {s.name: build_model(flow, s) for s in flow.sources}
        self.rules = [(text, compile_expr(text)) for text in flow.rules]
        # Rules are written in the flow's units; records here are still in the source's.
        self.to_flow_units = {s.name: (source_conversions(flow, s), list(s.invert))
                              for s in flow.sources}
        self.optional = [n for n, f in flow.fields.items() if not f.required and n != flow.ts]
        self.coerce = coercions(flow)
        self.fast = {s.name: _fast_checks(flow, s) for s in flow.sources}

    def run(self, batch: Batch, now_ms: int) -> None:
        recs = batch.records
        if not recs:
            return
        checks = self.fast[batch.source or ""]
        if checks is None:
            rejected = self._model(batch, recs)
            if rejected:
                recs = [r for r in recs if id(r) not in rejected]
        else:
            slow = []
            datas = list(map(_DATA, recs))
            fast = _fast_batch(checks, datas)
            if any(map(is_not, fast, datas)):  # else every record keeps its dict
                for rec, data in zip(recs, fast, strict=True):
                    if data is None:
                        slow.append(rec)
                    else:
                        rec.data = data
            if slow:
                rejected = self._model(batch, slow)
                if rejected:  # they leave the batch; the others keep their places
                    recs = [r for r in recs if id(r) not in rejected]
        # Absent optional fields as None, a field at a time (the same key order in each
        # record as record by record); a field every record holds costs one pass in C.
        datas = list(map(_DATA, recs))
        for n in self.optional:
            if not all(map(contains, datas, repeat(n))):
                for data in datas:
                    if n not in data:
                        data[n] = None
        if self.rules:
            recs = self._rules(batch, recs)
        batch.records = recs

    def _model(self, batch: Batch, recs: list[Rec]) -> set[int]:
        """Validate ``recs`` with the source's model: each valid record's data becomes the
        model's output, each invalid one is quarantined; returns the ids of those."""
        adapter = self.models[batch.source]
        # Absent values are left out, so a missing required field reads "Field required".
        datas = [{k: v for k, v in r.data.items() if v is not None} for r in recs]
        coerce = self.coerce
        for d in datas:
            for name, ok, rule in coerce:
                v = d.get(name)
                if v is not None and type(v) is not ok:
                    d[name] = rule(v)
        rejected: set[int] = set()
        try:
            valid = adapter.validate_python(datas)
            bad: dict[int, list[str]] = {}
        except ValidationError as exc:
            bad = {}
            for err in exc.errors(include_url=False):
                loc = err["loc"]
                idx = loc[0]
                field = ".".join(str(p) for p in loc[1:] if not str(p).startswith(("function", "literal")))
                got = err.get("input")
                if len(loc) > 1 and isinstance(loc[1], str):  # as it came, before coercion
                    got = recs[int(idx)].data.get(loc[1], got)
                msg = f"{field}: {err['msg']}" if field else err["msg"]
                if err["type"] != "missing":
                    msg += f" (got {got!r:.60})"
                bad.setdefault(idx, []).append(msg)
            good_idx = [i for i in range(len(recs)) if i not in bad]
            valid = adapter.validate_python([datas[i] for i in good_idx]) if good_idx else []
            for i, msgs in sorted(bad.items()):
                batch.reject(recs[i], stage="validate", reason="invalid", message="; ".join(msgs))
                rejected.add(id(recs[i]))
            recs = [recs[i] for i in good_idx]
        for rec, data in zip(recs, valid, strict=True):
            rec.data = data
        return rejected

    def _rules(self, batch: Batch, recs: list) -> list:
        """The records whose rules hold; the others quarantined."""
        kept = []
        conversions, inverts = self.to_flow_units[batch.source]
        for rec in recs:
            env = to_flow_units(rec.data, conversions, inverts)
            # A rule about a value that is absent is unknown, not broken (as SQL CHECK).
            failed = [text for text, rule in self.rules
                      if all(env.get(n) is not None for n in rule.names)
                      and rule(env) is False]
            if failed:
                batch.reject(rec, stage="validate", reason="rule",
                             message="rule failed: " + "; ".join(failed))
            else:
                kept.append(rec)
        return kept
