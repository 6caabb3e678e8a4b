"""Source kinds against real loopback servers: HTTP (simulator), files, websockets, engine."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time

import httpx
import pytest

from flowdeck.pipeline.config import SourceConfig, parse_config
from flowdeck.pipeline.demo.catalogue import PAIRS
from flowdeck.pipeline.demo.scenarios import Scenario
from flowdeck.pipeline.demo.simulator import Simulator
from flowdeck.pipeline.engine.engine import Engine
from flowdeck.pipeline.sources.base import FetchError
from flowdeck.pipeline.sources.file import FileSource
from flowdeck.pipeline.sources.http import HttpSource
from flowdeck.pipeline.sources.websocket import WebsocketSource
from flowdeck.storage.model import RawDraft

FX_PATH = "/fx/fxquote/rates"


@contextlib.asynccontextmanager
async def simulator(clock, faults=None):
    scenario = Scenario.parse({"name": "test", "faults": faults}) if faults else None
    sim = Simulator(seed=7, scenario=scenario, clock=clock)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


@contextlib.asynccontextmanager
async def http_client(seen: list | None = None):
    """A real httpx client; ``seen`` collects (method, url, headers) of every request sent."""
    hooks = {}
    if seen is not None:

        async def record(request: httpx.Request) -> None:
            seen.append(request)

        hooks = {"request": [record]}
    async with httpx.AsyncClient(event_hooks=hooks) as client:
        yield client


def http_src(url: str, **kw) -> SourceConfig:
    return SourceConfig.model_validate({"name": "fxquote", "kind": "http", "url": url, **kw})


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def eventually(fn, timeout: float = 5.0, interval: float = 0.05):
    """Call ``fn`` (sync or async) until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


# --------------------------------------------------------------------------- HTTP


async def test_http_first_fetch_returns_payload_with_content_type(clock):
    async with simulator(clock) as sim, http_client() as client:
        source = HttpSource(http_src(sim.base_url + FX_PATH), client)
        out = await source.fetch()
    assert len(out) == 1
    f = out[0]
    assert isinstance(f, RawDraft)
    assert f.status_code == 200
    assert f.content_type == "application/json"
    assert f.truncated is False
    assert f.origin == sim.base_url + FX_PATH
    doc = json.loads(f.body)
    assert doc["provider"] == "fxquote"
    assert {q["pair"] for q in doc["quotes"]} == set(PAIRS)
    assert sim.request_counts["fxquote"] == 1


async def test_http_unchanged_upstream_costs_a_304_and_returns_nothing(clock):
    seen: list[httpx.Request] = []
    async with simulator(clock) as sim, http_client(seen) as client:
        source = HttpSource(http_src(sim.base_url + FX_PATH), client)
        first = await source.fetch()
        assert len(first) == 1 and first[0].body
        etag = source.etag
        assert etag and etag.startswith('"')
        assert "if-none-match" not in seen[0].headers

        second = await source.fetch()  # same simulated time: same bytes upstream
        assert second == []
        assert sim.request_counts["fxquote"] == 2  # the request did go out
        assert seen[1].headers["if-none-match"] == etag

        clock.advance(60)  # a new minute: the upstream changed, so a full body again
        third = await source.fetch()
        assert len(third) == 1 and third[0].status_code == 200
        assert third[0].body != first[0].body
        assert source.etag != etag
        assert sim.request_counts["fxquote"] == 3


async def test_http_outage_raises_after_retries_plus_one_attempts(clock):
    faults = [{"kind": "outage", "source": "fxquote"}]
    async with simulator(clock, faults) as sim, http_client() as client:
        source = HttpSource(http_src(sim.base_url + FX_PATH, retries=2), client, backoff=0.01)
        with pytest.raises(FetchError) as info:
            await source.fetch()
        assert info.value.kind == "http"
        assert info.value.status == 503
        assert "503" in info.value.message
        assert sim.request_counts["fxquote"] == 3

        no_retry = HttpSource(http_src(sim.base_url + FX_PATH, retries=0), client, backoff=0.01)
        with pytest.raises(FetchError):
            await no_retry.fetch()
        assert sim.request_counts["fxquote"] == 4


