"""Secure by default: tokens off loopback, Origin and Host checks, and slow viewers.

Real websocket and HTTP clients on loopback against a real engine and feed; the
refusal to start without a token is also checked on the real command line.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time

import pytest
from support.feed import (
    FLOWDECK,
    Client,
    Daemon,
    aget,
    free_port,
    http_get,
    rows_for,
    start_rig,
)
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from flowdeck.pipeline.serve.access import FeedError
from flowdeck.pipeline.serve.feed import FeedLimits, FeedServer

TOKEN = "s3cret-token-for-tests"


@pytest.fixture
async def rig(tmp_path):
    r = await start_rig(tmp_path)
    yield r
    await r.close()


@pytest.fixture
async def token_rig(tmp_path):
    r = await start_rig(tmp_path, token=TOKEN)
    yield r
    await r.close()


async def test_a_non_loopback_bind_refuses_to_start_without_a_token(rig):
    control = rig.feed.control
    for host in ("0.0.0.0", "", "192.0.2.10", "::"):
        with pytest.raises(FeedError, match="without a token"):
            FeedServer(control, host=host, port=0)
    with pytest.raises(FeedError, match="empty"):
        FeedServer(control, host="0.0.0.0", port=0, token="  ")
    assert FeedServer(control, host="0.0.0.0", port=0, token=TOKEN).token == TOKEN
    assert FeedServer(control, host="::1", port=0).gate.loopback


def test_daemon_command_refuses_a_public_bind_without_a_token(tmp_path):
    db = f"sqlite:///{tmp_path / 'd.db'}"
    env = {k: v for k, v in __import__("os").environ.items() if k != "FLOWDECK_TOKEN"}
    res = subprocess.run(
        FLOWDECK + ["daemon", "--db", db, "--bind", f"0.0.0.0:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [res.stderr.strip()]  # one line
    assert "refusing to serve the feed on 0.0.0.0" in res.stderr and "token" in res.stderr
    res = subprocess.run(
        FLOWDECK + ["daemon", "--db", db, "--bind", "nonsense"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert res.returncode == 2 and "cannot read bind address 'nonsense'" in res.stderr
    assert "Traceback" not in res.stderr


def test_daemon_with_a_token_from_the_environment_requires_it(tmp_path):
    d = Daemon(["--db", f"sqlite:///{tmp_path / 'd.db'}"], env={"FLOWDECK_TOKEN": TOKEN})
    try:
        d.wait_ready()
        assert http_get(d.url + "/api/flows")[0] == 401
        status, _, body = http_get(d.url + "/api/flows", {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and set(json.loads(body)["flows"]) == {"weather", "fx"}
    finally:
        assert "Traceback" not in d.stop()


async def test_feed_without_the_token_is_closed_4401(token_rig):
    url = token_rig.ws_url
    for headers in (None, {"Authorization": "Bearer wrong"}):
        async with connect(url, additional_headers=headers) as ws:
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 4401 and ws.close_reason == "missing or wrong token"
    c = await Client.open(url, token=TOKEN)
    await c.subscribe("flows")
    await c.close()
    async with connect(url + f"?token={TOKEN}") as ws:  # how browsers pass it
        assert json.loads(await ws.recv())["type"] == "hello"


async def test_http_without_the_token_is_401(token_rig):
    base = token_rig.http_url
    for path in ("/api/flows", "/metrics", "/api/issues", "/api/flows/bench/latest"):
        status, headers, body = await aget(base + path)
        assert status == 401, path
        assert headers["WWW-Authenticate"].startswith("Bearer")
        assert "missing or wrong token" in json.loads(body)["error"]
    assert (await aget(base + "/api/flows", {"Authorization": f"Bearer {TOKEN}"}))[0] == 200
    assert (await aget(base + f"/api/flows?token={TOKEN}"))[0] == 200
    assert (await aget(base + "/healthz"))[0] == 200  # probes stay open
    _, _, body = await aget(base + "/readyz")
    assert "flows" not in json.loads(body)  # ...but say nothing about flows without it
    _, _, body = await aget(base + "/readyz", {"Authorization": f"Bearer {TOKEN}"})
    assert set(json.loads(body)["flows"]) == {"bench", "other"}


async def test_foreign_origin_gets_403(tmp_path):
    rig = await start_rig(tmp_path, origins=["https://dash.example"])
    try:
        with pytest.raises(InvalidStatus) as exc:
            await connect(rig.ws_url, origin="https://evil.example")
        assert exc.value.response.status_code == 403
        assert b"not allowed" in exc.value.response.body
        for origin in ("https://dash.example", f"http://127.0.0.1:{rig.feed.port}"):
            async with connect(rig.ws_url, origin=origin) as ws:  # listed, and same-origin
                assert json.loads(await ws.recv())["type"] == "hello"
        status, _, _ = await aget(rig.http_url + "/api/flows", {"Origin": "https://evil.example"})
        assert status == 403
        status, headers, _ = await aget(
            rig.http_url + "/api/flows", {"Origin": "https://dash.example"}
        )
        assert status == 200
        assert headers["Access-Control-Allow-Origin"] == "https://dash.example"
    finally:
        await rig.close()


async def test_loopback_feed_refuses_foreign_host_names(rig):
    """Without a token, a loopback feed answers loopback names only (DNS rebinding)."""
    status, _, body = await aget(
        rig.http_url + "/api/flows", {"Host": f"attacker.example:{rig.feed.port}"}
    )
    assert status == 403 and b"not a loopback name" in body
    status, _, _ = await aget(rig.http_url + "/api/flows", {"Host": f"localhost:{rig.feed.port}"})
    assert status == 200


def _station_keys(n: int) -> list[str]:
    return [f"{chr(65 + i // 1000)}{i % 1000:03d}" for i in range(n)]


async def test_a_stalled_viewer_is_closed_1008_while_another_keeps_up(tmp_path):
    # The socket buffer bound is above one delta (~0.4 MB), so a viewer that reads is never
    # taken for a slow one; the stalled viewer fills it, then its queue passes 20 messages.
    limits = FeedLimits(write_buffer_bytes=2**20, max_pending=20, max_pending_bytes=8 * 2**20)
    rig = await start_rig(tmp_path, limits=limits)
    try:
        stalled = await Client.open(rig.ws_url, max_queue=2)
        await stalled.subscribe("records:bench")
        await stalled.subscribe("events")  # unconflatable: its queue grows when stalled
        fast = await Client.open(rig.ws_url)
        _, snap = await fast.subscribe("records:bench")
        lateness, seqs = [], []

        async def keep_reading() -> None:
            while True:
                m = await fast.recv(timeout=30)
                if m["type"] == "delta":
                    lateness.append(time.time() - m["ts"])
                    seqs.append(m["seq"])

        reader = asyncio.create_task(keep_reading())
        keys = _station_keys(2000)  # each delta carries ~0.4 MB: socket buffers fill fast
        t0 = int(time.time() * 1000) // 60_000 * 60_000 - 200 * 60_000
        ingests = 0
        while not rig.feed.metrics.dropped.get("slow_viewer") and ingests < 150:
            await rig.ingest("bench", rows_for(keys, t0_ms=t0 + ingests * 60_000))
            ingests += 1
        assert rig.feed.metrics.dropped["slow_viewer"] > 0, "the stalled viewer was never closed"
        assert sum(not v.closed for v in rig.feed.viewers) == 1
        print(f"stalled viewer closed after {ingests} ingests")
        # The viewer that kept reading got every delta, in order, on time.
        for _ in range(2):
            await rig.ingest("bench", rows_for(keys[:10], t0_ms=t0 + ingests * 60_000))
            ingests += 1
        deadline = time.monotonic() + 10
        while len(seqs) < ingests and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        reader.cancel()
        assert seqs == list(range(snap["seq"] + 1, snap["seq"] + 1 + ingests))
        assert max(lateness) < 1.0, f"fast viewer was late by up to {max(lateness):.3f}s"
        # The stalled one, when it reads again, finds what was buffered, then the close.
        with pytest.raises(ConnectionClosed):
            while True:
                await stalled.recv(timeout=10)
        assert stalled.ws.close_code == 1008
        assert stalled.ws.close_reason.startswith("viewer too slow")
        assert rig.feed.metrics.dropped["conflated"] > 0
    finally:
        await rig.close()
