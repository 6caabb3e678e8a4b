"""Defaults that must not mislabel good data, through the real engine into SQLite:
newest-first payloads are not out of order, historical flows are not stale, a run that
quarantines everything fails, CSV strings are coerced before `allowed`, store-reading
commands take their flows from the store, and `check` parses every field path."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import yaml

from flowdeck.console.cli import main
from flowdeck.pipeline.config import parse_config
from flowdeck.pipeline.core.clock import ManualClock
from flowdeck.pipeline.engine.engine import Engine
from flowdeck.storage.store import Store

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC).timestamp()


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_config(tmp_path: Path, flow: dict, name: str = "obs") -> Path:
    path = tmp_path / "flows.yaml"
    path.write_text(yaml.safe_dump({"flows": {name: flow}}, sort_keys=False))
    return path


def obs_flow(payload: Path, **extra) -> dict:
    flow = {
        "key": "station",
        "sources": [{"name": "feed", "kind": "file", "path": str(payload),
                     "records": "observations",
                     "fields": {"station": "station", "ts": "time", "temp": "temp"}}],
        "fields": {"station": {"type": "str"}, "temp": {"type": "float", "range": [-90, 60]}},
    }
    flow.update(extra)
    return flow


async def run(config_path: Path, url: str, clock: ManualClock, times: int = 1):
    config = parse_config(config_path.read_text(), str(config_path))
    store = Store(url)
    engine = Engine(config, store, clock=clock)
    await engine.start(schedule=False)
    try:
        out = []
        for _ in range(times):
            out.append(await engine.run_flow(next(iter(config.flows)), "once"))
        return out, engine.snapshot()
    finally:
        await engine.stop()
        store.close()


def records(url: str, flow: str = "obs") -> list[dict]:
    store = Store(url)
    try:
        return list(store.records_since(flow))
    finally:
        store.close()


async def test_newest_first_payload_has_no_out_of_order_and_no_penalty(tmp_path, sqlite_url):
    payload = tmp_path / "obs.json"
    rows = [{"station": "KCNK", "time": iso(NOW - 60 - i * 3600), "temp": 10.0 + i / 10}
            for i in range(48)]  # newest first
    payload.write_text(json.dumps({"observations": rows}))
    cfg = write_config(tmp_path, obs_flow(payload, history=True))
    (summary,), _ = await run(cfg, sqlite_url, ManualClock(NOW))
    stored = records(sqlite_url)
    assert summary.status == "ok" and len(stored) == 48
    assert [r for r in stored if r["flags"]] == []
    assert {r["quality"] for r in stored} == {1.0}
    # A later payload bringing a point older than what is stored IS out of order.
    payload.write_text(json.dumps({"observations": [
        {"station": "KCNK", "time": iso(NOW - 60 - 100 * 3600), "temp": 3.0}]}))
    await run(cfg, sqlite_url, ManualClock(NOW + 60))
    late = [r for r in records(sqlite_url) if r["data"]["temp"] == 3.0]
    assert [r["flags"] for r in late] == [["out_of_order"]]


async def test_history_flow_is_never_stale(tmp_path, sqlite_url):
    ten_years = 10.1 * 365.25 * 86400
    payload = tmp_path / "obs.json"
    payload.write_text(json.dumps({"observations": [
        {"station": "KCNK", "time": iso(NOW - ten_years + i * 3600), "temp": 5.0}
        for i in range(5)]}))
    cfg = write_config(tmp_path, obs_flow(payload, history=True))
    summaries, snap = await run(cfg, sqlite_url, ManualClock(NOW), times=2)
    assert [s.status for s in summaries] == ["ok", "ok"]
    assert snap["flows"]["obs"]["state"] == "healthy"
    assert not snap["flows"]["obs"]["sources"]["feed"]["stale"]
    assert {r["quality"] for r in records(sqlite_url)} == {1.0}
    # The same flow without history: stale, and the message reads as a duration.
    cfg = write_config(tmp_path, obs_flow(payload))
    store_url = sqlite_url.replace(".db", "-2.db")
    _, snap = await run(cfg, store_url, ManualClock(NOW), times=2)
    assert snap["flows"]["obs"]["state"] == "degraded"
    store = Store(store_url)
    try:
        (issue,) = [i for i in store.issues(flow="obs") if i["kind"] == "stale_source"]
    finally:
        store.close()
    assert "newest record is 10.1 years old" in issue["title"]


async def test_run_that_quarantines_everything_fails(tmp_path, sqlite_url, capsys):
    payload = tmp_path / "obs.json"
    payload.write_text(json.dumps({"observations": [
        {"station": "KCNK", "time": iso(NOW - 60 * i), "temp": 500.0} for i in range(3)]}))
    cfg = write_config(tmp_path, obs_flow(payload))
    (summary,), _ = await run(cfg, sqlite_url, ManualClock(NOW))
    assert summary.status == "failed" and summary.quarantined == 3
    assert "every record was quarantined" in summary.error
    store = Store(sqlite_url)
    try:
        (issue,) = [i for i in store.issues(flow="obs") if i["kind"] == "quarantine"]
    finally:
        store.close()
    assert issue["title"].startswith("every item quarantined (3), nothing stored, from feed")


def test_daemon_once_exits_non_zero_when_everything_is_quarantined(tmp_path, sqlite_url,
                                                                   capsys):
    payload = tmp_path / "obs.json"
    payload.write_text(json.dumps({"observations": [
        {"station": "KCNK", "time": "2026-01-01T00:00:00Z", "temp": 500.0}]}))
    cfg = write_config(tmp_path, obs_flow(payload, history=True))
    assert main(["daemon", "--once", "--json", "--config", str(cfg), "--db", sqlite_url]) == 1
    out = json.loads(capsys.readouterr().out)["flows"]["obs"]
    assert out["status"] == "failed" and out["quarantined"] == 1
    assert out["error"] == "every record was quarantined (1); nothing stored"
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"observations": [
        {"station": "KCNK", "time": "2026-01-01T00:00:00Z", "temp": 5.0}]}))
    cfg = write_config(tmp_path, obs_flow(good, history=True))
    assert main(["daemon", "--once", "--config", str(cfg), "--db", sqlite_url]) == 0


async def test_csv_strings_are_coerced_before_allowed(tmp_path, sqlite_url):
    payload = tmp_path / "gauge.csv"
    payload.write_text(f"id,time,flag,level\n900,{iso(NOW - 60)},0,1.25\n"
                       f"901,{iso(NOW - 60)}, 1 , 2\n")
    flow = {
        "key": "id",
        "sources": [{"name": "feed", "kind": "file", "path": str(payload), "format": "csv",
                     "fields": {"id": "id", "ts": "time", "flag": "flag", "level": "level"}}],
        "fields": {"id": {"type": "str"}, "flag": {"type": "int", "allowed": [0, 1]},
                   "level": {"type": "float"}},
    }
    (summary,), _ = await run(write_config(tmp_path, flow), sqlite_url, ManualClock(NOW))
    assert summary.status == "ok" and summary.quarantined == 0
    got = {r["key"]: r["data"] for r in records(sqlite_url)}
    assert got == {"900": {"id": "900", "flag": 0, "level": 1.25},
                   "901": {"id": "901", "flag": 1, "level": 2.0}}


async def test_store_reading_commands_take_their_flows_from_the_store(tmp_path, sqlite_url,
                                                                      capsys, monkeypatch):
    monkeypatch.delenv("FLOWDECK_CONFIG", raising=False)
    payload = tmp_path / "obs.json"
    payload.write_text(json.dumps({"observations": [
        {"station": "KCNK", "time": iso(NOW - 3600 * 24 * 400), "temp": 5.0}]}))
    cfg = write_config(tmp_path, obs_flow(payload, history=True), name="usgs")
    await run(cfg, sqlite_url, ManualClock(NOW))
    capsys.readouterr()
    assert main(["export", "usgs", "--db", sqlite_url, "--format", "jsonl"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["key"] == "KCNK"
    code = main(["status", "--db", sqlite_url, "--json"])
    out = json.loads(capsys.readouterr().out)
    assert set(out["flows"]) == {"usgs"}
    assert out["flows"]["usgs"]["state"] == "healthy" and code == 0
    assert main(["issues", "--db", sqlite_url]) == 0
    # A database without flows says so instead of reading the bundled demo.
    empty = sqlite_url.replace(".db", "-empty.db")
    Store(empty).close()
    assert main(["status", "--db", empty]) == 2
    assert "holds no flows" in capsys.readouterr().err


def test_check_parses_every_field_path_and_warns(tmp_path, capsys):
    flow = obs_flow(tmp_path / "x.json")
    flow["sources"][0]["fields"]["ts"] = "obs..time"  # what the daemon's compiler refuses
    cfg = write_config(tmp_path, flow)
    assert main(["check", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"{cfg}:" in err and "flows.obs.sources[0].fields.ts: invalid field path" in err
    flow = obs_flow(tmp_path / "x.json")
    flow["sources"][0]["records"] = "data..rows"
    assert main(["check", str(write_config(tmp_path, flow))]) == 2
    assert "sources[0].records: invalid records path 'data..rows'" in capsys.readouterr().err
    flow["sources"][0].update(records="rows", columns="meta.")
    assert main(["check", str(write_config(tmp_path, flow))]) == 2
    assert "sources[0].columns: invalid columns path 'meta.'" in capsys.readouterr().err
    flow = obs_flow(tmp_path / "x.json", detect=[{"metric": "temp"}])
    flow["key"] = "event_id"
    flow["fields"]["event_id"] = {"type": "str"}
    flow["sources"][0]["fields"]["event_id"] = "id"
    cfg = write_config(tmp_path, flow)
    assert main(["check", str(cfg)]) == 0
    out = capsys.readouterr()
    assert "ok" in out.out
    assert "timestamp: warning: ISO timestamps without an offset are taken as UTC" in out.err
    assert "detect: warning: detection keeps its state per key" in out.err


async def test_a_field_path_matching_nothing_is_said_on_the_first_run(tmp_path, sqlite_url):
    """`check` cannot know a payload's names; the first payload a source brings can: a path
    that matches nothing there is one warning issue naming the names that are there."""
    payload = tmp_path / "obs.json"
    rows = [{"station": "KCNK", "time": iso(NOW - 60 * (i + 1)), " Temp": 10.0 + i}
            for i in range(3)]
    payload.write_text(json.dumps({"observations": rows}))
    cfg = write_config(tmp_path, obs_flow(payload, history=True))
    (summary,), _ = await run(cfg, sqlite_url, ManualClock(NOW))
    store = Store(sqlite_url)
    try:
        (issue,) = [i for i in store.issues(flow="obs") if i["kind"] == "config"]
    finally:
        store.close()
    assert issue["source"] == "feed" and issue["severity"] == "warning"
    (warning,) = issue["detail"]["warnings"]
    assert "fields.temp: path 'temp' matches nothing" in warning and "' Temp'" in warning
    # The records still load (temp missing): the warning says why, nothing is lost.
    assert summary.status == "ok" and len(records(sqlite_url)) == 3
    # A matching config on the next start raises nothing new.
    flow = obs_flow(payload, history=True)
    flow["sources"][0]["fields"]["temp"] = " Temp"
    rows = [{"station": "KCNK", "time": iso(NOW - 5), " Temp": 14.0}]
    payload.write_text(json.dumps({"observations": rows}))
    await run(write_config(tmp_path, flow), sqlite_url, ManualClock(NOW))
    store = Store(sqlite_url)
    try:
        assert [i["count"] for i in store.issues(flow="obs") if i["kind"] == "config"] == [1]
    finally:
        store.close()


async def test_detection_on_one_record_per_key_is_said_not_silent(tmp_path, sqlite_url):
    payload = tmp_path / "events.json"
    rows = [{"station": f"ev{i}", "time": iso(NOW - 60 * (i + 1)), "temp": 10.0 + i % 3}
            for i in range(25)]  # an event feed: every record its own key
    payload.write_text(json.dumps({"observations": rows}))
    cfg = write_config(tmp_path, obs_flow(payload, history=True, detect=[{"metric": "temp"}]))
    await run(cfg, sqlite_url, ManualClock(NOW))
    store = Store(sqlite_url)
    try:
        titles = [i["title"] for i in store.issues(flow="obs") if i["kind"] == "config"]
    finally:
        store.close()
    assert titles == ["obs: every record is its own series; detection cannot learn"]
    # With a series field named, nothing is said.
    url2 = f"sqlite:///{tmp_path / 'b.db'}"
    flow = obs_flow(payload, history=True, detect=[{"metric": "temp"}], series="station")
    await run(write_config(tmp_path, flow), url2, ManualClock(NOW))
    store = Store(url2)
    try:
        assert [i for i in store.issues(flow="obs") if i["kind"] == "config"] == []
    finally:
        store.close()
