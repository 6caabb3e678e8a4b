"""Resolve: merge records of the same key and time window from several sources.

Each stored record keeps every source's contribution, so a source that
reports late (a lagging provider, a replay) is merged with what is already
stored instead of overwriting it: resolving is idempotent and order-free.
"""

from __future__ import annotations

import math
import operator
import statistics
from collections.abc import Callable
from typing import Any

from flowdeck.pipeline.config import FlowConfig
from flowdeck.pipeline.model import Batch, Rec
from flowdeck.pipeline.stages.base import register
from flowdeck.storage.model import IssueDraft

VERSION = "resolve/1"
_BY_TS_KEY = operator.attrgetter("ts", "key")


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


@register("resolve")
class Resolver:
    name = "resolve"
    version = VERSION

    def __init__(self, flow_name: str, flow: FlowConfig) -> None:
        self.flow_name = flow_name
        self.window_ms = int(flow.resolve.window * 1000)
        self.strategy = flow.resolve.strategy
        self.tolerance = dict(flow.resolve.tolerance)
        self.priority = {s.name: s.priority for s in flow.sources}
        self.reliability = {s.name: s.reliability for s in flow.sources}
        self.merge_value: Callable[[list[tuple[str, Any, dict]]], Any] = getattr(
            self, f"_{self.strategy}")

    def bucket(self, ts: int) -> int:
        w = self.window_ms
        return ts - ts % w if w > 0 else ts

    # ---- strategies: each takes [(source, value, contribution)] of one field, numeric values

    def _priority(self, vals):
        return min(vals, key=lambda t: (self.priority.get(t[0], 99), t[0]))[1]

    def _median(self, vals):
        return statistics.median(v for _, v, _ in vals)

    def _mean(self, vals):
        return math.fsum(v for _, v, _ in vals) / len(vals)

    def _most_recent(self, vals):
        return max(vals, key=lambda t: (t[2]["ts"], -self.priority.get(t[0], 99)))[1]

    def _weighted(self, vals):
        weights = [(self.reliability.get(s, 1.0) * c.get("q", 1.0), v) for s, v, c in vals]
        total = sum(w for w, _ in weights)
        if total <= 0:
            return self._mean(vals)
        return math.fsum(w * v for w, v in weights) / total

    # ----

    def run(self, batch: Batch, now_ms: int,
            stored: dict[tuple[str, int], dict] | None = None) -> None:
        w = self.window_ms
        # (key, window) -> [contributions by source, flags, the batch's record per source]
        groups: dict[tuple[str, int], list] = {}
        for rec in batch.records:
            ts = rec.ts
            gk = (rec.key, ts - ts % w if w > 0 else ts)
            g = groups.get(gk)
            if g is None:
                base = stored.get(gk) if stored else None
                g = groups[gk] = [dict(base) if base else {}, set(), {}]
            contribs = g[0]
            prev = contribs.get(rec.source)
            if prev is not None and prev["ts"] > ts and prev["raw"] != rec.raw_id:
                continue  # an older reading of the same source in the same window
            contribs[rec.source] = {"v": rec.data, "ts": ts, "raw": rec.raw_id,
                                    "q": rec.quality, "f": rec.flags}
            g[2][rec.source] = rec
            if rec.flags:
                g[1].update(rec.flags)
        merge = self._merge
        out = [merge(batch, key, ts, contribs, flags, recs)
               for (key, ts), (contribs, flags, recs) in groups.items()]
        out.sort(key=_BY_TS_KEY)
        batch.records = out

    def _merge(self, batch: Batch, key: str, ts: int, contribs: dict[str, dict],
               flags: set[str], recs: dict[str, Rec] | None = None) -> Rec:
        if len(contribs) == 1:  # one source: nothing to merge or disagree about
            (src, only), = contribs.items()
            rec = recs.get(src) if recs else None
            if rec is not None and rec.data is only["v"]:
                # The batch's own record becomes the merged one: no copy of its values
                # (nothing downstream changes them) and no new object per record.
                rec.ts = ts
                rec.item = -1
                rec.sources = [src]
            else:
                rec = Rec(key, ts, dict(only["v"]), src, only["raw"], -1)
            rec.raw_id = only["raw"]
            rec.raw_ids = [only["raw"]] if only.get("raw") is not None else []
            rec.quality = only.get("q", 1.0)
            rec.contrib = contribs
            rec.flags = sorted(flags)
            return rec
        order = sorted(contribs, key=lambda s: (self.priority.get(s, 99), s))
        first = contribs[order[0]]
        fields: list[str] = []
        for s in order:
            for f in contribs[s]["v"]:
                if f not in fields:
                    fields.append(f)
        data: dict[str, Any] = {}
        conflicts = []
        for f in fields:
            vals = [(s, contribs[s]["v"].get(f), contribs[s]) for s in order]
            present = [t for t in vals if t[1] is not None]
            if not present:
                data[f] = None
                continue
            numeric = [t for t in present if _num(t[1])]
            if len(numeric) == len(present) and len(numeric) > 1:
                data[f] = self.merge_value(numeric)
                tol = self.tolerance.get(f)
                if tol is not None:
                    lo = min(numeric, key=lambda t: t[1])
                    hi = max(numeric, key=lambda t: t[1])
                    if isinstance(tol, str):  # relative, e.g. "0.1%" of the merged value
                        tol = abs(data[f]) * float(tol[:-1]) / 100
                    if hi[1] - lo[1] > tol:
                        conflicts.append((f, {s: v for s, v, _ in numeric}, hi[1] - lo[1], tol))
            else:
                data[f] = present[0][1]
        rec = Rec(key, ts, data, order[0], first["raw"], -1)
        rec.sources = order
        rec.raw_ids = sorted({c["raw"] for c in contribs.values() if c.get("raw") is not None})
        rec.quality = round(sum(c.get("q", 1.0) for c in contribs.values()) / len(contribs), 4)
        rec.contrib = contribs
        rec.flags = sorted(flags)
        for f, values, spread, tol in conflicts:
            if "conflict" not in rec.flags:
                rec.flags.append("conflict")
            pretty = ", ".join(f"{s}={v:.4g}" for s, v in values.items())
            batch.issues.append(IssueDraft(
                flow=self.flow_name, kind="conflict", severity="warning",
                title=f"{key}: sources disagree on {f} by {spread:.3g} (tolerance {tol:g}): "
                      f"{pretty}",
                fingerprint=f"conflict:{self.flow_name}:{key}:{f}:{','.join(sorted(values))}",
                key=key, detail={"field": f, "values": values, "spread": spread,
                                 "tolerance": tol, "ts": ts},
                record_keys=[(key, ts)], raw_ids=rec.raw_ids))
        return rec
