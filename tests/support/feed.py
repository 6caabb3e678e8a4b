"""Shared pieces of the feed tests: a real engine + feed on loopback, a client, Chromium.

The rig runs a real :class:`Engine` on SQLite with two flows whose sources are
folders of JSON-lines files: ``ingest()`` drops a new file and runs the flow,
so records go through every stage and reach viewers the way they do in
production (engine -> hub -> feed -> websocket).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from flowdeck.pipeline.config import parse_config
from flowdeck.pipeline.engine.engine import Engine
from flowdeck.pipeline.serve.control import LocalControl
from flowdeck.pipeline.serve.feed import FeedLimits, FeedServer
from flowdeck.storage.store import Store

REQUIRE_SERVICES = os.environ.get("FLOWDECK_REQUIRE_SERVICES") == "1"
FLOWDECK = [sys.executable, "-m", "flowdeck.console.cli"]

FLOWS = """
flows:
  bench:
    description: stations dropped into a folder
    schedule: {{every: 1h}}
    key: station
    sources:
      - {{name: drop, kind: file, path: "{bench}/*.jsonl", format: jsonl,
          fields: {{station: s, ts: t, temperature: temp, pressure: p}},
          timestamp: {{format: epoch_ms}}}}
    fields:
      station: {{type: str, required: true, pattern: "^[A-Z0-9]{{4}}$"}}
      temperature: {{type: float, range: [-90, 60]}}
      pressure: {{type: float, range: [850, 1090]}}
  other:
    description: a second flow, for filters
    schedule: {{every: 1h}}
    key: station
    sources:
      - {{name: drop, kind: file, path: "{other}/*.jsonl", format: jsonl,
          fields: {{station: s, ts: t, temperature: temp}},
          timestamp: {{format: epoch_ms}}}}
    fields:
      station: {{type: str, required: true}}
      temperature: {{type: float, range: [-90, 60]}}
{extra}
"""


# A flow whose only source is missing: its breaker opens on the first failed run.
BROKEN_FLOW = """
  broken:
    schedule: {{every: 1h}}
    key: station
    recovery: {{breaker: {{min_requests: 1, window: 2, cooldown: 1h}}}}
    sources:
      - {{name: gone, kind: file, path: "{tmp}/missing.jsonl", format: jsonl,
          fields: {{station: s, ts: t}}, timestamp: {{format: epoch_ms}}}}
    fields:
      station: {{type: str, required: true}}
"""


def need_tool(name: str, package: str) -> str:
    """The tool's path; skip with a reason when absent (fail when services are required)."""
    path = shutil.which(name)
    if path:
        return path
    msg = f"{name} is not installed (apt-get install -y {package})"
    if REQUIRE_SERVICES:
        pytest.fail(msg + " and FLOWDECK_REQUIRE_SERVICES=1")
    pytest.skip(msg)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(tmp: Path, extra: str = "") -> Path:
    for d in ("bench", "other"):
        (tmp / d).mkdir(exist_ok=True)
    path = tmp / "flows.yaml"
    path.write_text(FLOWS.format(bench=tmp / "bench", other=tmp / "other", extra=extra))
    return path


