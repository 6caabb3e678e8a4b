"""Event fan-out between nodes through real Redis streams, nodes sharing one PostgreSQL.

Each "node" here is a real engine + feed server in this process, with its own flows
(as two daemons with different config files): a viewer on one node sees the other's
flows, numbered the same on both, and resumes on a third. The degraded-mode test
talks to Redis through a TCP proxy it cuts (tests/support/proxy.py).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from flowdeck.pipeline.config import parse_config
from flowdeck.pipeline.engine.engine import Engine
from flowdeck.pipeline.serve.control import LocalControl
from flowdeck.pipeline.serve.fanout import Fanout
from flowdeck.pipeline.serve.feed import FeedServer
from flowdeck.pipeline.serve.protocol import envelope, envelope_raw
from flowdeck.storage.store import Store
from tests.support.cluster import DROP_FLOW, REDIS, redis_namespace
from tests.support.feed import Client, rows_for
from tests.support.proxy import Proxy


class Node:
    def __init__(self, tmp: Path, engine: Engine, store: Store, feed: FeedServer) -> None:
        self.tmp, self.engine, self.store, self.feed = tmp, engine, store, feed
        self.files = 0

    async def ingest(self, flow: str, rows: list[dict]) -> None:
        self.files += 1
        path = self.tmp / flow / f"{self.files:05d}.jsonl"
        await asyncio.to_thread(path.write_text, "\n".join(json.dumps(r) for r in rows))
        await self.engine.run_flow(flow, "manual")

    async def close(self) -> None:
        await self.feed.stop()
        await self.engine.stop()
        self.store.close()


async def start_node(tmp: Path, name: str, flows: list[str], db: str, prefix: str,
                     redis_url: str = REDIS) -> Node:
    d = tmp / name
    d.mkdir()
    text = "flows:\n" + "".join(DROP_FLOW.format(name=f, dir=d / f) for f in flows)
    for f in flows:
        (d / f).mkdir()
    config = parse_config(text, str(d / "flows.yaml"))
    store = Store(db)
    engine = Engine(config, store)
    fan = Fanout(redis_url, prefix, node=name, maxlen=1000, timeout=1.0, block_s=0.5,
                 retry_s=0.3)
    feed = FeedServer(LocalControl(engine, actor="tester"), port=0, fanout=fan)
    await feed.start()
    await engine.start(schedule=False)
    return Node(d, engine, store, feed)


@pytest.fixture
def prefix():
    """A feed key prefix of this test's own in Redis, its keys deleted afterwards."""
    for ns in redis_namespace(":feed:"):
        yield f"{ns}:feed:"


