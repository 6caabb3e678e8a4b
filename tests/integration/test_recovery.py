"""Recovery, proven with fault scenarios: retry, breaker, failover, probes, failback, incidents."""

from __future__ import annotations

import asyncio
import json

import pytest
from support.feed import aget
from support.recovery import fast_config, fast_config_text, run_weather, sequence

from flowdeck.pipeline.config import BUNDLED_CONFIG, parse_config
from flowdeck.pipeline.engine.breakers import CLOSED, HALF_OPEN, OPEN, Breaker, BreakerSettings
from flowdeck.pipeline.engine.engine import Engine
from flowdeck.pipeline.serve.control import ControlError, LocalControl
from flowdeck.pipeline.serve.feed import FeedServer


def test_breaker_opens_on_failure_rate_probes_and_closes_with_hysteresis():
    b = Breaker(
        BreakerSettings(window=4, min_requests=3, failure_rate=0.5, cooldown_s=30, probes=2)
    )
    t = 0
    assert b.record(True, t) is None
    assert b.record(False, t) is None  # 1 of 2: too few requests to judge
    assert b.record(False, t) == "opened"  # 2 of 3 failed
    assert b.state == OPEN and not b.allows(t + 29_000)
    assert b.allows(t + 30_000) and b.state == HALF_OPEN
    assert b.record(False, t + 30_000) == "reopened"
    assert b.cooldown_s == 60  # doubled: a flapping source is asked less and less often
    assert not b.allows(t + 89_000) and b.allows(t + 90_000)
    assert b.record(True, t + 90_000) is None  # one good probe is not enough
    assert b.state == HALF_OPEN
    assert b.record(True, t + 91_000) == "closed"
    assert b.state == CLOSED
    restored = Breaker.from_dict(b.as_dict(), b.settings)
    assert restored.state == CLOSED and restored.opens == 2


async def test_primary_outage_then_recovery(store, clock):
    engine = Engine(fast_config(), store, clock=clock, scenario="primary-outage")
    await engine.start(schedule=False)
    try:
        runs = await run_weather(engine, clock, 60 * 7)
    finally:
        await engine.stop()
    seq = sequence(store)
    names = [a for a, _, _ in seq]
    # retry -> breaker open -> failover -> (failed probes) -> probe ok -> close -> failback
    assert ("retry", "metnet", "failed") in seq
    first = {
        n: names.index(n)
        for n in ("retry", "breaker_open", "failover", "breaker_close", "failback")
    }
    assert first["retry"] < first["failover"] < first["breaker_open"] < first["breaker_close"]
    assert first["breaker_close"] < first["failback"]  # back to metnet only once trusted
    assert ("failover", "airnet", "ok") in seq and ("failback", "metnet", "ok") in seq
    probes = [(s, o) for a, s, o in seq if a == "probe"]
    assert ("metnet", "failed") in probes and probes[-1] == ("metnet", "ok")
    # While metnet's breaker was open it was not asked at all.
    skipped = [r for r in runs if "skipped" in r.sources.get("metnet", {})]
    assert skipped
    # The flow kept producing records from the other networks throughout: no gap.
    assert all(r.status in ("ok", "partial") for r in runs)
    assert all(r.stages["resolve"].records_out > 0 for r in runs[1:] if r.payloads)
    assert engine.flows["weather"].breakers["metnet"].state == CLOSED


async def test_breaker_state_survives_a_restart(sqlite_store, clock):
    engine = Engine(fast_config(), sqlite_store, clock=clock, scenario="primary-outage")
    await engine.start(schedule=False)
    try:
        clock.advance(60)
        await run_weather(engine, clock, 90)
        assert engine.flows["weather"].breakers["metnet"].state == OPEN
    finally:
        await engine.stop()
    again = Engine(fast_config(), sqlite_store, clock=clock, scenario="primary-outage")
    await again.start(schedule=False)
    try:
        assert again.flows["weather"].breakers["metnet"].state == OPEN
        summary = await again.run_flow("weather")
        assert summary.sources["metnet"]["skipped"].startswith("breaker open")
    finally:
        await again.stop()


