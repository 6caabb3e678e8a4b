"""The feed protocol with real websocket clients on loopback against a real engine.

Subscribe, snapshot then deltas, per-channel seq, filters, resume and gaps,
heartbeats, acks, requests (actions and queries) and their errors.
"""

from __future__ import annotations

import asyncio

import pytest
from support.feed import Client, rows_for, start_rig
from websockets.exceptions import ConnectionClosed

from flowdeck.pipeline.serve.feed import FeedLimits


@pytest.fixture
async def rig(tmp_path):
    r = await start_rig(tmp_path)
    yield r
    await r.close()


async def test_snapshot_first_then_deltas_with_consecutive_seqs(rig):
    await rig.ingest("bench", rows_for(["KAAA", "KBBB"]))
    c = await Client.open(rig.ws_url)
    sub, snap = await c.subscribe("records:bench")
    assert sub["data"]["resumed"] is False and sub["data"]["epoch"] == rig.feed.epoch
    assert set(snap) == {"v", "type", "channel", "seq", "ts", "data"} and snap["v"] == 1
    # The snapshot reflects at least every delta up to its seq; deltas after it follow
    # with consecutive seqs, so snapshot + deltas is the whole state.
    state = {r["key"]: r for r in snap["data"]["records"]}
    await rig.ingest("bench", rows_for(["KCCC"]))
    await rig.ingest("bench", rows_for(["KDDD", "KEEE"]))
    seqs = []
    while "KEEE" not in state:
        d = await c.expect("delta", "records:bench")
        seqs.append(d["seq"])
        state.update({r["key"]: r for r in d["data"]["records"]})
    assert seqs == list(range(snap["seq"] + 1, snap["seq"] + 1 + len(seqs)))
    assert set(state) == {"KAAA", "KBBB", "KCCC", "KDDD", "KEEE"}
    assert {"key", "ts_ms", "data", "quality", "anomalous"} <= set(state["KEEE"])
    assert state["KEEE"]["data"]["temperature"] == 10.5
    await c.close()


async def test_flows_channel_and_flow_channel_follow_runs(rig):
    c = await Client.open(rig.ws_url)
    _, snap = await c.subscribe("flows")
    assert set(snap["data"]["flows"]) == {"bench", "other"}
    assert snap["data"]["flows"]["bench"]["runs"] == 0
    _, fsnap = await c.subscribe("flow:bench")
    assert fsnap["data"]["flow"] == "bench" and fsnap["data"]["summary"]["runs"] == 0
    await rig.ingest("bench", rows_for(["KAAA"]))
    delta = await c.expect(
        "delta",
        "flows",
        where=lambda m: m["data"]["flow"] == "bench" and m["data"]["summary"]["runs"] == 1,
    )
    assert delta["data"]["summary"]["totals"]["store"]["out"] == 1
    kinds = set()
    while not {"run_started", "run_finished", "fetch", "summary"} <= kinds:
        kinds.add((await c.expect("delta", "flow:bench"))["data"]["type"])
    await c.close()


async def test_filters_by_key_flow_and_severity(rig):
    c = await Client.open(rig.ws_url)
    _, snap = await c.subscribe("records:bench", filters={"key": ["KBBB"]})
    assert snap["data"]["records"] == []
    _, _ = await c.subscribe("events", filters={"flow": "other"})
    await rig.ingest("bench", rows_for(["KAAA", "KBBB", "KCCC"]))
    await rig.ingest("other", rows_for(["X1"]))
    d = await c.expect("delta", "records:bench")
    assert [r["key"] for r in d["data"]["records"]] == ["KBBB"] and d["data"]["count"] == 1
    ev = await c.expect("delta", "events")
    assert ev["data"]["flow"] == "other"  # nothing of bench came through the filter
    # Filters a channel does not understand are refused with a clear error, not ignored.
    await c.send(type="subscribe", channel="flows", filters={"severity": "error"})
    err = await c.expect("error")
    assert (
        err["data"]["code"] == "bad_filter"
        and "does not filter by severity" in err["data"]["message"]
    )
    await c.send(type="subscribe", channel="quality", filters={"severity": "loud"})
    assert "severity must be one of" in (await c.expect("error"))["data"]["message"]
    await c.send(type="subscribe", channel="records:nosuch")
    err = await c.expect("error")
    assert err["data"]["code"] == "unknown_channel" and "nosuch" in err["data"]["message"]
    await c.close()


