"""Failure detection beyond the breaker: stale sources and error rates over a window."""

from __future__ import annotations

import json

from support.recovery import fast_config, fast_config_text, issues_of, run_weather, sequence

from flowdeck.pipeline.config import parse_config
from flowdeck.pipeline.engine.engine import Engine

FILE_FLOW = """
flows:
  meters:
    schedule: {{every: 10s}}
    key: id
    freshness: 2m
    sources:
      - {{name: dump, kind: file, path: {path}, format: jsonl,
          fields: {{id: id, ts: ts, value: value}}, timestamp: {{format: epoch_ms}}}}
    fields:
      id: {{type: str, required: true}}
      value: {{type: float}}
"""


def write_readings(path, ts_ms: int) -> None:
    path.write_text("".join(json.dumps({"id": f"m{i}", "ts": ts_ms, "value": i}) + "\n"
                            for i in range(3)))


async def started_meters(tmp_path, store, clock):
    """The file flow with fresh readings, its config, and its engine, started unscheduled."""
    data = tmp_path / "meters.jsonl"
    write_readings(data, clock.now_ms())
    cfg = parse_config(FILE_FLOW.format(path=data), str(tmp_path / "flow.yaml"))
    engine = Engine(cfg, store, clock=clock)
    await engine.start(schedule=False)
    return data, cfg, engine


async def test_a_source_that_answers_with_nothing_new_goes_stale_and_recovers(
        tmp_path, sqlite_store, clock):
    data, cfg, engine = await started_meters(tmp_path, sqlite_store, clock)
    try:
        await engine.run_flow("meters")
        assert engine.snapshot()["flows"]["meters"]["state"] == "healthy"
        for _ in range(8):  # 80 s: the file is unchanged, but still inside freshness
            clock.advance(10)
            await engine.run_flow("meters")
        assert not issues_of(sqlite_store, "stale_source", state="open")
        for _ in range(5):  # past 2 minutes without a newer record
            clock.advance(10)
            await engine.run_flow("meters")
        snap = engine.snapshot()["flows"]["meters"]
        assert snap["state"] == "degraded" and snap["sources"]["dump"]["stale"] is True
        stale = issues_of(sqlite_store, "stale_source", state="open")
        assert len(stale) == 1 and stale[0]["source"] == "dump"
        assert stale[0]["count"] == 1  # raised once, not once per run
        write_readings(data, clock.now_ms())  # new data arrives
        clock.advance(10)
        await engine.run_flow("meters")
        snap = engine.snapshot()["flows"]["meters"]
        assert snap["state"] == "healthy" and snap["sources"]["dump"]["stale"] is False
    finally:
        await engine.stop()
    assert sqlite_store.get_issue(stale[0]["id"])["state"] == "resolved"
    assert [a for a, _, _ in sequence(sqlite_store, "meters")] == ["stale", "fresh"]


async def test_stale_condition_survives_a_restart_and_closes_when_data_comes(
        tmp_path, sqlite_store, clock):
    data, cfg, engine = await started_meters(tmp_path, sqlite_store, clock)
    try:
        await engine.run_flow("meters")
        clock.advance(200)
        await engine.run_flow("meters")
    finally:
        await engine.stop()
    assert len(issues_of(sqlite_store, "stale_source", state="open")) == 1
    again = Engine(cfg, sqlite_store, clock=clock)
    await again.start(schedule=False)
    try:
        assert again.snapshot()["flows"]["meters"]["state"] == "degraded"
        write_readings(data, clock.now_ms())
        await again.run_flow("meters")
        assert again.snapshot()["flows"]["meters"]["state"] == "healthy"
    finally:
        await again.stop()
    assert not issues_of(sqlite_store, "stale_source", state="open")


async def test_error_rate_over_a_window_raises_an_issue_that_clears(tmp_path, store, clock):
    scenario = tmp_path / "metnet-errors.yaml"
    scenario.write_text("name: metnet-errors\nfaults:\n"
                        "  - {kind: error_burst, source: metnet, start: 0s, duration: 55s}\n")
    # No retries and a breaker that needs ten failures: the error rate is what is tested.
    text = fast_config_text().replace(
        "        priority: 1\n        reliability: 0.95\n        timeout: 3s\n",
        "        priority: 1\n        reliability: 0.95\n        timeout: 3s\n"
        "        retries: 0\n", 1).replace(
        "    detect:\n      - {metric: temperature",
        "    recovery:\n      breaker: {window: 20, min_requests: 20}\n"
        "      error_rate: {window: 1m, threshold: 0.5, min_requests: 4}\n"
        "    detect:\n      - {metric: temperature", 1)
    engine = Engine(fast_config(text), store, clock=clock, scenario=str(scenario))
    await engine.start(schedule=False)
    try:
        await run_weather(engine, clock, 40)  # four failed requests in the window
        high = issues_of(store, "error_rate", "weather", state="open")
        assert len(high) == 1 and high[0]["source"] == "metnet"
        assert "100% of 4 requests" in high[0]["title"]
        assert engine.snapshot()["flows"]["weather"]["state"] == "degraded"
        await run_weather(engine, clock, 80)  # metnet answers again from 60 s on
        assert not issues_of(store, "error_rate", "weather", state="open")
    finally:
        await engine.stop()
    names = [(a, s) for a, s, _ in sequence(store) if a.startswith("error_rate")]
    assert names == [("error_rate", "metnet"), ("error_rate_ok", "metnet")]
