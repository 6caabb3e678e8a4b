"""Resolve: merge records of the same key and time window from several sources.

Each stored record keeps every source's contribution, so a source that
reports late (a lagging provider, a replay) is merged with what is already
stored instead of overwriting it: resolving is idempotent and order-free.

Agreement (``median`` and ``weighted``, ``resolve.agreement``, on by default): every
record three or more sources report a numeric field for teaches :class:`Agreement`
each source's deviation from the consensus (the median of all of them); a source whose
running mean deviation (its *bias*) is large against the usual disagreement of the
sources loses weight, and is named in a ``source_drift`` issue. The weights of a record
come from the records learned before it (causal); docs/detection.md, "Resolution".
"""

from __future__ import annotations

import json
import math
import operator
import statistics
from collections.abc import Callable, Iterable
from itertools import repeat
from typing import Any

from flowdeck.pipeline.config import FlowConfig
from flowdeck.pipeline.model import Batch, Rec
from flowdeck.pipeline.stages.base import register
from flowdeck.storage.model import IssueDraft

VERSION = "resolve/2"

AGREEMENT_ALPHA = 0.05
"""Weight of a new deviation in a source's running bias (about 20 records of memory)."""
AGREEMENT_MIN = 30
"""Records a (key, field, source) needs before its agreement may lower its weight."""
AGREEMENT_Z = 3.0
"""A bias this many times the usual disagreement halves the source's weight."""
DRIFT_REPORT = 0.5
"""Agreement below which a source is named in a ``source_drift`` issue."""
DRIFT_CLEAR = 0.8
"""Agreement above which a reported source is healthy again (the next drift is a new issue)."""
AGREEMENT_HISTORY_MS = 3 * 3600 * 1000
"""Stored records a restarted engine replays into the agreement (Resolver.warm)."""
AGREEMENT_MAX = 20_000
"""(key, field) pairs tracked; the least recently updated is forgotten beyond this."""


class Agreement:
    """Per (key, field): how far each source's values run from the consensus.

    For a record with three or more numeric values of a field: the consensus ``c`` is
    their median; each source's deviation ``d = v - c`` moves its running bias (an EWMA,
    :data:`AGREEMENT_ALPHA`), and the median of the ``|d|`` (the disagreement of the
    sources that agree) moves the pair's running *noise*. A source's agreement is
    ``1 / (1 + (|bias| / (AGREEMENT_Z * noise)) ** 2)``: 1 for a source that agrees, 0.5 at
    a bias of three times the noise, towards 0 as it drifts away; 1 until
    :data:`AGREEMENT_MIN` records. Bounded: a few numbers per (key, field, source), at most
    :data:`AGREEMENT_MAX` (key, field) pairs. JSON-able (:meth:`state`)."""

    def __init__(self) -> None:
        # (key, field) -> {"ts": last ts learned, "n": records, "noise": ewma,
        #                  "src": {source: [n, bias, reported]}}
        self.pairs: dict[tuple[str, str], dict[str, Any]] = {}

    def weights(self, key: str, field: str, sources: list[str]) -> list[float] | None:
        """Each source's agreement, in order; None when every one is 1 (nothing known)."""
        pair = self.pairs.get((key, field))
        if pair is None:
            return None
        out = [self._agreement(pair, pair["src"].get(s)) for s in sources]
        return None if all(w == 1.0 for w in out) else out

    @staticmethod
    def _agreement(pair: dict[str, Any], src: list | None) -> float:
        if src is None or src[0] < AGREEMENT_MIN:
            return 1.0
        scale = AGREEMENT_Z * max(pair["noise"], abs(pair["c"]) * 1e-9, 1e-12)
        z = abs(src[1]) / scale
        return 1.0 / (1.0 + z * z)

    def learn(self, key: str, field: str, ts: int, values: list[tuple[str, float]]
              ) -> list[tuple[str, float, float, float]]:
        """Learn one record's values (only once per (key, field) and timestamp, in time
        order); returns the sources that crossed :data:`DRIFT_REPORT` just now, as
        ``(source, agreement, bias, noise)``."""
        if len(values) < 3:
            return []
        pk = (key, field)
        pair = self.pairs.pop(pk, None)  # re-inserted last: the dict is in LRU order
        if pair is None:
            pair = {"ts": None, "n": 0, "noise": 0.0, "c": 0.0, "src": {}}
        self.pairs[pk] = pair
        if len(self.pairs) > AGREEMENT_MAX:
            del self.pairs[next(iter(self.pairs))]
        if pair["ts"] is not None and ts <= pair["ts"]:
            return []
        pair["ts"] = ts
        c = statistics.median(v for _, v in values)
        devs = [(s, v - c) for s, v in values]
        spread = statistics.median(abs(d) for _, d in devs)
        a = AGREEMENT_ALPHA
        pair["noise"] = spread if pair["n"] == 0 else pair["noise"] + a * (spread - pair["noise"])
        pair["c"] = c
        pair["n"] += 1
        crossed = []
        for s, d in devs:
            src = pair["src"].get(s)
            if src is None:
                src = pair["src"][s] = [0, d, False]
            else:
                src[1] += a * (d - src[1])
            src[0] += 1
            agreement = self._agreement(pair, src)
            if not src[2] and agreement < DRIFT_REPORT:
                src[2] = True
                crossed.append((s, agreement, src[1], pair["noise"]))
            elif src[2] and agreement > DRIFT_CLEAR:
                src[2] = False
        return crossed

    def snapshot(self, key: str, field: str) -> dict[str, dict[str, float]]:
        """{source: {"agreement", "bias", "n"}} of one (key, field), for display and tests."""
        pair = self.pairs.get((key, field))
        if pair is None:
            return {}
        return {s: {"agreement": self._agreement(pair, src), "bias": src[1], "n": src[0]}
                for s, src in pair["src"].items()}

    def state(self) -> list:
        return [[k, f, p] for (k, f), p in self.pairs.items()]

    def restore(self, state: list) -> None:
        self.pairs = {(k, f): p for k, f, p in state}