async def test_http_client_error_is_not_retried(clock):
    faults = [{"kind": "error_burst", "source": "fxquote", "status": 404}]
    async with simulator(clock, faults) as sim, http_client() as client:
        source = HttpSource(http_src(sim.base_url + FX_PATH, retries=3), client, backoff=0.01)
        with pytest.raises(FetchError) as info:
            await source.fetch()
        assert (info.value.kind, info.value.status) == ("http", 404)
        assert sim.request_counts["fxquote"] == 1


async def test_http_timeout_fails_quickly(clock):
    faults = [{"kind": "timeout", "source": "fxquote"}]
    async with simulator(clock, faults) as sim, http_client() as client:
        source = HttpSource(http_src(sim.base_url + FX_PATH, timeout="0.3s", retries=0), client)
        t0 = time.monotonic()
        with pytest.raises(FetchError) as info:
            await source.fetch()
        elapsed = time.monotonic() - t0
    assert info.value.kind == "timeout"
    assert "0.3s" in info.value.message
    assert 0.25 <= elapsed < 2.0


async def test_http_connection_refused():
    url = f"http://127.0.0.1:{closed_port()}{FX_PATH}"
    async with http_client() as client:
        source = HttpSource(http_src(url, retries=1), client, backoff=0.01)
        with pytest.raises(FetchError) as info:
            await source.fetch()
    assert info.value.kind == "connect"
    assert info.value.status is None


async def test_http_body_over_max_bytes_is_truncated(clock):
    async with simulator(clock) as sim, http_client() as client:
        whole = (await HttpSource(http_src(sim.base_url + FX_PATH), client).fetch())[0]
        assert len(whole.body) > 200
        source = HttpSource(http_src(sim.base_url + FX_PATH, max_bytes=100), client)
        out = await source.fetch()
    assert len(out) == 1
    assert out[0].truncated is True
    assert len(out[0].body) > 100
    assert whole.body.startswith(out[0].body)


# --------------------------------------------------------------------------- files


def file_src(path, fmt: str = "jsonl") -> SourceConfig:
    return SourceConfig.model_validate(
        {"name": "drop", "kind": "file", "path": str(path), "format": fmt}
    )


def write(path, text: str, mtime: float) -> None:
    path.write_text(text, encoding="utf-8")
    os.utime(path, (mtime, mtime))


async def test_file_glob_picks_up_new_and_changed_files_once(tmp_path):
    pattern = tmp_path / "in" / "*.jsonl"
    (tmp_path / "in").mkdir()
    source = FileSource(file_src(pattern), str(pattern))
    assert await source.fetch() == []  # nothing matches yet: not an error

    a = tmp_path / "in" / "a.jsonl"
    write(a, '{"pair": "EURUSD"}\n', 1_700_000_000)
    (tmp_path / "in" / "ignored.csv").write_text("x\n1\n")
    out = await source.fetch()
    assert [f.origin for f in out] == [str(a)]
    assert out[0].body == b'{"pair": "EURUSD"}\n'
    assert out[0].content_type == "application/x-ndjson"
    assert out[0].truncated is False

    assert await source.fetch() == []  # unchanged: not returned twice

    b = tmp_path / "in" / "b.jsonl"
    write(b, '{"pair": "GBPUSD"}\n', 1_700_000_100)
    out = await source.fetch()
    assert [f.origin for f in out] == [str(b)]  # only the new file

    write(a, '{"pair": "EURUSD", "rate": 1.08}\n', 1_700_000_200)  # new size and mtime
    out = await source.fetch()
    assert [f.origin for f in out] == [str(a)]
    assert b"1.08" in out[0].body

    os.utime(b, (1_700_000_300, 1_700_000_300))  # touched: same size, new mtime
    assert [f.origin for f in await source.fetch()] == [str(b)]
    assert await source.fetch() == []


