"""Flow leases on a real PostgreSQL database: acquisition, expiry by the database's
clock, release, operator moves, and the fencing token checked inside every write
transaction of the store (storage/leases.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import text

from flowdeck.storage.leases import (
    FenceError,
    Leases,
    cluster_view,
    fenced,
    install_fence,
    move_flow,
)
from flowdeck.storage.model import RawDraft
from flowdeck.storage.store import Store


@pytest.fixture
def pg_store(pg_url):
    s = Store(pg_url)
    install_fence(s.engine)
    yield s
    s.close()


def _leases(store: Store, node: str, ttl: float = 30.0) -> Leases:
    return Leases(store.engine.url, node, ttl)


@contextmanager
def _joined(store: Store, ttl: float = 30.0) -> Iterator[tuple[Leases, Leases]]:
    """Nodes ``a`` and ``b``, both joined, closed afterwards."""
    a, b = _leases(store, "a", ttl), _leases(store, "b", ttl)
    try:
        a.join()
        b.join()
        yield a, b
    finally:
        a.close()
        b.close()


def _expire(store: Store, flow: str) -> None:
    """The lease runs out (by the database's clock, as if its TTL had passed)."""
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE flow_leases SET expires_ms = expires_ms - 3600000 "
                          "WHERE flow = :f"), {"f": flow})


def test_a_joining_node_forgets_nodes_silent_for_a_week_unless_a_lease_names_them(pg_store):
    week = 7 * 24 * 3600 * 1000
    with pg_store.engine.begin() as conn:
        for node, age_ms in (("old-1", week + 60_000), ("old-target", week + 60_000),
                             ("recent", week - 3_600_000)):
            conn.execute(text(
                "INSERT INTO cluster_nodes (node, started_ms, heartbeat_ms, state) VALUES "
                "(:n, 0, (extract(epoch from clock_timestamp()) * 1000)::bigint - :age, "
                "'stopped')"), {"n": node, "age": age_ms})
        conn.execute(text("INSERT INTO flow_leases (flow, node, token, acquired_ms, "
                          "expires_ms, target) VALUES ('f', NULL, 1, 0, 0, 'old-target')"))
    with _joined(pg_store) as (a, _b):
        nodes = {n["node"] for n in a.view()["nodes"]}
    assert nodes == {"a", "b", "old-target", "recent"}


def test_one_owner_at_a_time_and_takeover_after_expiry(pg_store):
    with _joined(pg_store) as (a, b):
        ta = a.acquire("f1")
        assert ta == 1
        assert b.acquire("f1") is None  # held by a
        assert a.renew({"f1": ta}) == {"f1": ta}
        _expire(pg_store, "f1")
        assert a.renew({"f1": ta}) == {}  # expired: not renewed
        tb = b.acquire("f1")
        assert tb == 2  # the token grows at every acquisition
        view = cluster_view(pg_store.engine, 30_000)
        owners = {lease["flow"]: lease["node"] for lease in view["leases"] if lease["held"]}
        assert owners == {"f1": "b"}
        assert {n["node"]: n["flows"] for n in view["nodes"]} == {"a": [], "b": ["f1"]}


def test_release_hands_over_at_once_and_move_pins_to_target(pg_store):
    with _joined(pg_store) as (a, b):
        t = a.acquire("f1")
        assert a.release({"f1": t}) == ["f1"]
        assert b.acquire("f1") == t + 1  # no TTL to wait for
        moved = move_flow(pg_store.engine, "f1", "a")
        assert moved == {"flow": "f1", "from": "b", "to": "a"}
        b.release({"f1": t + 1})
        b2 = _leases(pg_store, "c")
        b2.join()
        assert b2.acquire("f1") is None  # pinned to a, which is live
        assert a.acquire("f1") == t + 2
        b2.close()
        with pytest.raises(ValueError, match="no node"):
            move_flow(pg_store.engine, "f1", "nobody")