def weighted_median(values: list[float], weights: list[float]) -> float:
    """The value at half the total weight (the mean of two at an exact tie); equal weights
    give :func:`statistics.median`."""
    order = sorted(range(len(values)), key=values.__getitem__)
    total = math.fsum(weights)
    half = total / 2.0
    acc = 0.0
    for j, i in enumerate(order):
        acc += weights[i]
        if acc > half * (1 + 1e-12):
            return values[i]
        if abs(acc - half) <= half * 1e-12 and j + 1 < len(order):
            return (values[i] + values[order[j + 1]]) / 2.0
    return values[order[-1]]
_BY_KEY = operator.attrgetter("key")
_BY_TS = operator.attrgetter("ts")
_BY_TS_KEY = operator.attrgetter("ts", "key")


def _in_order(recs: list[Rec]) -> bool:
    """Strictly ascending by (window, key): what the two sorts below would leave as is."""
    following = map(_BY_TS_KEY, recs)
    next(following, None)
    return all(map(operator.lt, map(_BY_TS_KEY, recs), following))


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
        self.merge_value: Callable[..., Any] = getattr(self, f"_{self.strategy}")
        self.agreement = Agreement()
        # Whether the agreement changes the merged values (it is measured either way,
        # so a drift is named whatever the strategy).
        self.use_agreement = flow.resolve.agreement and self.strategy in ("median", "weighted")

    def bucket(self, ts: int) -> int:
        w = self.window_ms
        return ts - ts % w if w > 0 else ts

    # ---- strategies: each takes [(source, value, contribution)] of one field, numeric values

    # ``agreement``: each source's agreement (Agreement.weights), or None; only median and
    # weighted use it.

    def _priority(self, vals, agreement=None):
        return min(vals, key=lambda t: (self.priority.get(t[0], 99), t[0]))[1]

    def _median(self, vals, agreement=None):
        # Only once a source is known to disagree: near-equal weights of sources that
        # agree must not turn a two-source median (their mean) into one of the two.
        if agreement is not None and min(agreement) < DRIFT_REPORT and sum(agreement) > 0:
            return weighted_median([v for _, v, _ in vals], agreement)
        return statistics.median(v for _, v, _ in vals)

    def _mean(self, vals, agreement=None):
        return math.fsum(v for _, v, _ in vals) / len(vals)

    def _most_recent(self, vals, agreement=None):
        return max(vals, key=lambda t: (t[2]["ts"], -self.priority.get(t[0], 99)))[1]

    def _weighted(self, vals, agreement=None):
        weights = [(self.reliability.get(s, 1.0) * c.get("q", 1.0), v) for s, v, c in vals]
        if agreement is not None:
            weights = [(w * a, v) for (w, v), a in zip(weights, agreement, strict=True)]
        total = sum(w for w, _ in weights)
        if total <= 0:
            return self._mean(vals)
        return math.fsum(w * v for w, v in weights) / total

    def warm(self, rows: Iterable[tuple[str, int, dict]]) -> None:
        """Learn the agreement from stored records ``(key, ts, contributions)``, oldest
        first, so a restarted engine weighs its sources as a running one did."""
        for key, ts, contribs in rows:
            if isinstance(contribs, str):
                contribs = json.loads(contribs)
            if not contribs or len(contribs) < 3:
                continue
            fields: dict[str, list[tuple[str, float]]] = {}
            for src, c in contribs.items():
                for f, v in (c.get("v") or {}).items():
                    if _num(v):
                        fields.setdefault(f, []).append((src, v))
            for f, vals in fields.items():
                self.agreement.learn(key, f, ts, vals)

    # ----

    def run(self, batch: Batch, now_ms: int,
            stored: dict[tuple[str, int], dict] | None = None) -> None:
        w = self.window_ms
        # A (key, window) that only one of the batch's records falls in, with nothing
        # stored for it, is that record itself (the common case): it is finished in one
        # pass, with no group built. Every other (key, window) is a group:
        # (key, window) -> [contributions by source, flags, the batch's record per source]
        alone: dict[tuple[str, int], Rec] = {}
        groups: dict[tuple[str, int], list] = {}

        def add(g: list, rec: Rec) -> None:
            contribs = g[0]
            ts = rec.ts
            prev = contribs.get(rec.source)
            if prev is not None and prev["ts"] > ts and prev["raw"] != rec.raw_id:
                return  # an older reading of the same source in the same window
            contribs[rec.source] = {"v": rec.data, "ts": ts, "raw": rec.raw_id,
                                    "q": rec.quality, "f": rec.flags}
            g[2][rec.source] = rec
            if rec.flags:
                g[1].update(rec.flags)

        # ``alone`` holds the first record of every (key, window); a pair that turns out
        # to have more (or something stored) is in ``groups`` too, and grouped from there.
        recs = batch.records
        tss = list(map(_BY_TS, recs))
        windows = map(operator.sub, tss, map(operator.mod, tss, repeat(w))) if w > 0 else tss
        pairs = list(zip(map(_BY_KEY, recs), windows, strict=True))
        alone = dict(zip(pairs, recs, strict=True))  # the last record of each pair ...
        if len(alone) == len(recs):  # ... which is its first and only one (the usual case)
            if stored:
                for gk, rec in alone.items():
                    base = stored.get(gk)
                    if base:
                        add(groups.setdefault(gk, [dict(base), set(), {}]), rec)
            recs = []
        else:
            alone = {}
        first_of = alone.setdefault
        for rec in recs:
            ts = rec.ts
            gk = (rec.key, ts - ts % w if w > 0 else ts)
            first = first_of(gk, rec)
            if first is rec:
                if stored:
                    base = stored.get(gk)
                    if base:
                        add(groups.setdefault(gk, [dict(base), set(), {}]), rec)
                continue
            g = groups.get(gk)
            if g is None:  # nothing stored (else the first made the group): the first joins
                g = groups[gk] = [{}, set(), {}]
                add(g, first)
            add(g, rec)
        out: list[Rec] = []
        append = out.append
        for gk, rec in alone.items():
            if groups and gk in groups:
                continue
            ts = gk[1]
            # What _merge makes of a group of one record, without the group.
            flags = rec.flags
            raw = rec.raw_id
            rec.contrib = {rec.source: {"v": rec.data, "ts": rec.ts, "raw": raw,
                                        "q": rec.quality, "f": flags}}
            rec.ts = ts
            rec.item = -1
            rec.sources = [rec.source]
            rec.raw_ids = [raw] if raw is not None else []
            rec.flags = sorted(set(flags)) if flags else []
            append(rec)
        merge = self._merge
        # In time order: the agreement learns each (key, field) once per timestamp, in
        # order, so a late source's older windows must come before the batch's newest
        # (a record alone in its window teaches the agreement nothing: one source).
        for (key, ts), (contribs, flags, recs) in sorted(
                groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            append(merge(batch, key, ts, contribs, flags, recs))
        # By (window, key), unique, as the groups were: by key, then stably by window (two
        # sorts on one attribute each cost a seventh of one on a (ts, key) tuple).
        # A batch that arrives in that order already (a feed's readings, by time, then by
        # key) is checked in one lazy pass in C and left as it is: the same order.
        if not _in_order(out):
            out.sort(key=_BY_KEY)
            out.sort(key=_BY_TS)
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
        drifts: list[tuple[str, str, float, float, float]] = []
        for f in fields:
            vals = [(s, contribs[s]["v"].get(f), contribs[s]) for s in order]
            present = [t for t in vals if t[1] is not None]
            if not present:
                data[f] = None
                continue
            numeric = [t for t in present if _num(t[1])]
            if len(numeric) == len(present) and len(numeric) > 1:
                weights = (self.agreement.weights(key, f, [s for s, _, _ in numeric])
                           if self.use_agreement else None)
                data[f] = self.merge_value(numeric, weights)
                for src, agreement, bias, noise in self.agreement.learn(
                        key, f, ts, [(s, v) for s, v, _ in numeric]):
                    drifts.append((f, src, agreement, bias, noise))
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
        for f, src, agreement, bias, noise in drifts:
            batch.issues.append(IssueDraft(
                flow=self.flow_name, kind="source_drift", severity="warning",
                title=f"{src} drifts from the other sources on {key} {f}: bias {bias:+.4g} "
                      f"(usual disagreement {noise:.3g}); its weight is down to {agreement:.2f}",
                fingerprint=f"source_drift:{self.flow_name}:{src}:{f}:{key}",
                key=key, source=src,
                detail={"source": src, "metric": f, "bias": bias, "noise": noise,
                        "agreement": agreement, "ts": ts,
                        "weighted": self.use_agreement},
                record_keys=[(key, ts)], raw_ids=rec.raw_ids))
        return rec
