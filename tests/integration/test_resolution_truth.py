"""Resolution measured against the simulator's truth (pipeline/demo/truth.py): a source that
drifts is named in a source_drift issue and down-weighted below the sources that agree,
and the merged values are closer to the truth with the down-weighting than without."""

from __future__ import annotations

import pytest

from flowdeck.pipeline.config import BUNDLED_CONFIG, load_config
from flowdeck.pipeline.demo.truth import VARIANTS, measure
from flowdeck.pipeline.stages.resolve import Resolver


def test_a_drifting_source_is_named_and_down_weighted() -> None:
    report = measure("drift", minutes=150, flows=("fx",))
    issues = report.drifts["weighted"]
    assert [(i.kind, i.source, i.key, i.detail["metric"]) for i in issues] == [
        ("source_drift", "ecbx", "GBPUSD", "rate")]
    (issue,) = issues
    assert issue.detail["bias"] > 0  # ecbx reads high: the scenario adds +0.05 % an hour
    assert "ecbx" in issue.title and "rate" in issue.title
    resolver = report.resolvers["weighted"]["fx"]
    weights = {s: v["agreement"] for s, v in resolver.agreement.snapshot("GBPUSD", "rate").items()}
    assert weights["ecbx"] < 0.1 < 0.9 < min(weights["fxquote"], weights["slowfx"])
    # The pairs nobody drifts on keep every source at full weight.
    other = resolver.agreement.snapshot("EURUSD", "rate")
    assert min(v["agreement"] for v in other.values()) > 0.5
    errors = {v: report.errors[v]["fx.rate"].mae for v in VARIANTS}
    print({v: round(e, 4) for v, e in errors.items()})  # bp against the truth
    assert errors["weighted"] < errors["weighted (no agreement)"]
    assert errors["median"] <= errors["median (no agreement)"]


def test_a_healthy_scenario_names_no_source() -> None:
    report = measure("normal", minutes=120, flows=("fx",))
    assert all(not issues for issues in report.drifts.values())


def test_the_agreement_is_restored_from_stored_contributions() -> None:
    report = measure("drift", minutes=150, flows=("fx",))
    running = report.resolvers["weighted"]["fx"]
    # What the store keeps: (key, ts, contributions) per record, oldest first.
    rows = sorted(report.stored["weighted"]["fx"].items(), key=lambda kv: kv[0][1])
    restarted = Resolver("fx", load_config(BUNDLED_CONFIG).flows["fx"])
    restarted.warm((k, ts, c) for (k, ts), c in rows)
    assert (restarted.agreement.snapshot("GBPUSD", "rate")
            == running.agreement.snapshot("GBPUSD", "rate"))


async def test_the_engine_names_a_drifting_source_and_restores_its_weight(sqlite_store, clock):
    """Through the engine and a real store: the drift scenario's ecbx is named in a stored
    source_drift issue, and a restarted engine (warmed from the stored contributions)
    weighs the sources as the running one did."""
    from support.recovery import issues_of

    from flowdeck.pipeline.demo.simulator import Scenario, Simulator
    from flowdeck.pipeline.engine.engine import Engine

    sim = Simulator(seed=7, scenario=Scenario.load("drift"), clock=clock)
    await sim.start()
    try:
        engine = Engine(load_config(BUNDLED_CONFIG), sqlite_store, clock=clock,
                        simulator_url=sim.base_url)
        await engine.start(schedule=False)
        try:
            for _ in range(100 // 5):  # 100 minutes, a poll every 5 (it answers 5 minutes)
                await engine.run_flow("fx", "schedule")
                clock.advance(300.0)
            running = engine.flows["fx"].chain.resolver.agreement.snapshot("GBPUSD", "rate")
        finally:
            await engine.stop()
        engine = Engine(load_config(BUNDLED_CONFIG), sqlite_store, clock=clock,
                        simulator_url=sim.base_url)
        await engine.start(schedule=False)
        try:
            restored = engine.flows["fx"].chain.resolver.agreement.snapshot("GBPUSD", "rate")
        finally:
            await engine.stop()
    finally:
        await sim.stop()
    drifts = issues_of(sqlite_store, "source_drift")
    assert [(i["key"], i["detail"]["source"], i["detail"]["metric"]) for i in drifts] == [
        ("GBPUSD", "ecbx", "rate")]
    assert running["ecbx"]["agreement"] < 0.5 < running["fxquote"]["agreement"]
    assert set(restored) == set(running)
    for src, mine in running.items():
        assert restored[src]["n"] == mine["n"]
        assert restored[src]["agreement"] == pytest.approx(mine["agreement"], rel=1e-9)
