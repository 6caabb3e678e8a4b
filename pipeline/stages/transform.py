"""Transform: standard units, inverted quotes, derived fields (safe expressions)."""

from __future__ import annotations

from flowdeck.pipeline.config import FlowConfig
from flowdeck.pipeline.expr import compile_expr
from flowdeck.pipeline.model import Batch
from flowdeck.pipeline.stages.base import register
from flowdeck.pipeline.units import affine

VERSION = "transform/1"


def source_conversions(flow: FlowConfig, src) -> list[tuple[str, float, float]]:
    """[(field, a, b)] so that value_in_flow_unit = a * value_in_source_unit + b."""
    conv = []
    for field, unit in src.units.items():
        target = flow.fields[field].unit
        if target and unit != target:
            a, b = affine(unit, target)
            conv.append((field, a, b))
    return conv


def to_flow_units(data: dict, conversions, inverts) -> dict:
    """A copy of one record's values in the flow's units (inverted quotes turned round)."""
    out = dict(data)
    for field in inverts:
        v = out.get(field)
        if v is not None:
            out[field] = 1.0 / v if v else None
    for field, a, b in conversions:
        v = out.get(field)
        if v is not None:
            out[field] = a * v + b
    return out


@register("transform")
class Transformer:
    name = "transform"
    version = VERSION

    def __init__(self, flow_name: str, flow: FlowConfig) -> None:
        # Per source: [(field, a, b)] so that value_flow = a * value_source + b; computed once.
        self.conversions: dict[str, list[tuple[str, float, float]]] = {}
        self.inverts: dict[str, list[str]] = {}
        for src in flow.sources:
            self.conversions[src.name] = source_conversions(flow, src)
            self.inverts[src.name] = list(src.invert)
        # Key parts that are derived were computed in collect (the key is needed there).
        keys = flow.key_fields
        self.derive = [(name, compile_expr(text)) for name, text in flow.derive.items()
                       if name not in keys]

    def run(self, batch: Batch, now_ms: int) -> None:
        datas = [rec.data for rec in batch.records]
        # A field at a time over the batch: each conversion, then each derived field (an
        # expression sees the fields derived before it, as it would record by record).
        for field in self.inverts.get(batch.source, ()):
            for d in datas:
                v = d.get(field)
                if v is not None:
                    d[field] = 1.0 / v if v else None
        for field, a, b in self.conversions.get(batch.source, ()):
            for d in datas:
                v = d.get(field)
                if v is not None:
                    d[field] = a * v + b
        for name, expr in self.derive:
            for d, v in zip(datas, expr.over(datas), strict=True):
                d[name] = v
