"""Two `flowdeck daemon` processes on one PostgreSQL database and one Redis, each running a
different flow (their own config files): a viewer on node A receives the records of the
flow node B runs, in order, numbered as B's own viewers see them, and resumes on A after
A restarted, without loss or duplicates."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.cluster import DROP_FLOW, REDIS, redis_namespace
from tests.support.feed import Client, free_port, rows_for
from tests.support.proxy import Proxy

pytestmark = pytest.mark.slow

FLOWDECK = [sys.executable, "-m", "flowdeck.console.cli"]

CONFIG = 'cache: {{namespace: "{ns}"}}\nflows:' + DROP_FLOW.replace("{name}", "{flow}")


class Daemon:
    def __init__(self, tmp: Path, name: str, flow: str, db: str, ns: str,
                 redis: str = REDIS) -> None:
        self.redis = redis
        self.dir = tmp / name
        (self.dir / flow).mkdir(parents=True)
        self.flow = flow
        self.config = self.dir / "flows.yaml"
        self.config.write_text(CONFIG.format(ns=ns, flow=flow, dir=self.dir / flow))
        self.db = db
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.files = 0
        self.log = self.dir / "daemon.log"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/feed"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            FLOWDECK + ["daemon", "--config", str(self.config), "--db", self.db,
                        "--redis", self.redis, "--bind", f"127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=self.log.open("ab"),
            env={**os.environ, "FLOWDECK_NODE": self.dir.name})
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"daemon {self.dir.name} exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz",
                                            timeout=2):
                    return
            except OSError:
                time.sleep(0.3)
        pytest.fail(f"daemon {self.dir.name} did not start: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self.proc = None

    async def run(self, client: Client, rows: list[dict]) -> None:
        """Drop a file of rows and run the flow now (an operator action over the feed)."""
        self.files += 1
        (self.dir / self.flow / f"{self.files:05d}.jsonl").write_text(
            "\n".join(json.dumps(r) for r in rows))
        rid = await client.send(type="action", name="run_now", params={"flow": self.flow})
        res = await client.expect("result", timeout=120, where=lambda m: m["data"]["id"] == rid)
        assert res["data"]["ok"], res


@pytest.fixture
def namespace():
    """A Redis key prefix of this test's own, every key under it deleted afterwards."""
    yield from redis_namespace()


async def hello_flows(url: str) -> list[str]:
    c = await Client.open(url)
    try:
        return c.seen[0]["data"]["flows"]
    finally:
        await c.close()


def test_viewer_on_node_a_sees_node_b_flow_and_resumes_after_a_restarts(
        tmp_path, pg_url, namespace):
    a = Daemon(tmp_path, "node-a", "xa", pg_url, namespace)
    b = Daemon(tmp_path, "node-b", "yb", pg_url, namespace)

    async def main():
        deadline = time.monotonic() + 120
        while "yb" not in await hello_flows(a.ws):  # A learns B's flow from Redis
            assert time.monotonic() < deadline, "node a never listed node b's flow"
            await asyncio.sleep(0.5)
        va = await Client.open(a.ws)
        vb = await Client.open(b.ws)
        assert va.seen[0]["data"]["fanout"]["backend"] == "redis-streams"
        sub_a, _ = await va.subscribe("records:yb")
        await vb.subscribe("records:yb")
        t0 = 1_795_000_000_000
        for i in range(3):
            await b.run(vb, rows_for([f"S{i:03d}"], t0_ms=t0 + i * 60_000))
        on_a = [await va.expect("delta", "records:yb", timeout=120) for _ in range(3)]
        on_b = [await vb.expect("delta", "records:yb", timeout=120) for _ in range(3)]
        seqs = [m["seq"] for m in on_a]
        assert seqs == list(range(seqs[0], seqs[0] + 3))
        assert on_a == on_b  # same seq, same bytes, on both nodes
        assert [m["data"]["records"][0]["key"] for m in on_a] == ["S000", "S001", "S002"]
        # The console's snapshot on A carries B's flow; so does A's HTTP read API.
        rid = await va.send(type="query", name="snapshot", params={"latest": ["yb"]})
        snap = await va.expect("result", timeout=120, where=lambda m: m["data"]["id"] == rid)
        assert "yb" in snap["data"]["result"]["flows"]
        assert {r["key"] for r in snap["data"]["result"]["latest"]["yb"]} >= {"S002"}
        with urllib.request.urlopen(f"http://127.0.0.1:{a.port}/api/flows", timeout=30) as r:
            assert set(json.loads(r.read())["flows"]) >= {"xa", "yb"}
        await va.close()
        await vb.close()
        return sub_a["data"]["epoch"], on_a[0]["seq"]

    async def after_restart(epoch: str, last: int) -> None:
        vb = await Client.open(b.ws)
        t0 = 1_795_000_000_000
        for i in range(3, 5):  # two more runs of B's flow while A restarts
            await b.run(vb, rows_for([f"S{i:03d}"], t0_ms=t0 + i * 60_000))
        a.start()
        va = await Client.open(a.ws)
        await va.send(type="subscribe", channel="records:yb", resume_from=last, epoch=epoch)
        sub = await va.expect("subscribed", "records:yb", timeout=120)
        assert sub["data"]["resumed"] is True, sub
        replay = [await va.expect("delta", "records:yb", timeout=120) for _ in range(4)]
        assert [m["seq"] for m in replay] == list(range(last + 1, last + 5))
        assert [m["data"]["records"][0]["key"] for m in replay] == [
            "S001", "S002", "S003", "S004"]
        with pytest.raises(TimeoutError):
            await va.expect("delta", "records:yb", timeout=3)  # and nothing twice
        await va.close()
        await vb.close()

    try:
        a.start()
        b.start()
        epoch, last = asyncio.run(main())
        a.stop()
        asyncio.run(after_restart(epoch, last))
    finally:
        a.stop()
        b.stop()
    assert "Traceback" not in a.log.read_text() + b.log.read_text()


