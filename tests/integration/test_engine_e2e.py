"""End to end: the bundled flows against the simulator over loopback HTTP, into SQLite and PostgreSQL."""

from __future__ import annotations

import io
import json

import pytest
from sqlalchemy import func, select

from flowdeck.pipeline.engine.engine import Engine
from flowdeck.pipeline.model import STAGES
from flowdeck.pipeline.serve.queries import export_text, lineage
from flowdeck.storage import schema as s


async def start_engine(config, store, clock, scenario=None) -> Engine:
    engine = Engine(config, store, clock=clock, scenario=scenario, seed=7)
    await engine.start(schedule=False)
    return engine


def n_rows(store, table, **where) -> int:
    return store.count(table, **where)


async def test_both_flows_through_every_stage(demo_config, store, clock):
    engine = await start_engine(demo_config, store, clock)
    try:
        summaries = {s.flow: s for s in await engine.run_all_once()}
    finally:
        await engine.stop()
    assert set(summaries) == {"weather", "fx"}
    for flow, summary in summaries.items():
        assert summary.status == "ok", summary.error
        for stage in STAGES:
            assert summary.stages[stage].records_out > 0, (flow, stage)
        assert summary.payloads == 3
    weather = summaries["weather"]
    # 3 networks x 8 stations x 5 minutes of observations, merged into 12 stations x 5 minutes.
    assert weather.stages["collect"].records_out == 3 * 8 * 5
    assert weather.stages["resolve"].records_out == 12 * 5
    assert n_rows(store, "records", flow="weather") == 60
    assert n_rows(store, "latest", flow="weather") == 12
    # skyobs's KDEN sensor reads 3 degC warm: the resolver raises a conflict naming the values.
    conflicts = [i for i in store.issues(flow="weather") if i["kind"] == "conflict"]
    assert conflicts and all(i["key"] == "KDEN" for i in conflicts)
    assert "skyobs" in conflicts[0]["detail"]["values"]
    assert weather.conflicts > 0


async def test_units_enrichment_and_resolution(demo_config, store, clock):
    engine = await start_engine(demo_config, store, clock)
    try:
        await engine.run_flow("weather")
        await engine.run_flow("fx")
    finally:
        await engine.stop()
    rows = {r["key"]: r for r in store.latest("weather")}
    sfo = rows["KSFO"]
    assert sfo["data"]["name"] == "San Francisco International Airport"
    assert isinstance(sfo["data"]["lat"], float)
    recs = list(store.records_since("weather", key="KSFO"))
    for r in recs:
        contrib = r["contributions"]
        temps = {src: c["v"]["temperature"] for src, c in contrib.items()}
        # metnet reports degF, the others degC: after the transform they agree within noise.
        assert max(temps.values()) - min(temps.values()) < 1.5, temps
        assert r["data"]["temperature_f"] == pytest.approx(r["data"]["temperature"] * 1.8 + 32, abs=0.06)
        assert 900 < r["data"]["pressure"] < 1100  # inHg converted to hPa
        assert r["ts_ms"] % 60_000 == 0  # resolved into 1-minute windows
    # ecbx quotes inverted pairs: after inversion all three providers agree on EURUSD.
    eur = list(store.records_since("fx", key="EURUSD"))
    assert eur
    for r in eur:
        rates = [c["v"]["rate"] for c in r["contributions"].values()]
        assert max(rates) / min(rates) < 1.001, r["contributions"]
    assert {"fxquote", "ecbx"} <= set(eur[-1]["sources"])


async def test_reruns_and_replays_never_duplicate(demo_config, store, clock):
    engine = await start_engine(demo_config, store, clock)
    try:
        first = await engine.run_flow("weather")
        again = await engine.run_flow("weather")  # same simulated minute: nothing new
        assert again.stages["store"].records_out == 0
        clock.advance(60)
        later = await engine.run_flow("weather")
        # One new minute of 12 stations; the four older minutes were duplicates and dropped.
        assert later.stages["resolve"].records_out == 12
        assert later.stages["collect"].dropped == 3 * 8 * 4
        assert n_rows(store, "records", flow="weather") == 72
        replay = await engine.replay("weather", since_ms=0)
        assert replay.stages["store"].records_out >= first.stages["store"].records_out
    finally:
        await engine.stop()
    assert n_rows(store, "records", flow="weather") == 72
    with store.engine.connect() as conn:
        dupes = conn.execute(select(s.records.c.key, s.records.c.ts_ms, func.count())
                             .group_by(s.records.c.key, s.records.c.ts_ms)
                             .having(func.count() > 1)).all()
        rollup = conn.execute(select(func.sum(s.series_1m.c.n)).join(
            s.series_keys, s.series_keys.c.id == s.series_1m.c.sid).where(
            s.series_keys.c.flow == "weather",
            s.series_keys.c.metric == "temperature")).scalar_one()
    assert dupes == []
    assert rollup == 72  # roll-ups recomputed, not double counted by the replay