async def test_quality_severity_filter(rig):
    c = await Client.open(rig.ws_url)
    await c.subscribe("quality", filters={"severity": "error"})
    await c.subscribe("events", filters={"severity": "warning"})
    # Out-of-range values are quarantined: a warning-level quarantine issue for few items.
    bad = rows_for(["KAAA"])
    bad[0]["temp"] = 999
    await rig.ingest("bench", bad)
    ev = await c.expect("delta", "events", where=lambda m: m["data"]["type"] == "issue")
    assert ev["data"]["data"]["severity"] in ("warning", "error", "critical")
    # The quality subscription asked for error and above: the warning did not reach it.
    await asyncio.sleep(0.3)
    assert not [m for m in c.seen if m["type"] == "delta" and m["channel"] == "quality"]
    await c.close()


async def test_resume_from_replays_what_was_missed(rig):
    c = await Client.open(rig.ws_url)
    _, snap = await c.subscribe("records:bench")
    await rig.ingest("bench", rows_for(["KAAA"]))
    last = (await c.expect("delta", "records:bench"))["seq"]
    await c.close()
    for k in ("KBBB", "KCCC", "KDDD"):  # while the viewer is away
        await rig.ingest("bench", rows_for([k]))
    c2 = await Client.open(rig.ws_url)
    await c2.send(type="subscribe", channel="records:bench", resume_from=last, epoch=rig.feed.epoch)
    sub = await c2.expect("subscribed", "records:bench")
    assert sub["data"]["resumed"] is True
    got = [await c2.expect("delta", "records:bench") for _ in range(3)]
    assert [m["seq"] for m in got] == [last + 1, last + 2, last + 3]
    assert [m["data"]["records"][0]["key"] for m in got] == ["KBBB", "KCCC", "KDDD"]
    assert not [m for m in c2.seen if m["type"] == "snapshot"]  # no snapshot needed
    # A viewer from another server instance (another epoch) starts over: gap, snapshot,
    # and the deltas after the snapshot's seq (if any) complete it.
    await c2.send(type="subscribe", channel="records:bench", resume_from=last, epoch="other")
    gap = await c2.expect("gap", "records:bench")
    assert gap["data"]["reason"] == "server restarted"
    snap = await c2.expect("snapshot", "records:bench")
    keys = {r["key"] for r in snap["data"]["records"]}
    for seq in range(snap["seq"] + 1, last + 4):
        d = await c2.expect("delta", "records:bench", where=lambda m, s=seq: m["seq"] == s)
        keys |= {r["key"] for r in d["data"]["records"]}
    assert keys == {"KAAA", "KBBB", "KCCC", "KDDD"}
    await c2.close()


async def test_gap_and_fresh_snapshot_beyond_the_replay_buffer(tmp_path):
    rig = await start_rig(tmp_path, limits=FeedLimits(replay_messages=2))
    try:
        c = await Client.open(rig.ws_url)
        await c.subscribe("records:bench")
        await rig.ingest("bench", rows_for(["KAAA"]))
        last = (await c.expect("delta", "records:bench"))["seq"]
        await c.close()
        for k in ("KBBB", "KCCC", "KDDD", "KEEE"):
            await rig.ingest("bench", rows_for([k]))
        c2 = await Client.open(rig.ws_url)
        await c2.send(type="subscribe", channel="records:bench", resume_from=last)
        sub = await c2.expect("subscribed", "records:bench")
        assert sub["data"]["resumed"] is False
        gap = await c2.expect("gap", "records:bench")
        assert gap["data"] == {
            "resume_from": last,
            "oldest": last + 3,
            "seq": last + 4,
            "reason": "replay buffer exceeded",
        }
        snap = await c2.expect("snapshot", "records:bench")
        assert snap["seq"] == last + 4
        assert {r["key"] for r in snap["data"]["records"]} >= {"KBBB", "KEEE"}
        await rig.ingest("bench", rows_for(["KFFF"]))
        assert (await c2.expect("delta", "records:bench"))["seq"] == last + 5
        await c2.close()
    finally:
        await rig.close()


async def test_unknown_types_and_bad_json_get_errors_not_disconnects(rig):
    c = await Client.open(rig.ws_url)
    await c.send(type="teleport")
    err = await c.expect("error")
    assert err["data"]["code"] == "unknown_type" and "teleport" in err["data"]["message"]
    assert err["data"]["id"] == 1
    await c.ws.send("{not json")
    assert (await c.expect("error"))["data"]["code"] == "bad_json"
    await c.ws.send(b'{"type": "ping"}')
    assert "text frames" in (await c.expect("error"))["data"]["message"]
    await c.ws.send("[1, 2]")
    assert (await c.expect("error"))["data"]["code"] == "bad_request"
    pid = await c.send(type="ping")
    assert (await c.expect("pong"))["data"]["id"] == pid  # still connected and answering
    await c.close()