def test_write_with_a_stale_token_is_refused_by_the_store(pg_store):
    with _joined(pg_store) as (a, b):
        ta = a.acquire("f1")
        draft = RawDraft("s1", b'{"v": 1}', 1_000, "application/json")
        with fenced("f1", "a", ta):
            pg_store.insert_raws("f1", [draft])  # a holds the lease: written
        _expire(pg_store, "f1")
        with fenced("f1", "a", ta), pytest.raises(FenceError, match="expired or was taken"):
            pg_store.insert_raws("f1", [RawDraft("s1", b'{"v": 2}', 2_000, "application/json")])
        tb = b.acquire("f1")
        with fenced("f1", "a", ta), pytest.raises(FenceError):
            pg_store.start_run("f1", "schedule", 3_000)
        with fenced("f1", "a", None), pytest.raises(FenceError, match="holds no lease"):
            pg_store.add_action(ts_ms=1, action="x", actor="auto", reason="r", outcome="ok",
                                flow="f1")
        with fenced("f1", "b", tb):
            pg_store.insert_raws("f1", [RawDraft("s1", b'{"v": 3}', 3_000, "application/json")])
        bodies = sorted(r["body"] for r in pg_store.raw_since("f1", 0))
        assert bodies == [b'{"v": 1}', b'{"v": 3}']  # the stale node's payload never landed
        assert pg_store.count("runs") == 0 and pg_store.count("actions") == 0


def test_takeover_waits_for_the_old_owners_transaction(pg_store):
    """FOR SHARE: while a write the old owner began under a valid token is open, the
    new owner cannot take the lease (its acquisition times out); once that commits it
    can, and the old token is refused from then on."""
    from sqlalchemy.exc import OperationalError

    with _joined(pg_store, ttl=2.0) as (a, b):
        ta = a.acquire("f1")
        with fenced("f1", "a", ta), pg_store.engine.begin() as conn:  # checked here
            conn.execute(text("SELECT 1"))
            time.sleep(2.5)  # the lease expires while the transaction is open
            with pytest.raises(OperationalError, match="lock|timeout"):
                b.acquire("f1")
        assert b.acquire("f1") == ta + 1
        with fenced("f1", "a", ta), pytest.raises(FenceError):
            pg_store.start_run("f1", "schedule", 1)


async def test_an_engine_node_runs_only_what_it_holds_and_a_stolen_lease_stops_it(
        demo_config, pg_store, clock):
    """The engine's wiring: a run is fenced on the worker thread; once another node holds
    the flow's lease, the next run writes nothing, is failed, and the node drops it."""
    from flowdeck.pipeline.engine.cluster import join_cluster
    from flowdeck.pipeline.engine.engine import Engine

    engine = Engine(demo_config, pg_store, clock=clock, seed=7)
    cluster = join_cluster(engine, "a")
    await engine.start(schedule=False)
    other = _leases(pg_store, "b")
    try:
        assert sorted(cluster.owned) == ["fx", "weather"]  # alone: every flow
        assert (await engine.run_flow("weather")).status == "ok"
        raws = pg_store.count("raw_payloads", flow="weather")
        runs = pg_store.count("runs", flow="weather")
        other.join()
        _expire(pg_store, "weather")  # a was frozen past its TTL...
        assert other.acquire("weather") == cluster.owned["weather"] + 1  # ...and b took it
        summary = await engine.run_flow("weather")
        assert summary.status == "failed" and "taken over" in summary.error
        assert "weather" not in cluster.owned  # it stopped running the flow
        assert pg_store.count("raw_payloads", flow="weather") == raws  # nothing written
        assert pg_store.count("runs", flow="weather") == runs
        again = await engine.run_flow("weather")  # not held: refused before any work
        assert again.status == "failed" and "holds no lease" in again.error
        assert (await engine.run_flow("fx")).status == "ok"  # its other flow runs on
        snap = engine.snapshot()["cluster"]
        assert snap["node"] == "a" and snap["owned"] == ["fx"] and snap["lost"] == 1
    finally:
        await engine.stop()
        other.close()
    view = cluster_view(pg_store.engine, 30_000)
    assert {n["node"]: n["state"] for n in view["nodes"]}["a"] == "stopped"
    assert [lease["node"] for lease in view["leases"] if lease["flow"] == "fx"] == [None]
