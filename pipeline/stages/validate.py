"""Validate: types, required fields, ranges, allowed values, patterns, cross-field rules.

One pydantic ``TypeAdapter`` per source is built once from the config; a whole
batch is validated in one call. Values arrive in the source's units, so the
configured ranges (in the flow's units) are converted into each source's units
once, when the model is built, instead of converting every value twice.
"""

from __future__ import annotations

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

    def run(self, batch: Batch, now_ms: int) -> None:
        recs = batch.records
        if not recs:
            return
        adapter = self.models[batch.source]
        # Absent values are left out, so a missing required field reads "Field required".
        datas = [{k: v for k, v in r.data.items() if v is not None} for r in recs]
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
