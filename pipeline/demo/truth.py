"""Resolution measured against the simulator's truth: the error of each resolve strategy.

The simulator knows the true value behind every reading (``Simulator.truth``) and what a
scenario adds to one source's readings (``Simulator.source_bias``). :func:`measure` runs
the bundled demo flows over a scenario on simulated time, through the pipeline's own
stages (``StageChain.collect`` and ``refine`` on the simulator's payloads, then one
:class:`~flowdeck.pipeline.stages.resolve.Resolver` per strategy over the same records,
each merging with what it stored before, as the engine does), and compares every merged
value with the truth. No network and no store: the payloads are the bytes the HTTP
sources would answer (``Simulator.payload``; request faults such as outages are not
applied), so the numbers are the resolver's alone.

``median`` and ``weighted`` are measured with the agreement (the default) and without it
(``resolve.agreement: false``), which is what down-weighting a drifting source buys.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

from flowdeck.pipeline.config import BUNDLED_CONFIG, Config, load_config
from flowdeck.pipeline.core.clock import ManualClock
from flowdeck.pipeline.demo.catalogue import SOURCES
from flowdeck.pipeline.demo.scenarios import Scenario
from flowdeck.pipeline.demo.simulator import Simulator
from flowdeck.pipeline.model import Batch
from flowdeck.pipeline.stages.chain import StageChain
from flowdeck.pipeline.stages.resolve import Resolver
from flowdeck.storage.model import IssueDraft, RawDraft

STRATEGIES = ("priority", "median", "mean", "most_recent", "weighted")
VARIANTS = (*STRATEGIES, "median (no agreement)", "weighted (no agreement)")
T0 = 1_767_225_600.0  # 2026-01-01T00:00Z
POLL_MINUTES = 5  # a poll answers the last 5 minutes, so nothing is missed or repeated
SETTLE_MINUTES = 5  # the newest minutes are left out: a lagging source has not reported yet


@dataclass
class Errors:
    """Absolute errors of one strategy on one (flow, metric)."""

    n: int = 0
    total: float = 0.0
    squares: float = 0.0
    worst: float = 0.0

    def add(self, error: float) -> None:
        e = abs(error)
        self.n += 1
        self.total += e
        self.squares += e * e
        self.worst = max(self.worst, e)

    @property
    def mae(self) -> float:
        return self.total / self.n if self.n else math.nan

    @property
    def rmse(self) -> float:
        return math.sqrt(self.squares / self.n) if self.n else math.nan


@dataclass
class ResolutionReport:
    scenario: str
    minutes: int
    # variant -> "flow.metric" -> errors
    errors: dict[str, dict[str, Errors]] = field(default_factory=dict)
    # variant -> source_drift issues it raised
    drifts: dict[str, list[IssueDraft]] = field(default_factory=dict)
    # "flow.metric" -> the unit the error is in
    units: dict[str, str] = field(default_factory=dict)
    # the resolvers, after the run (their agreement state), by variant and flow
    resolvers: dict[str, dict[str, Resolver]] = field(default_factory=dict)
    # what each variant stored: variant -> flow -> (key, window ts) -> contributions
    stored: dict[str, dict[str, dict[tuple[str, int], Any]]] = field(default_factory=dict)

    def table(self) -> str:
        metrics = sorted({m for e in self.errors.values() for m in e})
        head = f"{'strategy':26}" + "".join(f" {m + ' MAE':>22}" for m in metrics)
        rows = [f"scenario {self.scenario}, {self.minutes} simulated minutes; mean absolute "
                f"error of the merged value against the truth (units: "
                + ", ".join(f"{m} {self.units[m]}" for m in metrics) + ")", head]
        for variant in VARIANTS:
            errs = self.errors.get(variant, {})
            rows.append(f"{variant:26}" + "".join(
                f" {errs[m].mae:22.6g}" if m in errs else f" {'-':>22}" for m in metrics))
        seen = set()  # every variant measures the agreement: the same issues
        for variant in VARIANTS:
            for issue in self.drifts.get(variant, []):
                if issue.fingerprint not in seen:
                    seen.add(issue.fingerprint)
                    rows.append(f"{issue.kind}: {issue.title}")
        return "\n".join(rows)

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario, "minutes": self.minutes, "units": self.units,
            "errors": {v: {m: {"n": e.n, "mae": e.mae, "rmse": e.rmse, "max": e.worst}
                           for m, e in errs.items()} for v, errs in self.errors.items()},
            "source_drift": {v: [{"title": i.title, **i.detail} for i in issues]
                             for v, issues in self.drifts.items()},
        }


def _variant_flow(config: Config, flow: str, variant: str):
    cfg = config.flows[flow]
    strategy, _, rest = variant.partition(" ")
    resolve = cfg.resolve.model_copy(update={"strategy": strategy,
                                             "agreement": not rest})
    return cfg.model_copy(update={"resolve": resolve})


def measure(scenario: str | Scenario = "drift", *, minutes: int = 240, seed: int = 7,
            config: Config | None = None, flows: tuple[str, ...] = ("weather", "fx"),
            t0: float = T0) -> ResolutionReport:
    """Run ``flows`` of the demo config over ``minutes`` of ``scenario`` and measure every
    resolve strategy's error against the truth (see the module's docstring)."""
    scen = scenario if isinstance(scenario, Scenario) else Scenario.load(scenario)
    config = config or load_config(BUNDLED_CONFIG)
    clock = ManualClock(t0)
    sim = Simulator(seed=seed, scenario=scen, clock=clock)
    sim.begin()
    report = ResolutionReport(scen.name, minutes)
    chains = {f: StageChain(f, config.flows[f], config) for f in flows}
    resolvers = {v: {f: Resolver(f, _variant_flow(config, f, v)) for f in flows}
                 for v in VARIANTS}
    report.resolvers = resolvers
    # variant -> flow -> (key, window ts) -> the merged record's contributions and data
    stored: dict[str, dict[str, dict[tuple[str, int], Any]]] = {
        v: {f: {} for f in flows} for v in VARIANTS}
    report.stored = stored
    merged: dict[str, dict[str, dict[tuple[str, int], dict]]] = {
        v: {f: {} for f in flows} for v in VARIANTS}
    report.drifts = {v: [] for v in VARIANTS}
    raw_id = 0
    for step in range(POLL_MINUTES, minutes + 1, POLL_MINUTES):
        clock.set(t0 + step * 60.0)
        now = clock.now()
        now_ms = int(now * 1000)
        for flow in flows:
            records = []
            for src in config.flows[flow].sources:
                if src.name not in SOURCES:
                    continue
                body, ctype = sim.payload(src.name, now)
                raw_id += 1
                raw = RawDraft(src.name, body, now_ms, ctype, 200, raw_id=raw_id)
                batch, _ = chains[flow].collect(raw, now_ms)
                chains[flow].refine(batch, now_ms)
                records.extend(batch.records)
            for variant in VARIANTS:
                resolver = resolvers[variant][flow]
                run = Batch(flow, None, None, now_ms,
                            records=[copy.copy(r) for r in records])
                mine = stored[variant][flow]
                resolver.run(run, now_ms, {gk: mine[gk] for gk in {
                    (r.key, resolver.bucket(r.ts)) for r in run.records} if gk in mine})
                for rec in run.records:
                    mine[(rec.key, rec.ts)] = rec.contrib
                    merged[variant][flow][(rec.key, rec.ts)] = rec.data
                report.drifts[variant].extend(
                    i for i in run.issues if i.kind == "source_drift")
    last_ms = int((t0 + (minutes - SETTLE_MINUTES) * 60.0) * 1000)
    for variant in VARIANTS:
        out = report.errors[variant] = {}
        for flow in flows:
            for (key, ts), data in merged[variant][flow].items():
                if ts > last_ms:
                    continue
                truth = sim.truth(flow, key, ts // 60_000)
                for metric, true in truth.items():
                    value = data.get(metric)
                    if not isinstance(value, int | float) or isinstance(value, bool):
                        continue
                    name = f"{flow}.{metric}"
                    unit = _unit(config, flow, metric)
                    if unit is None:  # no unit (a rate, a price): relative, in basis points
                        unit, error = "bp", (value - true) / abs(true) * 1e4 if true else 0.0
                    else:
                        error = value - true
                    out.setdefault(name, Errors()).add(error)
                    report.units[name] = unit
    return report


def _unit(config: Config, flow: str, metric: str) -> str | None:
    spec = config.flows[flow].fields.get(metric)
    return getattr(spec, "unit", None) if spec is not None else None