def rows_for(keys, n_per_key: int = 1, t0_ms: int | None = None, pad: int = 0) -> list[dict]:
    """Observations for station keys, one per minute going back from now."""
    t0 = t0_ms or (int(time.time() * 1000) // 60_000 * 60_000)
    out = []
    for i in range(n_per_key):
        for j, k in enumerate(keys):
            row = {
                "s": k,
                "t": t0 - i * 60_000,
                "temp": round(10 + (j % 30) * 0.5 + i * 0.1, 2),
                "p": 1000 + j % 50,
            }
            if pad:
                row["note"] = "x" * pad
            out.append(row)
    return out


class Rig:
    """A started engine (no schedule) and a feed server on a free loopback port."""

    def __init__(self, tmp: Path, engine: Engine, store: Store, feed: FeedServer) -> None:
        self.tmp = tmp
        self.engine = engine
        self.store = store
        self.feed = feed
        self.files = 0

    @property
    def ws_url(self) -> str:
        return self.feed.feed_url

    @property
    def http_url(self) -> str:
        return self.feed.url

    async def ingest(self, flow: str, rows: list[dict]) -> dict:
        """Drop rows as a new file and run the flow once; the run summary."""
        self.files += 1
        path = self.tmp / flow / f"{self.files:05d}.jsonl"
        await asyncio.to_thread(path.write_text, "\n".join(json.dumps(r) for r in rows))
        return (await self.engine.run_flow(flow, "manual")).as_dict()

    async def close(self) -> None:
        await self.feed.stop()
        await self.engine.stop()
        self.store.close()


async def start_rig(
    tmp: Path,
    *,
    limits: FeedLimits | None = None,
    token: str | None = None,
    origins: list[str] | None = None,
    schedule: bool = False,
    host: str = "127.0.0.1",
    extra: str = "",
) -> Rig:
    config = parse_config(write_config(tmp, extra).read_text(), str(tmp / "flows.yaml"))
    store = Store(f"sqlite:///{tmp / 'feed.db'}")
    engine = Engine(config, store)
    feed = FeedServer(
        LocalControl(engine, actor="tester"),
        host=host,
        port=0,
        token=token,
        origins=origins or [],
        limits=limits,
    )
    await feed.start()
    await engine.start(schedule=schedule)
    return Rig(tmp, engine, store, feed)


class Client:
    """A websocket viewer that keeps every message it reads, for assertions."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.seen: list[dict] = []
        self.backlog: list[dict] = []
        self._ids = 0

    @classmethod
    async def open(cls, url: str, token: str | None = None, **kw) -> Client:
        headers = {"Authorization": f"Bearer {token}"} if token else None
        ws = await connect(
            url, additional_headers=headers, compression=None, max_size=64 * 2**20, **kw
        )
        c = cls(ws)
        hello = await c.expect("hello")
        assert hello["data"]["protocol"] == 1
        return c

    async def send(self, **msg) -> int:
        self._ids += 1
        msg.setdefault("id", self._ids)
        await self.ws.send(json.dumps(msg))
        return msg["id"]

    async def recv(self, timeout: float = 5.0) -> dict:
        m = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        self.seen.append(m)
        return m

    async def expect(
        self, type_: str, channel: str | None = None, timeout: float = 5.0, where=None
    ) -> dict:
        """The first unclaimed message of this type (and channel) matching ``where``.

        Messages read on the way that do not match stay in a backlog for later calls.
        """

        def ok(m: dict) -> bool:
            return (
                m["type"] == type_
                and (channel is None or m["channel"] == channel)
                and (where is None or where(m))
            )

        for i, m in enumerate(self.backlog):
            if ok(m):
                return self.backlog.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"no {type_} on {channel} within {timeout}s; last seen: "
                    f"{[(m['type'], m['channel']) for m in self.seen[-8:]]}"
                )
            try:
                m = await self.recv(left)
            except TimeoutError:
                continue
            if ok(m):
                return m
            self.backlog.append(m)

    async def subscribe(self, channel: str, **kw) -> tuple[dict, dict]:
        """(subscribed, snapshot) for a fresh subscription."""
        await self.send(type="subscribe", channel=channel, **kw)
        sub = await self.expect("subscribed", channel)
        snap = await self.expect("snapshot", channel)
        return sub, snap

    async def close(self) -> None:
        await self.ws.close()


def http_get(url: str, headers: dict | None = None, method: str = "GET") -> tuple[int, dict, bytes]:
    """(status, headers, body) of a plain request, without raising on 4xx/5xx."""
    req = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


async def aget(
    url: str, headers: dict | None = None, method: str = "GET"
) -> tuple[int, dict, bytes]:
    """http_get from async code (in a thread, so the server on this loop can answer)."""
    return await asyncio.to_thread(http_get, url, headers, method)


class Daemon:
    """`flowdeck daemon` as a subprocess on a free port; ``url`` once it serves."""

    def __init__(self, args: list[str], env: dict | None = None, cwd: Path | None = None) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            FLOWDECK + ["daemon", "--bind", f"127.0.0.1:{self.port}", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("daemon exited: " + self.proc.stderr.read())
            try:
                if http_get(self.url + "/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError("daemon did not become ready")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err


class Chromium:
    """Headless Chromium driven over the DevTools protocol (a websocket, nothing else).

    ``--dump-dom`` with a virtual-time budget does not wait for websocket traffic, so
    the page would be dumped before the feed's snapshot arrives; this waits in real time
    for a condition evaluated in the page instead.
    """

    FLAGS = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--remote-debugging-port=0",
    ]

    def __init__(self, binary: str, profile: Path) -> None:
        self.profile = profile
        self.proc = subprocess.Popen(
            [binary, *self.FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.ws = None
        self._id = 0

    async def open(self, url: str, timeout: float = 20.0) -> None:
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not port_file.exists() or not port_file.read_text().strip():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError("chromium did not start its DevTools endpoint")
            await asyncio.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        targets = []
        while not targets:
            data = await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/json/list")
            targets = [t for t in json.loads(data[2]) if t.get("type") == "page"]
            if not targets:
                await asyncio.sleep(0.05)
        self.ws = await connect(targets[0]["webSocketDebuggerUrl"], max_size=2**26)
        await self.call("Page.navigate", url=url)

    async def call(self, method: str, **params) -> dict:
        self._id += 1
        await self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            m = json.loads(await self.ws.recv())
            if m.get("id") == self._id:
                if "error" in m:
                    raise AssertionError(f"{method}: {m['error']}")
                return m["result"]

    async def evaluate(self, expression: str):
        r = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return r["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 15.0):
        """Poll a JavaScript expression until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"page never satisfied {expression!r}")
            await asyncio.sleep(0.1)

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