async def test_oversize_message_closes_with_1009(tmp_path):
    rig = await start_rig(tmp_path, limits=FeedLimits(max_inbound_bytes=1024))
    try:
        c = await Client.open(rig.ws_url)
        await c.send(type="ping", pad="x" * 2000)
        with pytest.raises(ConnectionClosed):
            while True:
                await c.recv()
        assert c.ws.close_code == 1009
    finally:
        await rig.close()


async def test_actions_and_queries_over_the_feed(rig):
    await rig.ingest("bench", rows_for(["KAAA"]))
    c = await Client.open(rig.ws_url)
    await c.subscribe("recovery")
    rid = await c.send(type="action", name="pause", params={"flow": "bench"})
    res = await c.expect("result", where=lambda m: m["data"]["id"] == rid)
    assert res["data"]["ok"] and res["data"]["result"]["message"] == "paused bench"
    assert rig.engine.flows["bench"].paused
    ev = await c.expect("delta", "recovery")
    assert ev["data"]["data"]["action"] == "pause" and ev["data"]["data"]["actor"] == "tester"
    await c.send(type="action", name="resume", params={"flow": "bench"})
    await c.expect("result")
    assert not rig.engine.flows["bench"].paused
    rid = await c.send(type="action", name="explode", params={})
    err = await c.expect("error", where=lambda m: m["data"]["id"] == rid)
    assert err["data"]["code"] == "action_failed" and "unknown action" in err["data"]["message"]
    rid = await c.send(type="query", name="latest", params={"flow": "bench"})
    res = await c.expect("result", where=lambda m: m["data"]["id"] == rid)
    assert [r["key"] for r in res["data"]["result"]] == ["KAAA"]
    rid = await c.send(type="query", name="history", params={"flow": "bench"})
    err = await c.expect("error", where=lambda m: m["data"]["id"] == rid)
    assert err["data"]["code"] == "bad_params" and "key" in err["data"]["message"]
    rid = await c.send(type="query", name="snapshot")
    snap = (await c.expect("result", where=lambda m: m["data"]["id"] == rid))["data"]["result"]
    assert set(snap["flows"]) == {"bench", "other"} and "issues" in snap
    await c.close()


async def test_heartbeats_carry_every_channels_seq(tmp_path):
    rig = await start_rig(tmp_path, limits=FeedLimits(heartbeat_s=0.2))
    try:
        c = await Client.open(rig.ws_url)
        await rig.ingest("bench", rows_for(["KAAA"]))
        hb = await c.expect(
            "heartbeat", timeout=3, where=lambda m: m["data"]["channels"]["records:bench"] >= 1
        )
        assert set(hb["data"]["channels"]) >= {"flows", "events", "records:bench", "flow:other"}
        await c.close()
    finally:
        await rig.close()


async def test_acks_pace_a_viewer_that_asks_for_them(tmp_path):
    rig = await start_rig(tmp_path, limits=FeedLimits(ack_window=2))
    try:
        c = await Client.open(rig.ws_url)
        _, snap = await c.subscribe("records:bench", ack=True)
        for k in ("KAAA", "KBBB", "KCCC", "KDDD"):
            await rig.ingest("bench", rows_for([k]))
        first = [await c.expect("delta", "records:bench") for _ in range(2)]
        # Two un-acked deltas: the rest waits (conflated per key) until the viewer acks.
        with pytest.raises(asyncio.TimeoutError):
            await c.expect("delta", "records:bench", timeout=0.5)
        await c.send(type="ack", channel="records:bench", seq=first[-1]["seq"])
        rest = await c.expect("delta", "records:bench")
        keys = {r["key"] for r in rest["data"]["records"]}
        assert rest["seq"] > first[-1]["seq"] and keys <= {"KCCC", "KDDD"}
        await c.send(type="ack", channel="flows", seq=1)
        assert "not subscribed" in (await c.expect("error"))["data"]["message"]
        await c.close()
    finally:
        await rig.close()


async def test_events_channel_snapshot_holds_recent_history(rig):
    await rig.ingest("bench", rows_for(["KAAA"]))
    c = await Client.open(rig.ws_url)
    _, snap = await c.subscribe("events")
    types = [e["type"] for e in snap["data"]["events"]]
    assert "run_finished" in types and "records" in types
    records = [e for e in snap["data"]["events"] if e["type"] == "records"][0]
    assert records["data"] == {"count": 1, "keys": 1}  # the log carries counts, not rows
    await c.send(type="unsubscribe", channel="events")
    assert (await c.expect("unsubscribed"))["channel"] == "events"
    await rig.ingest("bench", rows_for(["KBBB"]))
    await asyncio.sleep(0.3)
    assert not [m for m in c.seen if m["type"] == "delta"]
    await c.close()