async def test_file_missing_plain_path_is_an_io_error(tmp_path):
    path = tmp_path / "nope.csv"
    source = FileSource(file_src(path, "csv"), str(path))
    with pytest.raises(FetchError) as info:
        await source.fetch()
    assert info.value.kind == "io"
    assert "nope.csv" in info.value.message


async def test_file_missing_glob_match_is_empty(tmp_path):
    pattern = tmp_path / "missing-dir" / "*.json"
    source = FileSource(file_src(pattern, "json"), str(pattern))
    assert await source.fetch() == []


async def test_file_plain_path_and_truncation(tmp_path):
    path = tmp_path / "rates.csv"
    write(path, "pair,rate\n" + "EURUSD,1.085\n" * 20, 1_700_000_000)
    src = SourceConfig.model_validate(
        {"name": "drop", "kind": "file", "path": str(path), "format": "csv", "max_bytes": 50}
    )
    out = await FileSource(src, str(path)).fetch()
    assert len(out) == 1
    assert out[0].content_type == "text/csv"
    assert out[0].truncated is True
    assert len(out[0].body) == 50  # cut at the limit (one byte more was read to know)


# --------------------------------------------------------------------------- websockets


def ws_src(url: str, **kw) -> SourceConfig:
    return SourceConfig.model_validate(
        {"name": "stream", "kind": "websocket", "url": url, "format": "jsonl", "timeout": 2, **kw}
    )


async def fetch_or_none(source: WebsocketSource) -> list[RawDraft] | None:
    """fetch(), with a connection error while the upstream is away counted as "not yet"."""
    try:
        return await source.fetch()
    except FetchError as exc:
        assert exc.kind == "connect"
        return None


def quotes(fetched: list[RawDraft]) -> list[dict]:
    assert len(fetched) == 1
    f = fetched[0]
    assert f.content_type == "application/x-ndjson"
    return [json.loads(line) for line in f.body.split(b"\n")]


async def test_websocket_buffers_quotes_and_reconnects_after_restart(clock):
    sim = Simulator(seed=7, clock=clock)
    port = await sim.start()
    source = WebsocketSource(ws_src(sim.ws_url), sim.ws_url)
    try:
        assert sim.ws_url == f"ws://127.0.0.1:{port}/stream/fx"
        out = await eventually(source.fetch)
        got = quotes(out)
        assert {q["pair"] for q in got} == set(PAIRS)  # the current minute, one per pair
        assert all(q["time"] == "2026-11-24T12:00:00Z" for q in got)
        assert source.connected
        assert await source.fetch() == []  # the buffer was drained

        clock.advance(60)  # the stream pushes the next minute by itself
        got = quotes(await eventually(source.fetch))
        assert {q["time"] for q in got} == {"2026-11-24T12:01:00Z"}
        assert len(got) == len(PAIRS)

        task = source.task
        await sim.stop()
        await eventually(lambda: not source.connected)
        assert source.task is task and not task.done()  # still trying, not dead

        clock.advance(60)
        await sim.start(port=port)  # same port again
        got = quotes(await eventually(lambda: fetch_or_none(source), timeout=8.0))
        assert {q["time"] for q in got} == {"2026-11-24T12:02:00Z"}
        assert source.connected
        assert sim.request_counts["fxstream"] == 2  # one handshake per connection
    finally:
        task = source.task
        await source.close()
        await sim.stop()
    assert source.task is None
    assert task is not None and task.done()


async def test_websocket_reports_connect_errors_while_down():
    url = f"ws://127.0.0.1:{closed_port()}/stream/fx"
    source = WebsocketSource(ws_src(url), url)
    try:
        assert await source.fetch() == []  # first call starts the task; nothing yet
        await eventually(lambda: source.last_error is not None)
        with pytest.raises(FetchError) as info:
            await source.fetch()
        assert info.value.kind == "connect"
    finally:
        task = source.task
        await source.close()
    assert task.done()


