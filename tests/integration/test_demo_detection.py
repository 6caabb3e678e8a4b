"""The bundled demo's detectors against the simulator, on a ManualClock: quiet when nothing
is wrong, and every anomaly the `anomalies` scenario injects is flagged.

The calibrated detectors raise nothing before a series has min_history + warmup points
(about 160 one-minute points here). The `anomalies` scenario's sources answer their first
request with 3 hours of healthy history (its `backlog`), so a fresh demo is calibrated
before its first anomaly at 3 minutes: that is what an operator running `flowdeck demo
--scenario anomalies` sees. The normal-scenario test and the restart test first give the
demo three hours of a healthy simulator at a one-minute poll (the simulator answers with
the last 5 minutes, so no minute is missed), then run the part under test at the demo's
own 10 s poll; the restart test's anomalies are caught by detectors warmed from the
stored history (Engine.start -> AnomalyDetector.warm).
"""

from __future__ import annotations

import asyncio
from datetime import datetime

from support.recovery import issues_of

from flowdeck.pipeline.config import BUNDLED_CONFIG, load_config
from flowdeck.pipeline.demo.simulator import Scenario, Simulator
from flowdeck.pipeline.engine.engine import Engine

FLOWS = ("weather", "fx")
HISTORY_MINUTES = 180


async def run_flows(engine, clock, minutes: float, step: float) -> None:
    t = 0.0
    while t < minutes * 60:
        for flow in FLOWS:
            await engine.run_flow(flow, "schedule")
        clock.advance(step)
        t += step


async def demo_engine(store, clock, scenario: str) -> tuple[Simulator, Engine]:
    sim = Simulator(seed=7, scenario=Scenario.load(scenario), clock=clock)
    await sim.start()
    engine = Engine(load_config(BUNDLED_CONFIG), store, clock=clock, simulator_url=sim.base_url)
    await engine.start(schedule=False)
    return sim, engine


async def healthy_history(store, clock) -> None:
    sim, engine = await demo_engine(store, clock, "normal")
    try:
        await run_flows(engine, clock, HISTORY_MINUTES, 60.0)
    finally:
        await engine.stop()
        await sim.stop()


async def test_the_normal_scenario_opens_no_anomaly_issue(sqlite_store, clock):
    await healthy_history(sqlite_store, clock)
    assert issues_of(sqlite_store, "anomaly") == []
    sim, engine = await demo_engine(sqlite_store, clock, "normal")
    try:
        await run_flows(engine, clock, 30, 10.0)  # 30 minutes at the demo's 10 s poll
    finally:
        await engine.stop()
        await sim.stop()
    assert issues_of(sqlite_store, "anomaly") == []
    for flow in FLOWS:
        records = list(sqlite_store.records_since(flow))
        assert len(records) > 1000
        assert not any(r["anomalous"] for r in records)
        assert not any(f.startswith("anomaly:") for r in records for f in r["flags"])


def ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp() * 1000)


async def caught(store, clock, *, history: bool) -> None:
    """Run the anomalies scenario for 15 minutes at the demo's poll and check that every
    injected anomaly raised exactly one issue at its onset, explained, and nothing else."""
    if history:
        await healthy_history(store, clock)
    sim, engine = await demo_engine(store, clock, "anomalies")
    shown = engine.hub.subscribe(types={"records"})  # what the feed's records channels get
    try:
        labels = sim.labels()
        await run_flows(engine, clock, 15, 10.0)  # the last anomaly starts at 11 min
    finally:
        await engine.stop()
        await sim.stop()
    published = []
    while True:
        try:
            published.append(await asyncio.wait_for(shown.get(), 0.2))
        except TimeoutError:
            break
    first_shown: dict[tuple, dict] = {}
    for ev in published:
        for row in ev.data["latest"]:
            if "anomaly_reason" in row["data"]:
                first_shown.setdefault((ev.flow, row["key"], row["ts_ms"]),
                                       row["data"]["anomaly_reason"])
    assert len(labels) == 6
    issues = issues_of(store, "anomaly")
    for label in labels:
        flow, key, metric = label["flow"], label["key"], label["metric"]
        start = ms(label["start"])
        end = ms(label["end"]) if label["end"] else start + 60_000  # a shift: its onset
        ours = [i for i in issues if (i["flow"], i["key"], i["detail"]["metric"])
                == (flow, key, metric) and start <= i["detail"]["ts"] < end]
        assert len(ours) == 1, (label, [i["title"] for i in issues])
        (issue,) = ours
        assert issue["detail"]["reason"]["observed"] == issue["detail"]["value"]
        rec = next(r for r in store.records_since(flow, start, key=key)
                   if r["ts_ms"] == issue["detail"]["ts"])
        # The flag, the reason and `anomalous` stay on the stored record, also after a
        # late source merged into it (fx's slowfx, 2 minutes behind).
        assert f"anomaly:{metric}" in rec["flags"] and rec["anomaly_score"] >= 0.5
        assert rec["anomalous"], (label, rec)
        reason = rec["data"]["anomaly_reason"]
        assert reason["metric"] == metric and reason["observed"] == rec["data"][metric]
        assert not reason["low"] <= reason["observed"] <= reason["high"]
        # The feed showed the reason the issue gives, when the run stored it (the records
        # event: the newest row per key); a late source's merge may re-explain it later.
        assert first_shown[(flow, key, rec["ts_ms"])] == issue["detail"]["reason"]
    # Nothing else: one issue per injected anomaly.
    assert len(issues) == len(labels), [i["title"] for i in issues]


async def test_a_fresh_demo_catches_every_anomaly_of_the_anomalies_scenario(sqlite_store, clock):
    await caught(sqlite_store, clock, history=False)


async def test_a_restarted_demo_catches_every_anomaly_from_its_stored_history(
        sqlite_store, clock):
    await caught(sqlite_store, clock, history=True)
