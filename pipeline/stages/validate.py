"""Validate: types, required fields, ranges, allowed values, patterns, cross-field rules.

One pydantic ``TypeAdapter`` per source is built once from the config; a whole
batch is validated in one call. Values arrive in the source's units, so the
configured ranges (in the flow's units) are converted into each source's units
once, when the model is built, instead of converting every value twice.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal, NotRequired, Required

from pydantic import ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError
from typing_extensions import TypedDict

from flowdeck.pipeline.config import FieldSpec, FlowConfig, SourceConfig
from flowdeck.pipeline.expr import compile_expr
from flowdeck.pipeline.model import Batch
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

    def run(self, batch: Batch, now_ms: int) -> None:
        recs = batch.records
        if not recs:
            return
        adapter = self.models[batch.source]
        # Absent values are left out, so a missing required field reads "Field required".
        datas = [{k: v for k, v in r.data.items() if v is not None} for r in recs]
        coerce = self.coerce
        for d in datas:
            for name, ok, rule in coerce:
                v = d.get(name)
                if v is not None and type(v) is not ok:
                    d[name] = rule(v)
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
            recs = [recs[i] for i in good_idx]
        optional = self.optional
        for rec, data in zip(recs, valid, strict=True):
            for n in optional:
                if n not in data:
                    data[n] = None
            rec.data = data
        if self.rules:
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
            recs = kept
        batch.records = recs
