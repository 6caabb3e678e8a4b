"""Operator actions from the HTTP API and the CLI against a running engine and feed.

Real HTTP and websocket connections on loopback; each action lands in the store as a
recovery action naming its actor, and doing it twice changes nothing the second time.
"""

from __future__ import annotations

import asyncio
import json
from urllib.parse import quote

import pytest
from support.feed import aget, rows_for, start_rig

from flowdeck.console.cli import main


@pytest.fixture
async def rig(tmp_path):
    r = await start_rig(tmp_path)
    yield r
    await r.close()


async def post(url: str, headers: dict | None = None) -> tuple[int, dict, dict]:
    status, h, body = await aget(url, headers, "POST")
    return status, h, json.loads(body) if body else {}


def operator_rows(store, flow="bench"):
    return [(a["action"], a["actor"], a["outcome"]) for a in reversed(store.actions(flow))]


async def test_http_actions_are_recorded_with_their_actor_and_idempotent(rig):
    base = rig.http_url + "/api/actions"
    status, h, body = await post(base + "/pause?flow=bench", {"X-Flowdeck-Actor": "alice"})
    assert status == 200 and body["ok"] and body["result"]["message"] == "paused bench"
    assert h["Cache-Control"] == "no-store"
    assert rig.engine.flows["bench"].paused
    status, _, body = await post(base + "/pause?flow=bench", {"X-Flowdeck-Actor": "alice"})
    assert status == 200 and body["result"]["message"] == "bench was already paused"
    params = quote(json.dumps({"flow": "bench"}))
    status, _, body = await post(f"{base}/resume?params={params}&actor=bob")
    assert status == 200 and body["result"]["message"] == "resumed bench"
    assert not rig.engine.flows["bench"].paused
    assert operator_rows(rig.store) == [("pause", "operator:alice", "ok"),
                                        ("pause", "operator:alice", "ok"),
                                        ("resume", "operator:bob", "ok")]


async def test_http_actions_refuse_what_they_should(rig):
    base = rig.http_url + "/api/actions"
    for path, code, words in (
        ("/teleport?flow=bench", 404, "unknown action"),
        ("/pause?flow=nosuch", 404, "no flow"),
        ("/pause", 400, "missing"),
        ("/pause?params=%5B1%5D", 400, "JSON object"),
    ):
        status, h, body = await post(base + path)
        assert status == code and words in body["error"], path
    # Refused by the engine: recorded as a failed action, answered 409 with the reason.
    status, _, body = await post(base + "/reset_breaker?flow=bench&source=nope")
    assert status == 409 and not body["ok"] and "no source" in body["result"]["message"]
    assert operator_rows(rig.store)[-1] == ("reset_breaker", "tester", "failed")
    status, h, _ = await aget(base + "/pause?flow=bench")  # a GET never acts
    assert status == 405 and h["Allow"] == "POST"
    # A page on another site cannot make the operator's browser act (CSRF).
    status, _, body = await post(base + "/pause?flow=bench", {"Origin": "http://evil.example"})
    assert status == 403 and not rig.engine.flows["bench"].paused
    status, _, body = await post(base + "/pause?flow=bench", {"X-Flowdeck-Actor": "bad name!"})
    assert status == 400 and "actor" in body["error"]


async def test_http_actions_need_the_token_when_the_daemon_has_one(tmp_path):
    rig = await start_rig(tmp_path, token="s3cret")
    try:
        url = rig.http_url + "/api/actions/pause?flow=bench"
        status, h, _ = await post(url)
        assert status == 401 and "Bearer" in h["WWW-Authenticate"]
        assert not rig.engine.flows["bench"].paused
        status, _, body = await post(url, {"Authorization": "Bearer s3cret"})
        assert status == 200 and rig.engine.flows["bench"].paused
    finally:
        await rig.close()


async def cli(*args: str) -> int:
    return await asyncio.to_thread(main, list(args))


async def test_cli_act_sends_the_action_and_prints_the_result(rig, capsys):
    ws = rig.feed.feed_url
    assert await cli("act", "pause", "--flow", "bench", "--connect", ws, "--yes",
                     "--actor", "carol") == 0
    assert capsys.readouterr().out.strip() == "paused bench"
    assert rig.engine.flows["bench"].paused
    # run_now and resume are safe: no confirmation needed, even without a terminal.
    assert await cli("act", "resume", "--flow", "bench", "--connect", ws, "--actor", "carol") == 0
    (rig.tmp / "bench" / "a.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows_for(["KSFO", "KJFK"])))
    assert await cli("act", "run_now", "--flow", "bench", "--connect", ws, "--json",
                     "--actor", "carol") == 0
    out = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert out["ok"] and out["run"]["flow"] == "bench"
    # A generic action with its parameters passed through: replay raw since a time.
    assert await cli("act", "replay_raw", "--flow", "bench", "--since", "1h", "--connect", ws,
                     "--yes", "--actor", "carol") == 0
    assert "replayed" in capsys.readouterr().out
    ops = operator_rows(rig.store)
    assert [a for a, _, _ in ops] == ["pause", "resume", "run_now", "replay_raw"]
    assert {actor for _, actor, _ in ops} == {"operator:carol"}


async def test_cli_act_errors_are_one_line(rig, capsys):
    ws = rig.feed.feed_url
    # Destructive, no terminal to ask on, no --yes: refused before anything is sent.
    assert await cli("act", "pause", "--flow", "bench", "--connect", ws) == 2
    err = capsys.readouterr().err.strip()
    assert err == "flowdeck: pause flow=bench: confirm with --yes (no terminal to ask on)"
    assert not rig.engine.flows["bench"].paused
    assert await cli("act", "teleport", "--flow", "bench", "--connect", ws, "--yes") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["flowdeck: unknown action 'teleport'"]
    # A refused action (no such source) is recorded as failed and exits 1.
    assert await cli("act", "reset_breaker", "--flow", "bench", "--source", "nope",
                     "--connect", ws, "--yes") == 1
    assert "no source 'nope'" in capsys.readouterr().out
    assert await cli("act", "pause", "--param", "oops", "--connect", ws, "--yes") == 2
    assert "KEY=VALUE" in capsys.readouterr().err


async def test_cli_purges_a_cache_key_and_prewarms_over_the_feed(rig, capsys):
    ws = rig.feed.feed_url
    await rig.ingest("bench", rows_for(["KSFO", "KJFK"]))
    caches = rig.engine.caches
    for key in ("KSFO", "KJFK"):
        await caches.latest("bench", key)
    assert await cli("act", "purge_cache", "--flow", "bench", "--key", "KSFO", "--layer", "l1",
                     "--connect", ws, "--yes", "--actor", "dave") == 0
    # The key's own entry and the flow-wide list of latest values that shows it.
    assert capsys.readouterr().out.strip() == "purged bench/KSFO from l1 (l1: 2)"
    assert caches.peek("bench", "latest", "KSFO") is None
    assert caches.peek("bench", "latest", "KJFK") is not None
    assert await cli("act", "prewarm", "--flow", "bench", "--connect", ws, "--actor", "dave") == 0
    assert "pre-warmed bench" in capsys.readouterr().out
    assert caches.peek("bench", "latest", "KSFO") is not None
    assert operator_rows(rig.store)[-2:] == [("purge_cache", "operator:dave", "ok"),
                                             ("prewarm", "operator:dave", "ok")]
