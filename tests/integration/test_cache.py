"""The layered caches: L1 expiry and LRU, single-flight, invalidation cascade, L4 304s,
operator purge / pre-warm, and L2 on the real Redis service (shared between engines,
surviving a Redis that dies and comes back)."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import time
import uuid

import pytest
from support.feed import Client, aget, free_port, rows_for, start_rig, write_config
from support.services import REQUIRE_SERVICES, need_service

from flowdeck.pipeline.config import ConfigError, parse_config
from flowdeck.pipeline.core.clock import ManualClock
from flowdeck.pipeline.engine.engine import Engine
from flowdeck.pipeline.serve.control import LocalControl
from flowdeck.storage.caches import Caches, CacheSettings
from flowdeck.storage.store import Store


class Loads:
    """A loader that counts its calls and can be held back until released."""

    def __init__(self, value="v") -> None:
        self.calls = 0
        self.value = value
        self.gate: asyncio.Event | None = None

    async def __call__(self):
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        return f"{self.value}{self.calls}"


def caches(clock: ManualClock, **kw) -> Caches:
    return Caches(CacheSettings(**{"l1_ttl": 30, "l1_stale": 5, "l1_size": 100, **kw}),
                  timer=clock.now)


# ---------------------------------------------------------------- L1 alone


async def test_l1_fresh_then_stale_while_revalidate_then_expired():
    clock = ManualClock()
    c = caches(clock)
    load = Loads()
    assert await c.get("f", "latest", "K1", "", load) == "v1"
    assert await c.get("f", "latest", "K1", "", load) == "v1"
    assert load.calls == 1
    assert (c.stats["l1"].hits, c.stats["l1"].misses) == (1, 1)

    clock.advance(31)  # past the TTL, inside the stale window: old value now, one refresh
    assert await c.get("f", "latest", "K1", "", load) == "v1"
    await asyncio.sleep(0)  # let the background refresh run
    await asyncio.sleep(0)
    assert load.calls == 2
    assert await c.get("f", "latest", "K1", "", load) == "v2"

    clock.advance(36)  # past TTL + stale: gone, counted as evicted, loaded afresh
    assert await c.get("f", "latest", "K1", "", load) == "v3"
    assert c.stats["l1"].evictions >= 1


async def test_l1_is_lru_bounded_per_flow_and_counts_evictions():
    clock = ManualClock()
    c = caches(clock, l1_size=2)
    for key in ("a", "b", "c"):
        await c.get("f", "latest", key, "", Loads(key))
    await c.get("g", "latest", "a", "", Loads("g"))  # another flow has its own room
    assert c.stats["l1"].evictions == 1
    assert c.peek("f", "latest", "a") is None  # the least recently used went
    assert c.peek("f", "latest", "c") == "c1"
    assert c.peek("g", "latest", "a") == "g1"
    assert c.layer_stats()["l1"]["size"] == 3


async def test_an_l1_hit_makes_its_entry_the_most_recently_used():
    clock = ManualClock()
    c = caches(clock, l1_size=2)
    for key in ("a", "b"):
        await c.get("f", "latest", key, "", Loads(key))
    assert await c.get("f", "latest", "a", "", Loads("again")) == "a1"  # a hit, no load
    await c.get("f", "latest", "c", "", Loads("c"))
    assert c.peek("f", "latest", "b") is None  # b was the least recently used, not a
    assert c.peek("f", "latest", "a") == "a1"
    assert c.peek("f", "latest", "c") == "c1"
    assert (c.stats["l1"].evictions, c.stats["l1"].hits) == (1, 3)


async def test_hundred_concurrent_misses_cause_one_load():
    c = caches(ManualClock())
    load = Loads()
    load.gate = asyncio.Event()
    readers = [asyncio.create_task(c.get("f", "latest", None, "", load)) for _ in range(100)]
    await asyncio.sleep(0.01)
    load.gate.set()
    assert set(await asyncio.gather(*readers)) == {"v1"}
    assert load.calls == 1
    assert c.stats["l1"].misses == 100


async def test_a_load_that_races_an_invalidation_is_not_kept():
    c = caches(ManualClock())
    load = Loads()
    load.gate = asyncio.Event()
    reader = asyncio.create_task(c.get("f", "latest", "K", "", load))
    await asyncio.sleep(0.01)
    await c.invalidate("f", ["K"])  # new data committed while the old was being read
    load.gate.set()
    assert await reader == "v1"  # that reader gets what it asked for...
    load.gate = None
    assert await c.get("f", "latest", "K", "", load) == "v2"  # ...but it was not cached


async def test_invalidating_a_key_drops_it_and_the_flow_wide_entries_only():
    c = caches(ManualClock())
    await c.get("f", "latest", None, "", Loads("all"))
    await c.get("f", "latest", "A", "", Loads("a"))
    await c.get("f", "latest", "B", "", Loads("b"))
    await c.get("g", "latest", None, "", Loads("other"))
    counts = await c.invalidate("f", ["A"])
    assert counts["l1"] == 2
    assert c.peek("f", "latest", None) is None
    assert c.peek("f", "latest", "A") is None
    assert c.peek("f", "latest", "B") == "b1"
    assert c.peek("g", "latest", None) == "other1"


async def test_after_a_run_only_what_readers_used_is_loaded_again():
    c = caches(ManualClock(), prewarm_keys=1)
    loads = {name: Loads(name) for name in ("all", "a", "b", "c")}
    for _ in range(3):
        await c.get("f", "latest", "A", "", loads["a"])
    await c.get("f", "latest", "B", "", loads["b"])
    await c.get("f", "latest", None, "", loads["all"])
    await c.invalidate("f", ["A", "B"])
    assert await c.rewarm("f") == 2  # the flow-wide entry and the hottest key (1 allowed)
    assert c.peek("f", "latest", None) == "all2"
    assert c.peek("f", "latest", "A") == "a2"
    assert c.peek("f", "latest", "B") is None
    await c.invalidate("f", ["A"])
    assert await c.rewarm("f") == 0  # nobody read anything since: nothing reloaded
    assert loads["a"].calls == 2


# ---------------------------------------------------------------- through the engine


async def test_new_value_invalidates_every_layer_and_readers_see_it(tmp_path):
    rig = await start_rig(tmp_path)
    try:
        control = LocalControl(rig.engine, actor="tester")
        caches = rig.engine.caches
        t0 = int(time.time() * 1000) // 60_000 * 60_000
        await rig.ingest("bench", [{"s": "AAAA", "t": t0 - 60_000, "temp": 10.0, "p": 1000}])
        first = await control.query("latest", flow="bench", key="AAAA")
        assert first[0]["data"]["temperature"] == 10.0
        again = await control.query("latest", flow="bench", key="AAAA")
        assert again == first
        l1 = caches.stats["l1"]
        hits, invalidated = l1.hits, l1.invalidations

        await rig.ingest("bench", [{"s": "AAAA", "t": t0, "temp": 12.5, "p": 1001}])
        assert l1.invalidations > invalidated
        assert caches.stats["l3"].invalidations >= 2  # the `latest` row, rewritten twice
        now = await control.query("latest", flow="bench", key="AAAA")
        assert now[0]["data"]["temperature"] == 12.5
        # Pre-warm after the run loaded the hot key again: this read was a hit.
        assert l1.hits > hits

        point = await caches.sample()  # what the engine does every stats interval
        assert point["requests"]["l1"] >= 3 and 0 < point["rates"]["l1"] < 1
        snap = await control.snapshot()
        assert snap["caches"]["history"][-1] == point
        layers = snap["caches"]["layers"]
        assert set(layers) == {"l1", "l2", "l3", "l4"}
        assert layers["l1"]["enabled"] and not layers["l2"]["enabled"]
        assert layers["l3"]["size"] == 1
        assert {"flow": "bench", "key": "AAAA"}.items() <= snap["caches"]["hot_keys"][0].items()
    finally:
        await rig.close()


async def test_http_latest_200_then_304_then_a_new_etag_after_a_new_value(tmp_path):
    rig = await start_rig(tmp_path, extra="cache: {http: {latest: {max_age: 3s, "
                                          "stale_while_revalidate: 20s}}}")
    try:
        t0 = int(time.time() * 1000) // 60_000 * 60_000
        await rig.ingest("bench", rows_for(["AAAA", "BBBB"], t0_ms=t0 - 60_000))
        url = rig.http_url + "/api/flows/bench/latest"
        status, headers, body = await aget(url)
        assert status == 200
        etag = headers["ETag"]
        assert headers["Cache-Control"] == "public, max-age=3, stale-while-revalidate=20"
        status, headers, body304 = await aget(url, {"If-None-Match": etag})
        assert (status, headers["ETag"], body304) == (304, etag, b"")

        await rig.ingest("bench", [{"s": "AAAA", "t": t0, "temp": 30.0, "p": 1000}])
        status, headers, body2 = await aget(url, {"If-None-Match": etag})
        assert status == 200
        assert headers["ETag"] != etag
        assert b"30.0" in body2 and body2 != body

        l4 = rig.engine.caches.stats["l4"]
        assert (l4.hits, l4.misses) == (1, 2)
        assert l4.invalidations >= 1  # the cached body of the first answer was dropped

        status, _, metrics = await aget(rig.http_url + "/metrics")
        text = metrics.decode()
        assert 'flowdeck_cache_requests_total{layer="l4",result="hit"} 1.0' in text
        assert 'flowdeck_cache_invalidations_total{layer="l1"}' in text
    finally:
        await rig.close()


async def test_the_caches_channel_sends_stats_then_invalidations(tmp_path):
    rig = await start_rig(tmp_path, extra="cache: {stats_interval: 100ms}")
    try:
        viewer = await Client.open(rig.ws_url)
        _, snap = await viewer.subscribe("caches")
        assert set(snap["data"]["layers"]) == {"l1", "l2", "l3", "l4"}
        assert snap["data"]["layers"]["l2"]["enabled"] is False
        await rig.ingest("bench", rows_for(["AAAA"]))
        inv = await viewer.expect("delta", "caches",
                                  where=lambda m: m["data"]["type"] == "cache_invalidate")
        assert inv["data"]["data"]["keys"] == ["AAAA"]
        assert inv["data"]["data"]["layers"]["l3"] == 1
        stats = await viewer.expect("delta", "caches",
                                    where=lambda m: m["data"]["type"] == "cache_stats")
        point = stats["data"]["data"]["point"]
        assert set(point["rates"]) == {"l1", "l2", "l3", "l4"}
        await viewer.close()
    finally:
        await rig.close()


async def test_operator_purges_and_prewarms_are_recorded(tmp_path):
    rig = await start_rig(tmp_path)
    try:
        control = LocalControl(rig.engine, actor="tester")
        t0 = int(time.time() * 1000) // 60_000 * 60_000
        await rig.ingest("bench", rows_for(["AAAA", "BBBB"], t0_ms=t0))
        for key in ("AAAA", "AAAA", "BBBB"):
            await control.query("latest", flow="bench", key=key)
        caches = rig.engine.caches

        res = await control.act("purge_cache", flow="bench", key="AAAA")
        assert res["ok"] and "purged bench/AAAA" in res["message"]
        assert caches.peek("bench", "latest", "AAAA") is None
        assert caches.peek("bench", "latest", "BBBB") is not None

        res = await control.act("prewarm", flow="bench")
        assert res["ok"]
        assert caches.peek("bench", "latest", "AAAA") is not None  # hot, so loaded again

        res = await control.act("purge_cache", flow="bench", layer="l3")
        assert res["ok"] and res["counts"]["l3"] == 2  # `latest` rebuilt from the records
        assert len(await control.query("latest", flow="bench")) == 2

        res = await control.act("purge_cache", layer="l9")
        assert not res["ok"] and "no cache layer" in res["message"]

        res = await control.act("purge_cache")
        assert res["ok"]
        assert len(caches.l1) == 0

        rows = rig.store.actions(flow=None, limit=20)
        seen = [(r["action"], r["actor"], r["outcome"]) for r in rows
                if r["action"] in ("purge_cache", "prewarm")]
        assert seen[::-1] == [("purge_cache", "tester", "ok"), ("prewarm", "tester", "ok"),
                              ("purge_cache", "tester", "ok"), ("purge_cache", "tester", "failed"),
                              ("purge_cache", "tester", "ok")]
    finally:
        await rig.close()


def test_cache_config_errors_point_at_the_line(tmp_path):
    path = write_config(tmp_path, extra="cache:\n  l1: {ttl: 0s}\n  http: {lates: {max_age: 1}}\n")
    with pytest.raises(ConfigError) as err:
        parse_config(path.read_text(), str(path))
    text = str(err.value)
    assert "cache.l1.ttl" in text and "cache.http" in text
    assert f"{path}:" in text


# ---------------------------------------------------------------- L2: the Redis service


@pytest.fixture
def redis_url():
    """The Redis service with a key prefix of this test's own, cleaned up afterwards."""
    need_service("Redis", "127.0.0.1", 6379)
    ns = f"flowdeck-test-{uuid.uuid4().hex[:10]}"
    yield "redis://127.0.0.1:6379/0", ns
    import redis

    r = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    keys = list(r.scan_iter(match=f"{ns}:*"))
    if keys:
        r.delete(*keys)
    r.close()


