"""Flow ownership in a cluster: one lease row per flow with a fencing token (PostgreSQL).

Several daemons share one PostgreSQL database; each flow must run on exactly one of them.
A node owns a flow while it holds the flow's row in ``flow_leases`` with an expiry in the
future. Every time is the **database's** clock (``clock_timestamp()``), never a node's, so
nodes with skewed clocks still agree on who owns what.

The fencing token is incremented at every acquisition. Every transaction a node opens
for a flow (``fenced(flow, node, token)`` around the work) starts with

    SELECT token FROM flow_leases
    WHERE flow = :flow AND node = :node AND token = :token AND expires_ms > now
    FOR SHARE

(``install_fence``: an SQLAlchemy ``begin`` listener on the store's engine, so the store's
write paths, ``write_batch``, ``insert_raws``, issues, actions, runs, need no change). No
row: the lease expired or another node took it; the transaction is aborted with
``FenceError`` before it writes anything. ``FOR SHARE`` makes the check hold until the
commit: a node taking the lease over (an ``UPDATE`` of that row) waits for the writer's
transaction to end, and every transaction the old node opens afterwards sees the new
token. So a node that was paused (GC, SIGSTOP, a network cut) and wakes up after its
lease was taken over cannot write a single row of that flow.

Why a lease row, not a session advisory lock: an advisory lock is held by a session, so
ownership would be lost silently with the connection (``pg_terminate_backend``, a
PgBouncer in transaction mode, a failover), and a write made on *another* pooled
connection of the same node is not tied to the lock at all; the node cannot prove, inside
the write transaction, that it still owns the flow. A row with a token can be checked
in the same transaction as the write, survives reconnects, and its expiry is visible to
``flowdeck status`` and to the other nodes.

The ``Leases`` methods are synchronous and short (one transaction each, with a
statement and lock timeout); ``pipeline/engine/cluster.py`` calls them off the event loop.
On SQLite (one node) none of this is used.
"""

from __future__ import annotations

import contextvars
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection, Engine

# Epoch milliseconds by the database's clock (the real time, not the transaction's start).
NOW_MS = "(extract(epoch from clock_timestamp()) * 1000)::bigint"
# A node whose last heartbeat is this old is forgotten when another node joins.
FORGET_NODES_MS = 7 * 24 * 3600 * 1000


class FenceError(Exception):
    """A transaction of a flow whose lease this node does not hold (stale token, expired,
    taken over): refused before it wrote anything."""


@dataclass(frozen=True)
class Fence:
    flow: str
    node: str
    token: int | None  # None: the node holds no lease on the flow


_fence: contextvars.ContextVar[Fence | None] = contextvars.ContextVar("flowdeck_fence",
                                                                      default=None)

_CHECK = text(f"SELECT token FROM flow_leases WHERE flow = :flow AND node = :node "
              f"AND token = :token AND expires_ms > {NOW_MS} FOR SHARE")


@contextmanager
def fenced(flow: str, node: str, token: int | None) -> Iterator[None]:
    """Every transaction opened in this context (and in work handed to threads with a
    copy of it) checks that ``node`` holds ``flow``'s lease with ``token``."""
    reset = _fence.set(Fence(flow, node, token))
    try:
        yield
    finally:
        _fence.reset(reset)


def current_fence() -> Fence | None:
    return _fence.get()


def _check_fence(conn: Connection) -> None:
    f = _fence.get()
    if f is None:
        return
    if f.token is None:
        raise FenceError(f"flow {f.flow}: node {f.node} holds no lease on it; "
                         "transaction refused")
    row = conn.execute(_CHECK, {"flow": f.flow, "node": f.node, "token": f.token}).first()
    if row is None:
        raise FenceError(f"flow {f.flow}: the lease of node {f.node} (token {f.token}) "
                         "expired or was taken over; transaction refused")


def install_fence(engine: Engine) -> None:
    """Check the current fence at the start of every transaction on ``engine``."""
    if engine.dialect.name != "postgresql":
        raise ValueError("leases need PostgreSQL (one SQLite node needs none)")
    if not event.contains(engine, "begin", _check_fence):
        event.listen(engine, "begin", _check_fence)


