"""A node of a cluster: which flows this daemon owns, by PostgreSQL leases
(storage/leases.py), and what it does when that changes.

Every ``renew`` seconds (lease_ttl / 3) the node, on a thread of its own:

1. heartbeats and renews the leases it holds (one transaction); a lease not renewed
   (expired, taken over, moved) is dropped at once;
2. reads the cluster (live nodes, leases) and works out its fair share,
   ceil(flows / live nodes);
3. above its share (a node joined), or holding a flow an operator moved to another live
   node, it releases the excess at a slot boundary (a flow not running);
4. below its share, it takes free or expired leases (moved-to-it first) and takes each
   flow over: warms its detectors and order from the store, commits its spool and
   processes its pending raw payloads (never refetched), and does not run the schedule
   slot the previous owner already ran (``not_before``: from the store's last scheduled
   run of the flow).

A node that cannot renew keeps trying; when its *local deadline* passes (the start of
its last successful renewal + lease_ttl - margin, on the monotonic clock, so before the
database could judge the lease expired), it stops running its flows: no new run starts,
a run in progress is refused at its next transaction by the fence. What it fetched
meanwhile goes to the raw spool (guard.py) and is committed when it owns the flow again.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from flowdeck.storage import leases as lz

if TYPE_CHECKING:
    from flowdeck.pipeline.engine.engine import Engine

log = logging.getLogger("flowdeck.cluster")

_NEVER = 2**62  # not_before while a flow's take-over is in progress


class Cluster:
    def __init__(self, engine: Engine, leases: lz.Leases, *, ttl: float, renew: float,
                 margin: float, monotonic: Callable[[], float] = time.monotonic,
                 info: dict | None = None) -> None:
        self.engine = engine
        self.leases = leases
        self.node = leases.node
        self.ttl = ttl
        self.renew_every = renew
        self.margin = margin
        self.monotonic = monotonic
        self.info = {"pid": os.getpid(), "host": socket.gethostname(), **(info or {})}
        self.owned: dict[str, int] = {}  # flow -> fencing token
        self.acquired_at: dict[str, float] = {}  # flow -> monotonic time of acquisition
        self.not_before: dict[str, int] = {}  # flow -> epoch ms of its next schedule slot
        self.last_renewal: float | None = None  # monotonic start of the last good renewal
        self.last_error: str | None = None
        self.view: dict[str, Any] = {"nodes": [], "leases": [], "now_ms": None}
        self.takeovers = 0
        self.handovers = 0
        self.lost = 0
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._resuming: set[asyncio.Task] = set()

    # ------------------------------------------------------------ what the engine asks

    def deadline(self) -> float | None:
        if self.last_renewal is None:
            return None
        return self.last_renewal + self.ttl - self.margin

    def valid(self) -> bool:
        d = self.deadline()
        return d is not None and self.monotonic() < d

    def holds(self, flow: str) -> bool:
        return flow in self.owned and self.valid() and not self._stopping

    def may_run(self, flow: str, now_ms: int) -> bool:
        """A scheduled run of ``flow`` now: only while held, and not for the slot the
        previous owner already ran."""
        return self.holds(flow) and now_ms >= self.not_before.get(flow, 0)

    def fence(self, flow: str) -> AbstractContextManager[None]:
        return lz.fenced(flow, self.node, self.owned.get(flow) if self.holds(flow) else None)

    def owner(self, flow: str) -> str | None:
        for lease in self.view.get("leases", []):
            if lease["flow"] == flow and lease.get("held") and lease["node"] != self.node:
                return lease["node"]  # as of the last tick
        return None

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await self._call(self.leases.join, self.info)
        await self.tick()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """A graceful stop (after the engine's runs finished): release every lease at
        once, so another node takes the flows over without waiting for the TTL."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._resuming:
            await asyncio.gather(*list(self._resuming), return_exceptions=True)
        held, self.owned = dict(self.owned), {}
        try:
            await self._call(self.leases.leave, held)
            log.info("node %s left the cluster, released %d flow(s)", self.node, len(held))
        except Exception as exc:  # they expire by themselves within the TTL
            log.warning("node %s: leases not released (%s); they expire within %gs",
                        self.node, _short(exc), self.ttl)
        self.leases.close()

    def poke(self) -> None:
        """Look at the cluster now, not at the next renewal (an operator's move)."""
        self._wake.set()

    async def move(self, flow: str, target: str) -> dict[str, Any]:
        """An operator's move: pin ``flow`` to ``target`` (a known node); the owner
        releases it at its next tick between runs, then only ``target`` takes it."""
        if flow not in self.engine.flows:
            raise ValueError(f"no flow {flow!r}")
        moved = await self._call(lz.move_flow, self.leases.engine, flow, target)
        self.poke()
        return moved

    async def _loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.renew_every)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must outlive any one failure
                log.exception("node %s: lease tick failed", self.node)

    async def _call(self, fn, *args):
        """A lease call on a thread of the default pool, given up after two renewal
        periods: one stuck on a dead connection holds up neither the loop nor the next
        attempt."""
        fut = asyncio.get_running_loop().run_in_executor(None, fn, *args)
        return await asyncio.wait_for(fut, max(1.0, 2 * self.renew_every))

    # ------------------------------------------------------------ one tick

    async def tick(self) -> None:
        started = self.monotonic()
        held = dict(self.owned)
        try:
            # holding flows: no later than the local deadline; holding none: a renewal
            # (a heartbeat) may take its time (a reconnect on a loaded machine)
            deadline = self.deadline()
            budget = (max(0.5, deadline - started) if self.owned and deadline is not None
                      else 2 * self.renew_every)
            kept = await asyncio.wait_for(self._call(self.leases.renew, held), budget)
        except (Exception, TimeoutError) as exc:
            self.last_error = _short(exc)
            if isinstance(exc, lz.FenceError):  # not registered (rows deleted): join again
                await self._rejoin()
            if self.owned and not self.valid():
                self._drop_all(f"cannot renew its leases ({self.last_error})")
            else:
                log.warning("node %s: lease renewal failed (%s); retrying", self.node,
                            self.last_error)
            return
        self.last_renewal = started
        self.last_error = None
        for flow in held:
            if flow not in kept and flow in self.owned:
                self.drop(flow, "its lease expired or was taken over")
        if self._stopping:
            return
        try:
            self.view = await self._call(self.leases.view)
        except (Exception, TimeoutError) as exc:  # renewed; balance at the next tick
            log.warning("node %s: cannot read the cluster (%s)", self.node, _short(exc))
            return
        await self._balance()

    async def _rejoin(self) -> None:
        try:
            await self._call(self.leases.join, self.info)
        except Exception:
            pass

    async def _balance(self) -> None:
        flows = list(self.engine.flows)
        live = [n["node"] for n in self.view["nodes"] if n["live"]]
        if self.node not in live:
            live.append(self.node)
        share = math.ceil(len(flows) / max(1, len(live)))
        leases = {lease["flow"]: lease for lease in self.view["leases"]}

        def moved_away(flow: str) -> bool:
            target = leases.get(flow, {}).get("target")
            return target is not None and target != self.node and target in live

        def pinned_here(flow: str) -> bool:
            return leases.get(flow, {}).get("target") == self.node

        # Release: flows moved to another live node, then the excess over the share
        # (newest acquisitions first, never one pinned here), each only between runs.
        release = [f for f in self.owned if moved_away(f)]
        spare = sorted((f for f in self.owned if f not in release and not pinned_here(f)),
                       key=lambda f: -self.acquired_at.get(f, 0.0))
        excess = len(self.owned) - len(release) - share
        release += spare[:max(0, excess)]
        handing = {}
        for flow in release:
            rt = self.engine.flows[flow]
            if rt.lock.locked():
                continue  # a run in progress: at the next tick (a slot boundary)
            handing[flow] = self.owned.pop(flow)
        if handing:
            try:
                done = await self._call(self.leases.release, handing)
            except Exception as exc:  # they expire within the TTL
                done = []
                log.warning("node %s: release failed (%s)", self.node, _short(exc))
            for flow in handing:
                self.acquired_at.pop(flow, None)
                self.handovers += 1
                self.engine.emit("cluster", flow, node=self.node, event="released",
                                 released=flow in done)
            log.info("node %s handed over %s (share %d)", self.node, ", ".join(sorted(handing)),
                     share)
        # Acquire: pinned here first, then free or expired ones, up to the share.
        now = self.view.get("now_ms") or 0
        free = [f for f in flows if f not in self.owned and not moved_away(f) and (
            f not in leases or not leases[f]["held"] or leases[f]["node"] == self.node)]
        free.sort(key=lambda f: (not pinned_here(f), f))
        for flow in free:
            if len(self.owned) >= share and not pinned_here(flow):
                break
            if not self.valid():
                return
            try:
                token = await self._call(self.leases.acquire, flow)
            except Exception as exc:  # blocked by the old owner's open write, or away
                log.info("node %s: cannot take %s yet (%s)", self.node, flow, _short(exc))
                continue
            if token is not None:
                await self._take_over(flow, token, now)

    async def _take_over(self, flow: str, token: int, now_ms: int) -> None:
        """Own ``flow`` from now; its take-over (the store's state, pending payloads) runs
        as a task of its own, so the renewals go on meanwhile; no scheduled run before it
        is done."""
        self.owned[flow] = token
        self.acquired_at[flow] = self.monotonic()
        self.not_before[flow] = _NEVER
        self.takeovers += 1
        log.info("node %s took %s over (token %d)", self.node, flow, token)
        self.engine.emit("cluster", flow, node=self.node, event="acquired", token=token)
        task = asyncio.get_running_loop().create_task(self._resume(flow, token))
        self._resuming.add(task)
        task.add_done_callback(self._resuming.discard)

    async def _resume(self, flow: str, token: int) -> None:
        try:
            slot = await self.engine.take_over(flow)
        except Exception as exc:
            log.warning("node %s: taking %s over failed (%s); it runs at its next slot",
                        self.node, flow, _short(exc))
            slot = 0
        if self.owned.get(flow) == token:
            self.not_before[flow] = slot

    def drop(self, flow: str, why: str) -> None:
        self.owned.pop(flow, None)
        self.acquired_at.pop(flow, None)
        self.lost += 1
        log.warning("node %s stops running %s: %s", self.node, flow, why)
        self.engine.emit("cluster", flow, node=self.node, event="lost", reason=why)

    def _drop_all(self, why: str) -> None:
        for flow in list(self.owned):
            self.drop(flow, why)

    # ------------------------------------------------------------ for viewers

    def snapshot(self) -> dict[str, Any]:
        now = self.monotonic()
        return {
            "node": self.node, "ttl_s": self.ttl,
            "owned": sorted(self.owned),
            "tokens": dict(self.owned),
            "valid": self.valid(),
            "last_renewal_age_s": None if self.last_renewal is None
            else round(now - self.last_renewal, 3),
            "error": self.last_error,
            "takeovers": self.takeovers, "handovers": self.handovers, "lost": self.lost,
            "nodes": [{k: n[k] for k in ("node", "state", "live", "heartbeat_age_ms",
                                         "flows")} for n in self.view.get("nodes", [])],
            "leases": [{k: lease[k] for k in ("flow", "node", "token", "held", "age_ms",
                                              "expires_in_ms", "target")}
                       for lease in self.view.get("leases", [])],
        }


def _short(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def join_cluster(engine: Engine, node: str | None = None, *,
                 monotonic: Callable[[], float] = time.monotonic) -> Cluster:
    """Make ``engine`` (on PostgreSQL) a node of the cluster of its database: its store's
    transactions are fenced and it runs only the flows whose lease it holds."""
    store = engine.store
    cfg = engine.config.cluster
    lz.install_fence(store.engine)
    leases = lz.Leases(store.engine.url, node or lz.default_node_name(), cfg.lease_ttl)
    engine.cluster = Cluster(engine, leases, ttl=cfg.lease_ttl, renew=cfg.renew_every,
                             margin=cfg.stop_margin, monotonic=monotonic)
    return engine.cluster