async def test_websocket_against_a_plain_server_keeps_binary_and_text():
    from websockets.asyncio.server import serve

    release = asyncio.Event()

    async def handler(ws):
        await ws.send('{"pair": "EURUSD", "rate": 1.1, "time": "2026-11-24T12:00:00Z"}\n')
        await ws.send(b'{"pair": "GBPUSD", "rate": 1.3, "time": "2026-11-24T12:00:00Z"}')
        await release.wait()

    async with serve(handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        url = f"ws://127.0.0.1:{port}/"
        source = WebsocketSource(ws_src(url), url)
        source.start()
        try:
            await eventually(lambda: len(source.buffer) >= 2)
            got = quotes(await source.fetch())
        finally:
            release.set()
            await source.close()
    assert [q["pair"] for q in got] == ["EURUSD", "GBPUSD"]


# --------------------------------------------------------------------------- engine


WS_FLOW = """
flows:
  fx:
    schedule: {{every: 10s}}
    key: pair
    sources:
      - name: stream
        kind: websocket
        url: {url}
        format: jsonl
        fields: {{pair: pair, ts: time, rate: rate}}
        timeout: 2s
    fields:
      pair: {{type: str, required: true, pattern: "^[A-Z]{{6}}$"}}
      rate: {{type: float, required: true, range: [0.0001, 100000]}}
"""


async def test_engine_stores_records_from_a_websocket_source(store, clock, tmp_path):
    async with simulator(clock) as sim:
        config = parse_config(WS_FLOW.format(url=sim.ws_url), base_dir=tmp_path)
        engine = Engine(config, store, clock=clock)
        await engine.start(schedule=False)
        try:
            fetcher = engine.flows["fx"].fetchers["stream"]
            assert isinstance(fetcher, WebsocketSource)
            first = await engine.run_flow("fx")  # starts the subscription
            assert first.status == "ok"
            await eventually(lambda: len(fetcher.buffer) >= len(PAIRS))
            second = await engine.run_flow("fx")
            assert second.status == "ok", second.error
            assert second.payloads == 1
            assert second.stages["store"].records_out == len(PAIRS)

            clock.advance(60)
            await eventually(lambda: len(fetcher.buffer) >= len(PAIRS))
            third = await engine.run_flow("fx")
            assert third.status == "ok", third.error
        finally:
            await engine.stop()
        assert fetcher.task is None  # the engine stopped the subscription

    assert store.count("records", flow="fx") == 2 * len(PAIRS)
    assert store.count("raw_payloads", flow="fx") == 2
    latest = {r["key"]: r for r in store.latest("fx")}
    assert set(latest) == set(PAIRS)
    minute = 1_795_521_600_000 + 60_000  # the fixture clock starts at 12:00:30, then +1 min
    for pair, row in latest.items():
        assert row["ts_ms"] == minute
        assert row["sources"] == ["stream"]
        assert row["data"]["rate"] == pytest.approx(PAIRS[pair], rel=0.05)
    eur = list(store.records_since("fx", key="EURUSD"))
    assert [r["ts_ms"] for r in eur] == [minute - 60_000, minute]


async def test_file_unreadable_match_does_not_lose_the_files_before_it(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"pair": "EURUSD"}\n')
    (tmp_path / "b.jsonl").mkdir()  # matches the glob but cannot be read
    pattern = str(tmp_path / "*.jsonl")
    source = FileSource(file_src(pattern), pattern)
    out = await source.fetch()  # the directory is not a file: skipped, a.jsonl delivered
    assert [f.origin for f in out] == [str(tmp_path / "a.jsonl")]
    (tmp_path / "b.jsonl").rmdir()
    (tmp_path / "b.jsonl").write_text('{"pair": "GBPUSD"}\n')
    out = await source.fetch()
    assert [f.origin for f in out] == [str(tmp_path / "b.jsonl")]