def default_node_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Leases:
    """The lease and node rows of one node, on an engine of its own (a small pool with
    short timeouts, so a renewal never waits behind the store's batches)."""

    def __init__(self, url: Any, node: str, ttl: float, *, timeout: float | None = None) -> None:
        self.node = node
        self.ttl_ms = int(ttl * 1000)
        t = max(1.0, timeout if timeout is not None else ttl / 3)
        self.timeout_ms = int(t * 1000)
        # A partition leaves a query waiting for an answer that never comes: TCP
        # keepalives and tcp_user_timeout make such a connection fail within seconds.
        self.engine = create_engine(url, pool_size=2, max_overflow=2, pool_pre_ping=True,
                                    pool_timeout=t, connect_args={
                                        "connect_timeout": max(1, int(t)), "keepalives": 1,
                                        "keepalives_idle": max(1, int(t)),
                                        "keepalives_interval": 1, "keepalives_count": 2,
                                        "tcp_user_timeout": int(t * 1000)})

    def close(self) -> None:
        self.engine.dispose()

    def _begin(self):
        return _Txn(self.engine, self.timeout_ms)

    # ------------------------------------------------------------ this node

    def join(self, info: dict | None = None) -> None:
        """Register this node as up, and forget nodes silent for ``FORGET_NODES_MS``
        (stopped or dead a week: with the default ``HOSTNAME-PID`` names every restart is
        a new row, and ``flowdeck status`` would list them all forever). A node that an
        operator's move still names as its target, or that holds an unexpired lease, is
        kept whatever its age."""
        with self._begin() as conn:
            conn.execute(text(
                f"DELETE FROM cluster_nodes c WHERE c.heartbeat_ms < {NOW_MS} - :age "
                f"AND c.node <> :n AND NOT EXISTS (SELECT 1 FROM flow_leases l "
                f"WHERE l.target = c.node OR (l.node = c.node AND l.expires_ms > {NOW_MS}))"),
                {"age": FORGET_NODES_MS, "n": self.node})
            conn.execute(text(
                f"INSERT INTO cluster_nodes (node, started_ms, heartbeat_ms, state, info) "
                f"VALUES (:n, {NOW_MS}, {NOW_MS}, 'up', CAST(:info AS jsonb)) "
                f"ON CONFLICT (node) DO UPDATE SET started_ms = EXCLUDED.started_ms, "
                f"heartbeat_ms = EXCLUDED.heartbeat_ms, state = 'up', info = EXCLUDED.info"),
                {"n": self.node, "info": json.dumps({**(info or {}), "ttl_ms": self.ttl_ms})})

    def renew(self, held: dict[str, int]) -> dict[str, int]:
        """Heartbeat, and extend the leases still held with the same token: those kept."""
        with self._begin() as conn:
            n = conn.execute(text(
                f"UPDATE cluster_nodes SET heartbeat_ms = {NOW_MS}, state = 'up' "
                f"WHERE node = :n"), {"n": self.node}).rowcount
            if not n:
                raise FenceError(f"node {self.node} is not registered")
            if not held:
                return {}
            rows = conn.execute(text(
                f"UPDATE flow_leases SET expires_ms = {NOW_MS} + :ttl "
                f"WHERE node = :n AND expires_ms > {NOW_MS} AND flow = ANY(:flows) "
                f"RETURNING flow, token"),
                {"n": self.node, "ttl": self.ttl_ms, "flows": list(held)}).all()
        return {f: t for f, t in rows if held.get(f) == t}

    def acquire(self, flow: str) -> int | None:
        """Take ``flow``'s lease if it is free, expired or already this node's, unless an
        operator moved it to another live node. The new token, or None."""
        with self._begin() as conn:
            row = conn.execute(text(
                f"INSERT INTO flow_leases AS l (flow, node, token, acquired_ms, expires_ms) "
                f"VALUES (:f, :n, 1, {NOW_MS}, {NOW_MS} + :ttl) "
                f"ON CONFLICT (flow) DO UPDATE SET node = :n, token = l.token + 1, "
                f"acquired_ms = {NOW_MS}, expires_ms = {NOW_MS} + :ttl "
                f"WHERE (l.node IS NULL OR l.node = :n OR l.expires_ms <= {NOW_MS}) "
                f"AND (l.target IS NULL OR l.target = :n OR NOT EXISTS ("
                f"  SELECT 1 FROM cluster_nodes c WHERE c.node = l.target AND c.state = 'up'"
                f"  AND c.heartbeat_ms > {NOW_MS} - :ttl)) "
                f"RETURNING token"), {"f": flow, "n": self.node, "ttl": self.ttl_ms}).first()
        return None if row is None else int(row[0])

    def release(self, held: dict[str, int]) -> list[str]:
        """Give leases up at once (expired now), so another node takes them without
        waiting for the TTL. The token stays: the next owner's is higher."""
        if not held:
            return []
        with self._begin() as conn:
            rows = conn.execute(text(
                f"UPDATE flow_leases SET node = NULL, expires_ms = {NOW_MS} "
                f"WHERE node = :n AND flow = ANY(:flows) RETURNING flow, token"),
                {"n": self.node, "flows": list(held)}).all()
        return [f for f, t in rows if held.get(f) == t]

    def leave(self, held: dict[str, int]) -> None:
        """A graceful stop: release every lease and mark the node stopped."""
        self.release(held)
        with self._begin() as conn:
            conn.execute(text(f"UPDATE cluster_nodes SET state = 'stopped', "
                              f"heartbeat_ms = {NOW_MS} WHERE node = :n"), {"n": self.node})

    # ------------------------------------------------------------ the cluster

    def view(self) -> dict[str, Any]:
        return cluster_view(self.engine, self.ttl_ms)


