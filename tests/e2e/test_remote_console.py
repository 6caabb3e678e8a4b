"""The console attached to a feed (RemoteControl), and `flowdeck watch`, against real servers.

The console runs under Textual's pilot against a feed server on a real engine in
this process; `flowdeck watch` and the one-line errors run against a real
`flowdeck daemon` subprocess.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time

import pytest
from support.console import screen_text
from support.feed import FLOWDECK, Daemon, free_port, rows_for, start_rig

from flowdeck.console.app import FlowdeckApp
from flowdeck.console.client.remote import RemoteControl, RemoteError, feed_url
from flowdeck.pipeline.serve.control import ControlError


async def wait_until(pilot, cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met; screen:\n" + screen_text(pilot.app))
        await pilot.pause(0.05)


@pytest.fixture
async def rig(tmp_path):
    r = await start_rig(tmp_path)
    yield r
    await r.close()


async def test_console_attached_over_the_feed_shows_the_flows(rig):
    await rig.ingest("bench", rows_for(["KAAA", "KBBB"]))
    control = RemoteControl(rig.ws_url)
    app = FlowdeckApp(control, refresh=0.25)
    try:
        async with app.run_test(size=(160, 48)) as pilot:
            await wait_until(
                pilot, lambda: "bench" in screen_text(app) and "other" in screen_text(app)
            )
            text = screen_text(app)
            assert rig.ws_url in text.replace("…", "") or "ws://127.0.0.1" in text
            assert app.state.connection == rig.ws_url and app.state.connected
            # Snapshots are shared among viewers for half a second: the next one has the run.
            await wait_until(pilot, lambda: app.state.flows["bench"]["runs"] == 1)
            # Events reach the console live through the feed's events channel.
            await rig.ingest("bench", rows_for(["KCCC"]))
            await wait_until(
                pilot,
                lambda: any(
                    e["type"] == "run_finished" and e["flow"] == "bench" and "2" in e["text"]
                    for e in app.state.events
                ),
            )
            # An operator action from the console reaches the engine and is recorded.
            app.operator_action("pause", flow="bench")
            await wait_until(pilot, lambda: rig.engine.flows["bench"].paused)
            await wait_until(pilot, lambda: app.state.flows["bench"]["state"] == "paused")
            await pilot.press("8")  # the events screen shows the action, from the feed
            await wait_until(pilot, lambda: "pause by tester" in screen_text(app))
            # The Caches screen: its part of the snapshot and its events come over the feed.
            await pilot.press("4")
            await wait_until(pilot, lambda: "L1 memory" in screen_text(app))
            point = await rig.engine.caches.sample()
            rig.engine.emit("cache_stats", None, layers=rig.engine.caches.layer_stats(),
                            point=point)
            await wait_until(pilot, lambda: point in app.state.caches()["history"])
            app.operator_action("purge_cache", flow="bench", key=None, layer=None)
            await wait_until(pilot, lambda: any(
                r["action"] == "purge_cache" for r in app.screen.query_one(
                    "#cache-actions").shown))
    finally:
        await control.close()


async def test_remote_control_speaks_the_control_interface(rig):
    await rig.ingest("bench", rows_for(["KAAA"], n_per_key=3))
    control = RemoteControl(rig.ws_url)
    try:
        sub = control.subscribe(types={"run_finished"})
        snap = await control.snapshot()
        assert set(snap["flows"]) == {"bench", "other"} and snap["connection"] == rig.ws_url
        ev = await asyncio.wait_for(sub.get(), 5)  # recent history first
        assert ev["type"] == "run_finished" and ev["flow"] == "bench"
        latest = await control.query("latest", flow="bench")
        assert [r["key"] for r in latest] == ["KAAA"]
        points = await control.query("history", flow="bench", key="KAAA", metric="temperature")
        assert len(points) == 3
        result = await control.act("run_now", flow="other")
        assert result["ok"] and result["message"].startswith("ran other")
        with pytest.raises(ControlError, match="unknown action"):
            await control.act("explode")
        with pytest.raises(ControlError, match="unknown query"):
            await control.query("nothing")
        # After a lost connection the next call reconnects, and events resume where they
        # stopped: what happened meanwhile still arrives, once.
        await control._ws.close()
        await rig.ingest("bench", rows_for(["KBBB"]))
        assert set((await control.snapshot())["flows"]) == {"bench", "other"}
        seen = []
        while not any(
            e.get("flow") == "bench"
            and e["data"].get("stages", {}).get("store", {}).get("out") == 1
            and e["data"]["trigger"] == "manual"
            and e["seq"] > ev["seq"]
            for e in seen
        ):
            seen.append(await asyncio.wait_for(sub.get(), 5))
        assert len({e["seq"] for e in seen}) == len(seen)
    finally:
        await control.close()


async def test_snapshot_carries_the_latest_values_asked_for(rig):
    """The latest values are most of a snapshot: a viewer names the flows it wants."""
    await rig.ingest("bench", rows_for(["KAAA", "KBBB"]))
    await rig.ingest("other", rows_for(["KCCC"]))
    control = RemoteControl(rig.ws_url)
    try:
        deadline = time.monotonic() + 5  # the feed shares a snapshot for half a second
        while True:
            full = await control.snapshot()
            if {f: len(r) for f, r in full["latest"].items()} == {"bench": 2, "other": 1}:
                break
            assert time.monotonic() < deadline, full["latest"]
            await asyncio.sleep(0.1)
        none = await control.snapshot(latest=[])
        assert none["latest"] == {}
        # ... while the summary still says how many keys and how fresh, for every flow
        assert {f: s["keys"] for f, s in none["latest_summary"].items()} == {
            "bench": 2, "other": 1}
        newest = max(r["ts_ms"] for r in full["latest"]["bench"])
        assert none["latest_summary"]["bench"]["newest_ms"] == newest
        one = await control.snapshot(latest=["other"])
        assert [r["key"] for r in one["latest"]["other"]] == ["KCCC"] and "bench" not in one[
            "latest"]
        with pytest.raises(ControlError, match="'latest' must be a list of flow names"):
            await control._request("query", "snapshot", {"latest": "bench"})
    finally:
        await control.close()


async def test_the_console_asks_for_latest_values_only_on_the_data_screen(rig):
    await rig.ingest("bench", rows_for(["KAAA", "KBBB"]))
    control = RemoteControl(rig.ws_url)
    asked: list = []
    snapshot = control.snapshot

    async def recording(latest=None):
        asked.append(latest)
        return await snapshot(latest=latest)

    control.snapshot = recording
    app = FlowdeckApp(control, refresh=0.25)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_until(pilot, lambda: app.state.latest_info("bench")["keys"] == 2)
            assert asked and all(a == [] for a in asked)  # Overview shows no latest values
            assert "KAAA" not in str(app.state.snapshot["latest"])
            await pilot.press("6")
            await wait_until(pilot, lambda: "KBBB" in screen_text(app))
            assert asked[-1] == [app.screen.flow] == ["bench"]
    finally:
        await control.close()


async def test_remote_control_errors_are_one_line():
    with pytest.raises(RemoteError, match="cannot connect to ws://127.0.0.1:"):
        await RemoteControl(f"ws://127.0.0.1:{free_port()}", timeout=2).snapshot()
    with pytest.raises(RemoteError, match="cannot read feed address"):
        feed_url("ftp://x")
    assert feed_url("127.0.0.1:8765") == "ws://127.0.0.1:8765/feed"
    assert feed_url("http://h:1/") == "ws://h:1/feed"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("daemon")
    d = Daemon(["--db", f"sqlite:///{tmp / 'd.db'}", "--token", "tok-123"])
    d.wait_ready()
    yield d
    err = d.stop()
    assert "Traceback" not in err


def run_cli(*args, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(FLOWDECK + list(args), capture_output=True, text=True, timeout=timeout)


def test_watch_prints_the_feed_as_json_lines(daemon):
    proc = subprocess.Popen(
        FLOWDECK
        + ["watch", daemon.ws_url, "--channel", "flows", "--channel", "records:weather"]
        + ["--token", "tok-123"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            line = proc.stdout.readline()
            assert line, "watch ended early: " + proc.stderr.read()
            lines.append(json.loads(line))
            if {"flows", "records:weather"} <= {
                m["channel"] for m in lines if m["type"] == "snapshot"
            }:
                break
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0 and "Traceback" not in err  # SIGTERM ends it cleanly
    assert lines[0]["type"] == "hello"
    snaps = {m["channel"]: m for m in lines if m["type"] == "snapshot"}
    assert set(snaps["flows"]["data"]["flows"]) == {"weather", "fx"}
    assert all(set(m) == {"v", "type", "channel", "seq", "ts", "data"} for m in lines)
    res = run_cli(
        "watch", daemon.ws_url, "--channel", "flows", "--token", "tok-123", "--count", "1"
    )
    assert res.returncode == 0 and json.loads(res.stdout.splitlines()[-1])["type"] == "snapshot"


def test_watch_and_console_errors_are_one_line(daemon):
    for args, code, words in (
        (
            ["watch", daemon.ws_url, "--channel", "nope", "--token", "tok-123"],
            2,
            "cannot watch 'nope': no channel 'nope'",
        ),
        (["watch", daemon.ws_url, "--count", "1"], 1, "refused the token"),
        (["watch", f"ws://127.0.0.1:{free_port()}"], 1, "cannot connect"),
        (["console", "--connect", f"ws://127.0.0.1:{free_port()}"], 1, "cannot connect"),
        (["console", "--connect", daemon.ws_url, "--token", "bad"], 1, "refused the token"),
    ):
        res = run_cli(*args)
        assert res.returncode == code, (args, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1 and words in res.stderr, res.stderr
        assert "Traceback" not in res.stderr
