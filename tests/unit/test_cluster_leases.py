"""A node's lease logic (pipeline/engine/cluster.py) with an injected monotonic clock and
an in-memory lease table standing in for PostgreSQL's (the real one is exercised in
tests/integration/test_leases.py and tests/e2e/test_cluster.py)."""

from __future__ import annotations

import asyncio

import pytest

from flowdeck.pipeline.engine.cluster import Cluster


class Table:
    """flow_leases and cluster_nodes of one fake database, with its own clock."""

    def __init__(self) -> None:
        self.now = 0
        self.leases: dict[str, dict] = {}
        self.nodes: dict[str, int] = {}
        self.down = False


class FakeLeases:
    def __init__(self, table: Table, node: str, ttl_ms: int = 3000) -> None:
        self.t, self.node, self.ttl_ms = table, node, ttl_ms

    def _up(self) -> None:
        if self.t.down:
            raise ConnectionError("database unreachable")

    def join(self, info=None) -> None:
        self._up()
        self.t.nodes[self.node] = self.t.now

    def renew(self, held):
        self._up()
        self.t.nodes[self.node] = self.t.now
        kept = {}
        for f, tok in held.items():
            lease = self.t.leases.get(f)
            if lease and lease["node"] == self.node and lease["token"] == tok \
                    and lease["expires"] > self.t.now:
                lease["expires"] = self.t.now + self.ttl_ms
                kept[f] = tok
        return kept

    def acquire(self, flow):
        self._up()
        lease = self.t.leases.get(flow)
        if lease and lease["node"] not in (None, self.node) and lease["expires"] > self.t.now:
            return None
        token = (lease["token"] if lease else 0) + 1
        self.t.leases[flow] = {"node": self.node, "token": token,
                               "expires": self.t.now + self.ttl_ms}
        return token

    def release(self, held):
        for f in held:
            self.t.leases[f]["node"] = None
            self.t.leases[f]["expires"] = self.t.now
        return list(held)

    def leave(self, held) -> None:
        self.release(held)
        self.t.nodes.pop(self.node, None)

    def view(self):
        self._up()
        now = self.t.now
        return {"now_ms": now,
                "nodes": [{"node": n, "live": hb > now - self.ttl_ms, "state": "up",
                           "heartbeat_age_ms": now - hb, "flows": []}
                          for n, hb in self.t.nodes.items()],
                "leases": [{"flow": f, "node": v["node"], "token": v["token"],
                            "held": v["node"] is not None and v["expires"] > now,
                            "age_ms": 0, "expires_in_ms": v["expires"] - now, "target": None}
                           for f, v in self.t.leases.items()]}

    def close(self) -> None:
        pass


class FakeRt:
    def __init__(self) -> None:
        self.lock = asyncio.Lock()


class FakeEngine:
    """What Cluster asks of the engine: its flows, take_over, emit."""

    def __init__(self, flows) -> None:
        self.flows = {f: FakeRt() for f in flows}
        self.taken: list[str] = []
        self.events: list[tuple] = []

    async def take_over(self, flow: str) -> int:
        self.taken.append(flow)
        return 5_000

    def emit(self, type_, flow, **data) -> None:
        self.events.append((type_, flow, data["event"]))


class Mono:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


FLOWS = [f"f{i}" for i in range(7)]


def node(table: Table, name: str, mono: Mono, engine: FakeEngine | None = None) -> Cluster:
    return Cluster(engine or FakeEngine(FLOWS), FakeLeases(table, name), ttl=3.0, renew=1.0,
                   margin=0.6, monotonic=mono)


def run(coro):
    return asyncio.run(coro)


def test_fair_share_then_takeover_of_a_dead_node():
    table, mono = Table(), Mono()
    a, b, c = (node(table, n, mono) for n in "abc")

    async def go():
        for n in (a, b, c):
            n.leases.join()
        for _ in range(3):
            for n in (a, b, c):
                await n.tick()
        owned = [set(n.owned) for n in (a, b, c)]
        assert set().union(*owned) == set(FLOWS)
        assert sum(len(o) for o in owned) == len(FLOWS)  # each flow exactly once
        assert all(len(o) <= 3 for o in owned)  # ceil(7 / 3)
        # c dies (no more ticks); after its TTL the others take its flows over
        dead = set(c.owned)
        table.now += 3500
        mono.t += 3.5
        for _ in range(2):
            for n in (a, b):
                await n.tick()
        assert set(a.owned) | set(b.owned) == set(FLOWS)
        assert not set(a.owned) & set(b.owned)
        assert all(table.leases[f]["token"] == 2 for f in dead)  # a new token each
        await asyncio.sleep(0)  # the take-overs run as tasks of their own
        assert set(a.engine.taken + b.engine.taken) >= dead
        assert all(a.may_run(f, 5_000) and not a.may_run(f, 4_999)
                   for f in a.owned if f in dead)  # the slot already run is not run again

    run(go())


def test_a_joining_node_gets_flows_handed_over_and_stop_releases_at_once():
    table, mono = Table(), Mono()
    a = node(table, "a", mono)
    b = node(table, "b", mono)

    async def go():
        a.leases.join()
        await a.tick()
        assert set(a.owned) == set(FLOWS)
        b.leases.join()
        await a.tick()  # a sees b live: above its share (4), releases 3
        assert len(a.owned) == 4
        await b.tick()
        assert len(b.owned) == 3 and not set(a.owned) & set(b.owned)
        a.engine.flows[sorted(a.owned)[0]].lock = _locked()
        await b.stop()  # graceful: released, a takes them at its next tick, no TTL wait
        await a.tick()
        assert set(a.owned) == set(FLOWS)

    run(go())


def _locked() -> asyncio.Lock:
    lock = asyncio.Lock()
    lock._locked = True  # a run in progress
    return lock


def test_a_node_that_cannot_renew_stops_before_its_lease_could_expire():
    table, mono = Table(), Mono()
    a = node(table, "a", mono)

    async def go():
        a.leases.join()
        await a.tick()
        assert a.holds("f0")
        table.down = True
        mono.t += 1.0
        await a.tick()  # one failed renewal: still within its deadline
        assert a.holds("f0") and a.owned
        mono.t += 1.5  # 2.5 s after the last good renewal: past ttl - margin (2.4 s)
        assert not a.holds("f0")  # no new run starts, whatever the ticks do
        await a.tick()
        assert a.owned == {}
        assert ("cluster", "f0", "lost") in a.engine.events
        table.now += 1000  # 2.5 s by the database's clock: the lease has not expired yet
        assert table.leases["f0"]["expires"] > table.now
        table.down = False
        table.now += 1000  # expired now; the database is back
        mono.t += 1.0
        await a.tick()
        assert a.holds("f0") and table.leases["f0"]["token"] == 2  # re-acquired, new token

    run(go())


@pytest.mark.parametrize("renew,margin", [(2.0, None), (1.0, 2.5)])
def test_cluster_config_is_checked(tmp_path, renew, margin):
    from flowdeck.pipeline.config import ConfigError, parse_config

    text = f"""flows:
  f:
    key: id
    schedule: {{every: 5s}}
    sources:
      - {{name: a, kind: file, path: x.json}}
    fields: {{id: {{type: str}}}}
cluster:
  lease_ttl: 3s
  renew: {renew}s
""" + (f"  margin: {margin}s\n" if margin else "")
    with pytest.raises(ConfigError) as e:
        parse_config(text, "c.yaml", tmp_path)
    assert "c.yaml:9: cluster:" in str(e.value)