async def test_all_sources_down_serves_stale_and_raises_an_incident(store, clock):
    engine = Engine(fast_config(), store, clock=clock, scenario="all-down")
    await engine.start(schedule=False)
    feed = FeedServer(LocalControl(engine), host="127.0.0.1", port=0)
    await feed.start()
    url = feed.url + "/api/flows/weather/latest"
    try:
        await run_weather(engine, clock, 110)  # healthy: the outage starts at 2m
        _, h, body = await aget(url)
        assert json.loads(body)["stale"] is False
        await run_weather(engine, clock, 40)  # everything answers 503
        latest_before = {r["key"]: r["ts_ms"] for r in store.latest("weather")}
        await run_weather(engine, clock, 90)
        snap = engine.snapshot()["flows"]["weather"]
        assert snap["state"] == "failing" and snap["stale"] is True
        # The API says so too: same records, marked stale, so a new ETag.
        await asyncio.sleep(feed.limits.snapshot_ttl_s)  # the feed's shared snapshot ages out
        status, h2, body2 = await aget(url, {"If-None-Match": h["ETag"]})
        assert status == 200 and h2["ETag"] != h["ETag"]
        served = json.loads(body2)
        assert served["stale"] is True
        assert {r["key"]: r["ts_ms"] for r in served["records"]} == latest_before
        incidents = [
            i for i in store.issues(flow="weather", state="open") if i["kind"] == "incident"
        ]
        assert len(incidents) == 1 and incidents[0]["severity"] == "critical"
        # last-known-good values are still served
        assert {r["key"]: r["ts_ms"] for r in store.latest("weather")} == latest_before
        await run_weather(engine, clock, 240)  # the outage ends at 6m
        snap = engine.snapshot()["flows"]["weather"]
        assert snap["stale"] is False
    finally:
        await feed.stop()
        await engine.stop()
    names = [a for a, _, _ in sequence(store)]
    assert "incident" in names and "recovered" in names
    assert names.index("incident") < names.index("recovered")
    assert store.issues(flow="weather", state="open") == [] or all(
        i["kind"] != "incident" for i in store.issues(flow="weather", state="open")
    )


async def test_flapping_source_does_not_flap_the_breaker(store, clock):
    engine = Engine(fast_config(), store, clock=clock, scenario="flapping")
    await engine.start(schedule=False)
    try:
        await run_weather(engine, clock, 60 * 6)
    finally:
        await engine.stop()
    opens = [a for a in sequence(store) if a[0] == "breaker_open"]
    closes = [a for a in sequence(store) if a[0] == "breaker_close"]
    # metnet is up half the time in 20 s slices: 36 runs would mean up to 18 state flips
    # without hysteresis; with probes=2 and doubling cooldowns there are only a few.
    assert 1 <= len(opens) <= 5
    assert len(closes) <= len(opens)


async def test_operator_reset_breaker_and_force_failover(store, clock):
    engine = Engine(fast_config(), store, clock=clock, scenario="primary-outage")
    await engine.start(schedule=False)
    control = LocalControl(engine, actor="bob")
    try:
        clock.advance(60)
        await run_weather(engine, clock, 90)
        assert engine.flows["weather"].breakers["metnet"].state == OPEN
        res = await control.act("reset_breaker", flow="weather", source="metnet")
        assert res["ok"] and "was open" in res["message"]
        assert engine.flows["weather"].breakers["metnet"].state == CLOSED
        res = await control.act("force_failover", flow="weather", source="skyobs")
        assert res["ok"]
        summary = await engine.run_flow("weather")
        assert list(k for k, v in summary.sources.items() if "skipped" not in v) == ["skyobs"]
        res = await control.act("force_failover", flow="weather")
        assert "released from skyobs" in res["message"]
        bad = await control.act("reset_breaker", flow="weather", source="nope")
        assert bad["ok"] is False
    finally:
        await engine.stop()
    ops = [
        (a["action"], a["actor"], a["outcome"])
        for a in store.actions("weather")
        if a["actor"] == "bob"
    ]
    assert ("reset_breaker", "bob", "ok") in ops
    assert ("force_failover", "bob", "ok") in ops
    assert ("reset_breaker", "bob", "failed") in ops
    with pytest.raises(ControlError):
        await control.act("no_such_action", flow="weather")


async def test_quality_issues_resolve_themselves_when_quiet(store, clock):
    text = fast_config_text().replace(
        "    detect:\n      - {metric: temperature",
        "    issues: {auto_resolve: 2m}\n    detect:\n      - {metric: temperature",
        1,
    )
    engine = Engine(
        parse_config(text, str(BUNDLED_CONFIG)), store, clock=clock, scenario="malformed"
    )
    await engine.start(schedule=False)
    try:
        for _ in range(6):  # malformed payloads: quarantine issues open and recur
            await engine.run_flow("weather")
            clock.advance(20)
        q = [i for i in store.issues(flow="weather", state="open") if i["kind"] == "quarantine"]
        assert q
        # The same condition keeps recurring, so nothing is resolved while it does.
        assert all(i["state"] == "open" for i in q)
        issue_id = q[0]["id"]
        # Stop the faults: a healthy engine on the normal scenario, quiet for longer than 2m.
    finally:
        await engine.stop()
    healthy = Engine(parse_config(text, str(BUNDLED_CONFIG)), store, clock=clock)
    await healthy.start(schedule=False)
    try:
        clock.advance(60)
        await healthy.run_flow("weather")
        assert store.get_issue(issue_id)["state"] == "open"  # quiet for 1m only
        clock.advance(90)
        await healthy.run_flow("weather")
    finally:
        await healthy.stop()
    row = store.get_issue(issue_id)
    assert row["state"] == "resolved" and row["actor"] == "auto"
    assert any(
        a["action"] == "auto_resolve" and f"#{issue_id}" in a["reason"]
        for a in store.actions("weather")
    )