async def test_malformed_payloads_are_quarantined_and_nothing_is_lost(demo_config, store, clock):
    engine = await start_engine(demo_config, store, clock, scenario="malformed")
    fetched = 0
    try:
        for _ in range(20):  # rate 0.5, cycling through seven variants
            summary = await engine.run_flow("weather")
            assert summary.status in ("ok", "partial")
            fetched += sum(i["payloads"] for i in summary.sources.values())
            clock.advance(60)
    finally:
        await engine.stop()
    q = store.quarantined("weather")
    reasons = {r["reason"] for r in q}
    assert {"malformed", "not_json", "encoding", "too_deep"} <= reasons, reasons
    assert "invalid" in reasons  # wrong types / NaN caught by validation
    for r in q:
        assert r["message"] and store.get_raw(r["raw_id"]) is not None
    # Every payload fetched is in the raw store, processed.
    assert n_rows(store, "raw_payloads", flow="weather") == fetched
    assert n_rows(store, "raw_status") >= fetched
    assert n_rows(store, "records", flow="weather") > 0
    issues = [i for i in store.issues(flow="weather") if i["kind"] == "quarantine"]
    assert issues and issues[0]["raw_ids"]


async def test_replay_quarantine_is_idempotent(demo_config, store, clock):
    engine = await start_engine(demo_config, store, clock, scenario="malformed")
    try:
        for _ in range(4):
            await engine.run_flow("weather")
            clock.advance(60)
        before_r = n_rows(store, "records", flow="weather")
        r1 = await engine.replay("weather", quarantine=True)
        # A replay has no duplicate memory, so it may find bad copies of records that the
        # live run had dropped as duplicates; a second replay must change nothing more.
        after_q = sorted((r["raw_id"], r["item"], r["reason"]) for r in store.quarantined("weather"))
        r2 = await engine.replay("weather", quarantine=True)
    finally:
        await engine.stop()
    assert r1.status == "ok" and r2.status == "ok"
    assert r1.payloads == r2.payloads > 0
    assert sorted((r["raw_id"], r["item"], r["reason"])
                  for r in store.quarantined("weather")) == after_q
    assert n_rows(store, "records", flow="weather") == before_r


async def test_lineage_and_export(demo_config, store, clock):
    engine = await start_engine(demo_config, store, clock)
    try:
        await engine.run_flow("weather")
    finally:
        await engine.stop()
    rec = next(r for r in store.records_since("weather", key="KSFO"))
    info = lineage(store, demo_config, rec["id"])
    assert {r["source"] for r in info["raw"]} == set(rec["sources"])
    metnet_transform = next(st for st in info["stages"]
                            if st["stage"] == "transform" and st["source"] == "metnet")
    before, after = metnet_transform["changed"]["temperature"]
    assert after == pytest.approx((before - 32) / 1.8)
    enrich = next(st for st in info["stages"] if st["stage"] == "enrich")
    assert enrich["changed"]["name"][1] == "San Francisco International Airport"
    assert info["version"]["stages"]["collect"] == "collect/1"

    out = io.StringIO()
    n = export_text(store, "weather", "jsonl", None, out)
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert n == len(lines) == 60
    assert {"quality", "anomaly_score", "anomalous", "temperature", "station"} <= set(lines[0])
    out = io.StringIO()
    export_text(store, "weather", "csv", rec["ts_ms"] + 1, out)
    header = out.getvalue().splitlines()[0].split(",")
    assert header[:4] == ["id", "flow", "key", "ts"] and "quality" in header