def metrics(d: Daemon) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{d.port}/metrics", timeout=30) as r:
        return r.read().decode()


def keys_of(m: dict) -> list[str]:
    return [r["key"] for r in m["data"]["records"]]


def test_a_node_cut_off_from_redis_runs_its_own_flows_and_catches_up(
        tmp_path, pg_url, namespace):
    """Node A reaches Redis through a proxy the test cuts: A's viewers keep seeing A's
    flow (degraded, said in the gap and on /metrics), B's viewers miss it until A is
    back and then get a gap and a snapshot; fan-out then works both ways again."""
    proxy = Proxy(("127.0.0.1", 6379))
    a = Daemon(tmp_path, "node-a", "xa", pg_url, namespace, redis=proxy.url)
    b = Daemon(tmp_path, "node-b", "yb", pg_url, namespace)

    async def main():
        deadline = time.monotonic() + 120
        while "yb" not in await hello_flows(a.ws):
            assert time.monotonic() < deadline, "node a never listed node b's flow"
            await asyncio.sleep(0.5)
        va = await Client.open(a.ws)
        vb = await Client.open(b.ws)
        sub, _ = await va.subscribe("records:xa")
        await va.subscribe("records:yb")
        await vb.subscribe("records:xa")
        await vb.subscribe("records:yb")
        await a.run(va, rows_for(["K001"]))
        first = await va.expect("delta", "records:xa", timeout=120)
        await vb.expect("delta", "records:xa", timeout=120)

        await asyncio.to_thread(proxy.cut)
        gap = await va.expect("gap", "records:xa", timeout=120)
        assert gap["data"]["fanout"] == "degraded"
        assert gap["data"]["epoch"] != sub["data"]["epoch"]
        assert "flowdeck_fanout_degraded 1.0" in await asyncio.to_thread(metrics, a)
        for ch in ("records:xa", "records:yb"):  # the snapshots after the degraded gap
            await va.expect("snapshot", ch, timeout=120)
        await a.run(va, rows_for(["K002"]))
        local = await va.expect("delta", "records:xa", timeout=120,
                                where=lambda m: keys_of(m) == ["K002"])
        assert local["seq"] == first["seq"] + 1
        await b.run(vb, rows_for(["Y001"]))
        with pytest.raises(TimeoutError):  # A is cut off: B's run does not reach it ...
            await va.expect("delta", "records:yb", timeout=2)
        with pytest.raises(TimeoutError):  # ... and A's run did not reach B
            await vb.expect("delta", "records:xa", timeout=2)

        await asyncio.to_thread(proxy.restore)
        back = await va.expect("gap", "records:xa", timeout=120,
                               where=lambda m: m["data"].get("fanout") == "up")
        assert back["data"]["epoch"] == sub["data"]["epoch"]
        missed = await vb.expect("gap", "records:xa", timeout=120)
        assert "node-a" in missed["data"]["reason"]
        snap = await vb.expect("snapshot", "records:xa", timeout=120)
        assert {r["key"] for r in snap["data"]["records"]} >= {"K001", "K002"}
        snap = await va.expect("snapshot", "records:yb", timeout=120)
        assert "Y001" in {r["key"] for r in snap["data"]["records"]}
        await b.run(vb, rows_for(["Y002"]))
        y2 = lambda m: keys_of(m) == ["Y002"]  # noqa: E731
        on_a = await va.expect("delta", "records:yb", timeout=120, where=y2)
        on_b = await vb.expect("delta", "records:yb", timeout=120, where=y2)
        assert on_a == on_b  # numbered by the stream again, as on B
        assert "flowdeck_fanout_degraded 0.0" in await asyncio.to_thread(metrics, a)
        assert "flowdeck_fanout_outages_total 1.0" in await asyncio.to_thread(metrics, a)
        await va.close()
        await vb.close()

    try:
        a.start()
        b.start()
        asyncio.run(main())
    finally:
        a.stop()
        b.stop()
        proxy.close()
    assert "Traceback" not in a.log.read_text() + b.log.read_text()