class _Txn:
    """``engine.begin()`` with a statement and lock timeout for lease work."""

    def __init__(self, engine: Engine, timeout_ms: int) -> None:
        self._cm = engine.begin()
        self.timeout_ms = timeout_ms

    def __enter__(self) -> Connection:
        conn = self._cm.__enter__()
        conn.exec_driver_sql(f"SET LOCAL statement_timeout = {int(self.timeout_ms)}")
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = {int(self.timeout_ms)}")
        return conn

    def __exit__(self, *exc) -> Any:
        return self._cm.__exit__(*exc)


def cluster_view(engine: Engine, ttl_ms: int | None = None) -> dict[str, Any]:
    """Nodes (live or not, last heartbeat, their flows) and leases, as of the database's
    clock. A node is live while its heartbeat is younger than its lease TTL (as it
    registered it; else ``ttl_ms``, else 15 s)."""
    with engine.connect() as conn:
        now = int(conn.execute(text(f"SELECT {NOW_MS}")).scalar_one())
        nodes = [dict(r) for r in conn.execute(text(
            "SELECT node, started_ms, heartbeat_ms, state, info FROM cluster_nodes "
            "ORDER BY node")).mappings()]
        leases = [dict(r) for r in conn.execute(text(
            "SELECT flow, node, token, acquired_ms, expires_ms, target FROM flow_leases "
            "ORDER BY flow")).mappings()]
    for n in nodes:  # each node by the lease TTL it renews with (its config's)
        ttl = (n["info"] or {}).get("ttl_ms") or ttl_ms or 15_000
        n["live"] = n["state"] == "up" and n["heartbeat_ms"] > now - ttl
        n["heartbeat_age_ms"] = now - n["heartbeat_ms"]
        n["flows"] = [lease["flow"] for lease in leases
                      if lease["node"] == n["node"] and lease["expires_ms"] > now]
    for lease in leases:
        lease["held"] = lease["node"] is not None and lease["expires_ms"] > now
        lease["age_ms"] = now - lease["acquired_ms"]
        lease["expires_in_ms"] = lease["expires_ms"] - now
    return {"now_ms": now, "nodes": nodes, "leases": leases}


def move_flow(engine: Engine, flow: str, target: str) -> dict[str, Any]:
    """An operator's ``move FLOW NODE``: pin the flow to ``target``. Its owner releases it
    at its next slot boundary and only ``target`` may take it (while it is live)."""
    with engine.begin() as conn:
        known = conn.execute(text("SELECT state FROM cluster_nodes WHERE node = :n"),
                             {"n": target}).first()
        if known is None:
            raise ValueError(f"no node {target!r} in the cluster")
        row = conn.execute(text(
            "UPDATE flow_leases SET target = :t WHERE flow = :f RETURNING node"),
            {"t": target, "f": flow}).first()
        if row is None:
            conn.execute(text(
                f"INSERT INTO flow_leases (flow, node, token, acquired_ms, expires_ms, target) "
                f"VALUES (:f, NULL, 0, {NOW_MS}, {NOW_MS}, :t)"), {"f": flow, "t": target})
            return {"flow": flow, "from": None, "to": target}
    return {"flow": flow, "from": row[0], "to": target}