def _engine(tmp_path, url: str, ns: str, db: str) -> tuple[Engine, Store]:
    extra = f"cache: {{redis_url: '{url}', namespace: {ns}, prewarm: 0}}"
    config = parse_config(write_config(tmp_path, extra).read_text(), str(tmp_path / "f.yaml"))
    store = Store(f"sqlite:///{tmp_path / db}")
    return Engine(config, store), store


async def _until(cond, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        await asyncio.sleep(0.01)


async def _ingest(engine: Engine, tmp_path, n: int, rows) -> None:
    path = tmp_path / "bench" / f"{n:05d}.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    await engine.run_flow("bench", "manual")


@pytest.mark.redis
async def test_two_engines_share_l2_and_each_others_invalidations(tmp_path, redis_url):
    url, ns = redis_url
    a, store_a = _engine(tmp_path, url, ns, "shared.db")
    b, store_b = _engine(tmp_path, url, ns, "shared.db")  # a second daemon, same database
    await a.start(schedule=False)
    await b.start(schedule=False)
    try:
        t0 = int(time.time() * 1000) // 60_000 * 60_000
        await _ingest(a, tmp_path, 1, [{"s": "AAAA", "t": t0 - 60_000, "temp": 5.0, "p": 1000}])
        rows = await b.caches.latest("bench", "AAAA")  # B: L1 miss, L2 miss, database
        assert rows[0]["data"]["temperature"] == 5.0
        assert (b.caches.stats["l2"].misses, b.caches.stats["l3"].hits) == (1, 1)
        rows_a = await a.caches.latest("bench", "AAAA")  # A finds what B put in Redis
        assert rows_a == rows
        assert a.caches.stats["l2"].hits == 1 and a.caches.stats["l3"].hits == 0

        seen = b.caches.stats["l1"].invalidations
        await _ingest(a, tmp_path, 2, [{"s": "AAAA", "t": t0, "temp": 7.5, "p": 1000}])
        await _until(lambda: b.caches.stats["l1"].invalidations > seen,
                     "B dropping its copy on A's invalidation")
        rows = await b.caches.latest("bench", "AAAA")
        assert rows[0]["data"]["temperature"] == 7.5
        assert b.caches.layer_stats()["l2"]["connected"] is True
    finally:
        await a.stop()
        await b.stop()
        store_a.close()
        store_b.close()


def _redis_server(port: int) -> subprocess.Popen:
    exe = shutil.which("redis-server")
    if exe is None:
        msg = "redis-server is not installed (apt-get install -y redis-server)"
        if REQUIRE_SERVICES:
            pytest.fail(msg + " and FLOWDECK_REQUIRE_SERVICES=1")
        pytest.skip(msg)
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--daemonize", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    import socket

    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError("redis-server did not start")


@pytest.mark.redis
async def test_redis_dies_and_returns_readers_never_see_an_error(tmp_path):
    port = free_port()
    proc = _redis_server(port)
    engine, store = _engine(tmp_path, f"redis://127.0.0.1:{port}/0", "own", "own.db")
    await engine.start(schedule=False)
    try:
        caches = engine.caches
        t0 = int(time.time() * 1000) // 60_000 * 60_000
        await _ingest(engine, tmp_path, 1, rows_for(["AAAA", "BBBB"], t0_ms=t0))
        assert len(await caches.latest("bench")) == 2
        assert caches.stats["l2"].misses == 1

        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # Readers keep getting answers from memory and the database while Redis is gone.
        await caches.purge("bench", layer="l1")
        for _ in range(5):
            assert len(await caches.latest("bench")) == 2
            await caches.purge("bench", layer="l1")
        await _until(lambda: caches.layer_stats()["l2"]["connected"] is False, "outage noticed")
        assert caches.stats["l2"].errors >= 1
        await _ingest(engine, tmp_path, 2, rows_for(["CCCC"], t0_ms=t0))
        assert len(await caches.latest("bench")) == 3

        proc = _redis_server(port)
        await _until(lambda: caches.layer_stats()["l2"]["connected"] is True, "reconnect")
        misses = caches.stats["l2"].misses
        await caches.purge("bench", layer="l1")
        assert len(await caches.latest("bench")) == 3
        assert caches.stats["l2"].misses == misses + 1  # asked Redis again

        await _until(lambda: any(a["action"] == "cache_l2_reconnected"
                                 for a in store.actions(limit=50)), "the reconnect recorded")
        acts = [(a["action"], a["outcome"], a["source"]) for a in store.actions(limit=50)
                if a["action"].startswith("cache_l2")]
        assert acts[::-1] == [("cache_l2_down", "failed", "redis"),
                              ("cache_l2_reconnected", "ok", "redis")]
    finally:
        await engine.stop()
        store.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)