async def wait_for(cond, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def deltas(client: Client, channel: str, n: int, timeout: float = 60.0) -> list[dict]:
    return [await client.expect("delta", channel, timeout=timeout) for _ in range(n)]


def test_raw_envelope_is_the_same_bytes_as_envelope():
    data = {"flow": "w", "records": [{"key": "K", "v": 1.5, "s": "é"}], "n": None}
    from flowdeck.pipeline.serve.protocol import dumps

    for ts in (1795558994.1184, 0.0, 12.5):
        assert envelope_raw("delta", "records:w", 42, ts, dumps(data)) == envelope(
            "delta", "records:w", 42, ts, data)


def test_a_viewer_on_any_node_sees_every_flow_with_the_same_seqs(tmp_path, pg_url, prefix):
    async def main():
        a = await start_node(tmp_path, "a", ["xa"], pg_url, prefix)
        b = await start_node(tmp_path, "b", ["yb"], pg_url, prefix)
        c = None
        try:
            # A learns of B's flow from the stream registry.
            await wait_for(lambda: "records:yb" in a.feed.channels, what="yb on node a")
            va = await Client.open(a.feed.feed_url)
            vb = await Client.open(b.feed.feed_url)
            sub_a, _ = await va.subscribe("records:yb")
            sub_b, _ = await vb.subscribe("records:yb")
            assert sub_a["data"]["epoch"] == sub_b["data"]["epoch"]  # one deployment
            for i in range(3):
                await b.ingest("yb", rows_for([f"S{i:03d}", "KDEN"], t0_ms=1_795_000_000_000
                                              + i * 60_000))
            on_a = await deltas(va, "records:yb", 3)
            on_b = await deltas(vb, "records:yb", 3)
            seqs = [m["seq"] for m in on_a]
            assert seqs == list(range(seqs[0], seqs[0] + 3))  # in order, contiguous
            assert on_a == on_b  # the same event: the same seq and content on both nodes
            assert [sorted(r["key"] for r in m["data"]["records"]) for m in on_a] == [
                ["KDEN", "S000"], ["KDEN", "S001"], ["KDEN", "S002"]]
            # A's own flow reaches B's viewers too.
            _, snap = await vb.subscribe("records:xa")
            await a.ingest("xa", rows_for(["KXA1"]))
            m = await vb.expect("delta", "records:xa", timeout=60)
            assert [r["key"] for r in m["data"]["records"]] == ["KXA1"]

            # The viewer on A goes away after the first delta; two more runs happen; it
            # resumes on a third node started meanwhile: the rest, once each.
            last = on_a[0]["seq"]
            epoch = sub_a["data"]["epoch"]
            await va.close()
            for i in range(3, 5):
                await b.ingest("yb", rows_for([f"S{i:03d}"], t0_ms=1_795_000_000_000
                                              + i * 60_000))
            c = await start_node(tmp_path, "c", ["zc"], pg_url, prefix)
            vc = await Client.open(c.feed.feed_url)
            await vc.send(type="subscribe", channel="records:yb", resume_from=last, epoch=epoch)
            sub_c = await vc.expect("subscribed", "records:yb", timeout=30)
            assert sub_c["data"]["resumed"] is True
            replay = await deltas(vc, "records:yb", 4)
            assert [m["seq"] for m in replay] == list(range(last + 1, last + 5))
            assert replay[:2] == on_b[1:]  # the same bytes B's viewer got
            assert [r["key"] for r in replay[3]["data"]["records"]] == ["S004"]
            with pytest.raises(TimeoutError):
                await vc.expect("delta", "records:yb", timeout=1.5)  # nothing twice
            # A fresh subscription on C to B's flow gets the store's latest values.
            _, snap = await vc.subscribe("records:yb")
            assert {r["key"] for r in snap["data"]["records"]} >= {"KDEN", "S000", "S004"}
            await vb.close()
            await vc.close()
        finally:
            for n in (a, b, c):
                if n is not None:
                    await n.close()

    asyncio.run(main())


def test_redis_cut_degrades_to_own_flows_and_recovers(tmp_path, pg_url, prefix):
    async def main():
        proxy = Proxy(("127.0.0.1", 6379))
        a = await start_node(tmp_path, "a", ["xa"], pg_url, prefix, redis_url=proxy.url)
        b = await start_node(tmp_path, "b", ["yb"], pg_url, prefix)
        try:
            await wait_for(lambda: "records:yb" in a.feed.channels, what="yb on node a")
            va = await Client.open(a.feed.feed_url)
            vb = await Client.open(b.feed.feed_url)
            sub, _ = await va.subscribe("records:xa")
            cluster_epoch = sub["data"]["epoch"]
            await va.subscribe("records:yb")
            await vb.subscribe("records:xa")
            await a.ingest("xa", rows_for(["K001"]))
            first = await va.expect("delta", "records:xa", timeout=60)
            await vb.expect("delta", "records:xa", timeout=60)

            proxy.cut()
            gap = await va.expect("gap", "records:xa", timeout=60)
            assert gap["data"]["fanout"] == "degraded"
            assert gap["data"]["epoch"] != cluster_epoch
            assert "fan-out unavailable" in gap["data"]["reason"]
            await va.expect("snapshot", "records:xa", timeout=60)
            assert a.feed.fanout.status()["degraded"] is True
            # A keeps running its own flow, and its viewers see it (local numbering).
            await a.ingest("xa", rows_for(["K002"]))
            # (the snapshot may be followed by K001's delta again: deltas are idempotent)
            local = await va.expect("delta", "records:xa", timeout=60,
                                    where=lambda m: m["data"]["records"][0]["key"] == "K002")
            assert local["seq"] == first["seq"] + 1
            # B's viewer does not get A's run (A could not publish it).
            with pytest.raises(TimeoutError):
                await vb.expect("delta", "records:xa", timeout=1.5)
            # /metrics says so.
            body = (await asyncio.to_thread(_get, a.feed.url + "/metrics")).decode()
            assert "flowdeck_fanout_degraded 1.0" in body

            proxy.restore()
            back = await va.expect("gap", "records:xa", timeout=60)
            assert back["data"]["fanout"] == "up" and back["data"]["epoch"] == cluster_epoch
            snap = await va.expect("snapshot", "records:xa", timeout=60)
            assert {r["key"] for r in snap["data"]["records"]} >= {"K001", "K002"}
            # B's viewer of A's flow is told it missed events, and gets a snapshot.
            missed = await vb.expect("gap", "records:xa", timeout=60)
            assert "cut off" in missed["data"]["reason"]
            snap_b = await vb.expect("snapshot", "records:xa", timeout=60)
            assert {r["key"] for r in snap_b["data"]["records"]} >= {"K001", "K002"}
            # Fan-out works both ways again, numbered by the streams.
            await b.ingest("yb", rows_for(["KY01"]))
            m = await va.expect("delta", "records:yb", timeout=60,
                                where=lambda m: m["data"]["records"][0]["key"] == "KY01")
            assert m["seq"] >= 1
            await a.ingest("xa", rows_for(["K003"]))
            k3 = lambda m: m["data"]["records"][0]["key"] == "K003"  # noqa: E731
            ma = await va.expect("delta", "records:xa", timeout=60, where=k3)
            mb = await vb.expect("delta", "records:xa", timeout=60, where=k3)
            assert ma == mb
            assert not a.feed.fanout.status()["degraded"]
            body = (await asyncio.to_thread(_get, a.feed.url + "/metrics")).decode()
            assert "flowdeck_fanout_degraded 0.0" in body
            assert "flowdeck_fanout_outages_total 1.0" in body
            await va.close()
            await vb.close()
        finally:
            await a.close()
            await b.close()
            proxy.close()

    asyncio.run(main())


def _get(url: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read()


def test_lost_keys_are_an_outage_and_the_nodes_renumber_together(tmp_path, pg_url, prefix):
    """Redis restarted empty (here: our keys deleted): both nodes notice, re-read the
    streams, resync their viewers, and number new events alike again."""
    async def main():
        a = await start_node(tmp_path, "a", ["xa"], pg_url, prefix)
        b = await start_node(tmp_path, "b", ["yb"], pg_url, prefix)
        try:
            await wait_for(lambda: "records:yb" in a.feed.channels, what="yb on node a")
            va = await Client.open(a.feed.feed_url)
            vb = await Client.open(b.feed.feed_url)
            sub, _ = await va.subscribe("records:yb")
            await vb.subscribe("records:yb")
            await b.ingest("yb", rows_for(["K001"]))
            await va.expect("delta", "records:yb", timeout=60)
            await vb.expect("delta", "records:yb", timeout=60)
            published = a.feed.fanout.status()["published"] + b.feed.fanout.status()["published"]
            assert published > 0

            assert await a.feed.fanout.delete_keys() > 0
            for v in (va, vb):
                back = await v.expect("gap", "records:yb", timeout=60,
                                      where=lambda m: m["data"].get("fanout") == "up")
                assert back["data"]["epoch"] != sub["data"]["epoch"]  # a new deployment epoch
                await v.expect("snapshot", "records:yb", timeout=60)
            await wait_for(lambda: a.feed.fanout.up and b.feed.fanout.up, what="both up")
            await b.ingest("yb", rows_for(["K002"]))
            k2 = lambda m: m["data"]["records"][0]["key"] == "K002"  # noqa: E731
            ma = await va.expect("delta", "records:yb", timeout=60, where=k2)
            mb = await vb.expect("delta", "records:yb", timeout=60, where=k2)
            assert ma == mb
            assert a.feed.fanout.epoch == b.feed.fanout.epoch
            await va.close()
            await vb.close()
        finally:
            await a.close()
            await b.close()

    asyncio.run(main())


def test_a_stream_keeps_about_the_replay_backlog_in_bytes():
    f = Fanout(REDIS, "unused:", node="n", maxlen=1000, max_bytes=1_000_000)
    assert f.stream_len("events", 200) == 1000  # small entries: the count bound
    for _ in range(50):
        n = f.stream_len("records:big", 100_000)
    assert n == 16  # large ones: max_bytes / size (10), but never under 16
    assert f.stream_len("records:mid", 10_000) == 100
    asyncio.run(f.stop())


def test_entries_trimmed_before_a_node_read_them_resync_its_viewers(tmp_path, pg_url, prefix):
    """A node that fell behind a stream (its entries trimmed before it read them) does not
    hand its viewers a silent jump in seq: they get a gap and a snapshot."""
    from flowdeck.pipeline.serve.fanout import Entry

    async def main():
        a = await start_node(tmp_path, "a", ["xa"], pg_url, prefix)
        try:
            va = await Client.open(a.feed.feed_url)
            await va.subscribe("records:xa")
            await a.ingest("xa", rows_for(["K001"]))
            first = await va.expect("delta", "records:xa", timeout=60)
            # The next entry the node reads is three past the last it had (the two
            # between were trimmed from the stream before it read them).
            body = b'{"flow":"xa","count":1,"records":[{"key":"K009"}]}'
            a.feed._on_entries([Entry("records:xa", first["seq"] + 3, time.time(), body,
                                      ("records",), "x")])
            gap = await va.expect("gap", "records:xa", timeout=60)
            assert "fell behind the event stream: 2 deltas lost" in gap["data"]["reason"]
            snap = await va.expect("snapshot", "records:xa", timeout=60)
            assert snap["seq"] >= first["seq"] + 3
            await va.close()
        finally:
            await a.close()

    asyncio.run(main())
