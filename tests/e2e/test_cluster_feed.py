"""Three `flowdeck daemon` nodes with the same config on one PostgreSQL database and one
Redis: the leases decide which node runs each flow, and the fan-out lets a viewer on any
node follow any flow. A viewer on node A receives the records of a flow node B owns, in
order, with contiguous seqs, numbered as B's own viewers see them; it disconnects and
resumes on node C after its last seq with no delta lost and none twice; `flowdeck watch`
on the node that owns no flow prints another node's records.

Generous waits (the machine is shared and slow), no timed assertion."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.e2e.test_cluster import (
    FLOWDECK,
    cluster_db,  # noqa: F401  (fixture)
    db_url_for,
    owners,
    simulator,  # noqa: F401  (fixture)
    wait,
    write_config,
)
from tests.support.cluster import REDIS, redis_namespace
from tests.support.crashes import free_ports, http_json
from tests.support.feed import Client

pytestmark = pytest.mark.slow

NODES = ("a", "b", "c")


@pytest.fixture
def namespace():
    """A Redis key prefix of this test's own, every key under it deleted afterwards."""
    yield from redis_namespace()


class Node:
    """`flowdeck daemon --db … --redis … --node NAME` on the shared config."""

    def __init__(self, name: str, config: Path, db_url: str, sim: str, log: Path,
                 port: int) -> None:
        self.name, self.config, self.db_url, self.simulator, self.log = (
            name, config, db_url, sim, log)
        self.port = port
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws = f"ws://127.0.0.1:{self.port}/feed"
        env = {k: v for k, v in os.environ.items() if k not in ("FLOWDECK_TOKEN",
                                                               "FLOWDECK_CRASH_AT")}
        env["PYTHONUNBUFFERED"] = "1"
        self._err = open(log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            FLOWDECK + ["daemon", "--config", str(config), "--db", db_url, "--redis", REDIS,
                        "--node", name, "--simulator", sim,
                        "--bind", f"127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=self._err, env=env)

    def up(self) -> bool:
        assert self.proc.poll() is None, f"node {self.name} exited: {self.log.read_text()[-3000:]}"
        try:
            return http_json(self.url + "/healthz", 2.0)[0] == 200
        except OSError:
            return False

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(60)
        finally:
            self._err.close()


def settled(engine, n_flows: int):
    """Every flow held by one live node, no node above its fair share (ceil(2/3) = 1)."""
    own = owners(engine)
    if len(own) != n_flows:
        return None
    per = [sum(1 for o in own.values() if o == n) for n in NODES]
    share = -(-n_flows // len(NODES))
    return own if max(per) <= share else None


def cluster_status(pg_url: str) -> dict:
    res = subprocess.run(FLOWDECK + ["status", "--json", "--db", pg_url], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode in (0, 1, 2), res.stderr  # the worst flow state; JSON either way
    return json.loads(res.stdout)["cluster"]


def keys_ts(msg: dict) -> list[tuple[str, int]]:
    return [(r["key"], r["ts_ms"]) for r in msg["data"]["records"]]


def published_summaries(ns: str, flow: str) -> list[tuple]:
    """(seq, publishing node, runs) of the flow's summaries in the `flows` stream."""
    import redis

    r = redis.Redis.from_url(REDIS)
    try:
        out = []
        for entry_id, f in r.xrange(f"{ns}:feed:ch:flows"):
            d = json.loads(f.get(b"d") or b"{}")
            if d.get("flow") == flow:
                out.append((int(entry_id.split(b"-")[1]), f.get(b"n", b"").decode(),
                            d["summary"].get("runs")))
        return out
    finally:
        r.close()


async def deltas(client: Client, channel: str, n: int) -> list[dict]:
    return [await client.expect("delta", channel, timeout=180) for _ in range(n)]


def test_viewer_on_one_node_follows_another_nodes_flow_and_resumes_on_a_third(
        cluster_db, simulator, tmp_path, namespace):  # noqa: F811
    pg_url, engine = cluster_db
    config = write_config(tmp_path, copies=1)  # weather0 and fx0, every 3 s
    cfg = yaml.safe_load(config.read_text())
    cfg["cache"] = {"namespace": namespace}
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    flows = sorted(cfg["flows"])
    nodes = {n: Node(n, config, db_url_for(pg_url, n), simulator, tmp_path / f"{n}.log", port)
             for n, port in zip(NODES, free_ports(len(NODES)), strict=True)}
    try:
        wait(lambda: all(n.up() for n in nodes.values()), "three nodes serving", 180)
        own = wait(lambda: settled(engine, len(flows)), "two flows over three nodes", 180)
        # Who runs what, as the operator sees it: `flowdeck status --json`.
        # (Waited for: on a loaded machine a node's heartbeat can lag past its TTL for a
        # moment, and status rightly shows it not live until the next one; a node that
        # exited fails here with its log.)
        def all_live() -> dict[str, list[str]] | None:
            for node in nodes.values():
                node.up()
            live = {n["node"]: sorted(n["flows"]) for n in cluster_status(pg_url)["nodes"]
                    if n["live"]}
            return live if len(live) == 3 else None

        live = wait(all_live, "status lists the three nodes live", 60)
        assert sorted(live) == ["a", "b", "c"]
        assert {f: n for n, fs in live.items() for f in fs} == own
        flow = flows[0]
        b = own[flow]  # the owner of the followed flow
        idle = next(n for n in NODES if not live[n])  # two flows, three nodes: one owns none
        a = idle if idle != b else next(n for n in NODES if n != b)
        c = next(n for n in NODES if n not in (a, b))
        channel = f"records:{flow}"

        async def follow() -> tuple[list[dict], list[dict], list[dict]]:
            # B's own viewer: the reference. It is read only now and then, while the others
            # are followed: with no bound on its queue its library goes on reading the
            # socket meanwhile, so keepalive pongs are never stuck behind unread deltas
            # (with websockets' default queue of 16 frames a faster flow filled it, and the
            # connection closed with "keepalive ping timeout").
            ref = await Client.open(nodes[b].ws, max_queue=None)
            await ref.send(type="subscribe", channel=channel)
            await ref.expect("subscribed", channel, timeout=180)
            await ref.expect("snapshot", channel, timeout=180)

            va = await Client.open(nodes[a].ws)
            assert va.seen[0]["data"]["fanout"]["backend"] == "redis-streams"
            await va.send(type="subscribe", channel=channel)
            sub = await va.expect("subscribed", channel, timeout=180)
            snap = await va.expect("snapshot", channel, timeout=180)
            await va.send(type="subscribe", channel="flows")  # summaries, read on the way
            on_a = await deltas(va, channel, 4)
            fsnap = await va.expect("snapshot", "flows", timeout=180)
            await va.close()  # the viewer leaves node A ...
            last = on_a[-1]["seq"]
            # ... while B's flow goes on running (at least two more deltas meanwhile)
            ref_all = await deltas(ref, channel, 1)
            while ref_all[-1]["seq"] < last + 2:
                ref_all += await deltas(ref, channel, 1)

            vc = await Client.open(nodes[c].ws)  # ... and comes back on node C
            await vc.send(type="subscribe", channel=channel, resume_from=last,
                          epoch=sub["data"]["epoch"])
            resumed = await vc.expect("subscribed", channel, timeout=180)
            await vc.send(type="subscribe", channel="flows")
            assert resumed["data"]["resumed"] is True, resumed
            assert resumed["data"]["epoch"] == sub["data"]["epoch"]  # one deployment epoch
            on_c = await deltas(vc, channel, ref_all[-1]["seq"] - last + 1)
            ref_all += await deltas(ref, channel, 1)
            assert not [m for m in vc.backlog + va.backlog
                        if m["type"] in ("gap", "snapshot") and m["channel"] == channel]
            # The flow's summary on A and C is its owner's (it has run), not the picture of
            # a flow those nodes hold no lease on (never run there).
            for n in (a, c):
                v = await Client.open(nodes[n].ws)
                rid = await v.send(type="query", name="snapshot", params={"latest": [flow]})
                res = await v.expect("result", timeout=180,
                                     where=lambda m, rid=rid: m["data"]["id"] == rid)
                assert res["data"]["result"]["flows"][flow]["last_run"] is not None, n
                await v.send(type="subscribe", channel=f"flow:{flow}")
                fs = await v.expect("snapshot", f"flow:{flow}", timeout=180)
                assert fs["data"]["summary"]["last_run"] is not None, n
                await v.close()
            summaries = [m for m in va.seen + vc.seen + ref.seen
                         if m["type"] == "delta" and m["channel"] == "flows"
                         and m["data"]["flow"] == flow]
            runs = [m["data"]["summary"]["runs"] for m in summaries]
            assert runs and runs == sorted(runs), runs  # the owner's count, never reset
            since = [(n, r) for seq, n, r in published_summaries(namespace, flow)
                     if seq > fsnap["seq"]]
            assert since and {n for n, _ in since} == {b}, since  # only the owner publishes
            await vc.close()
            await ref.close()
            return [snap, *on_a], on_c, ref_all

        a_msgs, on_c, ref_all = asyncio.run(follow())
        snap, on_a = a_msgs[0], a_msgs[1:]
        seqs = [m["seq"] for m in on_a]
        assert seqs == list(range(snap["seq"] + 1, snap["seq"] + 5))  # contiguous, in order
        assert all(m["data"]["records"] for m in on_a)  # the owner's records, not empty
        seqs_c = [m["seq"] for m in on_c]
        assert seqs_c == list(range(seqs[-1] + 1, seqs[-1] + 1 + len(on_c)))  # no loss
        # Each delta as the owner's own viewer got it (same seq, same bytes).
        by_seq = {m["seq"]: m for m in ref_all}
        for m in on_a + on_c:
            if m["seq"] in by_seq:
                assert m == by_seq[m["seq"]]
        assert {m["seq"] for m in on_c} <= set(by_seq)
        # No record twice across both nodes, and each key's records in time order.
        got = [kt for m in on_a + on_c for kt in keys_ts(m)]
        assert len(got) == len(set(got))
        per_key: dict[str, list[int]] = {}
        for k, ts in got:
            per_key.setdefault(k, []).append(ts)
        assert all(ts == sorted(ts) for ts in per_key.values()), per_key
        assert owners(engine)[flow] == b  # nothing moved meanwhile: B ran it throughout

        # `flowdeck watch` on the node owning no flow prints the other nodes' records.
        for f in flows:
            res = subprocess.run(
                FLOWDECK + ["watch", nodes[idle].ws, "--channel", f"records:{f}",
                            "--count", "3"],
                capture_output=True, text=True, timeout=300)
            assert res.returncode == 0, res.stderr
            lines = [json.loads(line) for line in res.stdout.splitlines()]
            shown = [m for m in lines if m["type"] in ("snapshot", "delta")]
            assert [m["type"] for m in shown] == ["snapshot", "delta", "delta"]
            assert shown[2]["seq"] == shown[1]["seq"] + 1
            assert all(m["data"]["flow"] == f and m["data"]["records"] for m in shown[1:])
            assert owners(engine)[f] != idle
        ready = http_json(nodes[idle].url + "/readyz", 10.0)[1]
        assert ready["cluster"]["owned"] == []
    finally:
        codes = [n.stop() for n in nodes.values()]
    assert codes == [0, 0, 0]
    for n in NODES:
        assert "Traceback" not in (tmp_path / f"{n}.log").read_text()
