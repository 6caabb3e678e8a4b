"""The retention job: every ``retention.interval`` a pass deletes what each flow keeps no
longer, gives the space back and measures the database.

A pass is a sequence of steps (``flowdeck.storage.retention.Retention.step``), each one
short transaction of at most ``retention.batch`` rows of one table for one flow, run on
the engine's worker thread like every write: a run's batch queued behind retention waits
for one step at most, and retention waits for the batch. Between steps the job yields to
the event loop. The cutoffs come from the engine's clock (a test's ManualClock compresses
months into seconds).

A pass that deleted something is recorded as a recovery action (``retention``, actor
``auto``, what it deleted per kind in its detail), which is also where ``flowdeck db
stats`` finds the last pass of a daemon it does not talk to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from flowdeck.pipeline.config import Config
from flowdeck.pipeline.core.clock import Clock
from flowdeck.pipeline.core.shapes import RetentionPass, StorageSnapshot
from flowdeck.storage.retention import KINDS, TABLE_OF, Retention, Scope, cutoff_for, raw_cutoff

log = logging.getLogger("flowdeck.retention")

# The first pass after start: soon (a daemon restarted often still cleans up), not at once.
FIRST_PASS_AFTER = 60.0


class RetentionJob:
    def __init__(self, config: Config, store: Any, clock: Clock,
                 run_db: Callable[..., Awaitable[Any]],
                 record: Callable[..., Awaitable[None]] | None = None) -> None:
        self.config = config
        self.settings = config.retention
        self.retention = Retention(store)
        self.clock = clock
        self._db = run_db
        self._record = record  # Engine.auto_action
        self.last_pass: RetentionPass | None = None
        self.stats: dict | None = None
        self.stats_ms: int | None = None
        self.passes = 0
        self._task: asyncio.Task | None = None
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------ lifecycle

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._task is None:
            self._task = loop.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        await self.measure()
        delay = min(self.settings.interval, FIRST_PASS_AFTER)
        while True:
            await asyncio.sleep(self.clock.wall_seconds(delay))  # on a simulated clock too
            delay = self.settings.interval
            try:
                await self.run_pass()
            except asyncio.CancelledError:
                raise
            except Exception:  # retention must never take the engine down; next interval
                log.exception("retention pass failed")

    # ------------------------------------------------------------ the pass

    def plan(self, now_ms: int) -> list[tuple[str, Scope, int]]:
        """(kind, scope, cutoff) of every step sequence of a pass, in ``KINDS`` order."""
        configured = tuple(self.config.flows)
        # max_future None (forecasts: no upper bound) keeps the flow's raw payloads while
        # lineage is kept: no bound says which payloads kept records no longer name.
        scopes: list[tuple[Scope, dict[str, float | None], float | None]] = [
            (Scope(name), self.settings.for_flow(f.retention), f.timestamps.max_future)
            for name, f in self.config.flows.items()]
        futures = [f.timestamps.max_future for f in self.config.flows.values()]
        max_future = (None if None in futures else max(
            (x for x in futures if x is not None), default=300.0))
        scopes.append((Scope(None, configured), self.settings.for_flow(None), max_future))
        out = []
        for kind in KINDS:
            for scope, keep, future in scopes:
                if kind == "raw":
                    cutoff = raw_cutoff(now_ms, keep, self.settings.keep_lineage, future)
                else:
                    cutoff = cutoff_for(kind, now_ms, keep)
                if cutoff is not None:
                    out.append((kind, scope, cutoff))
        return out

    async def run_pass(self) -> RetentionPass:
        """One pass over every table and flow, then vacuum and statistics."""
        async with self._lock:
            started = self.clock.now_ms()
            t0 = time.perf_counter()
            deleted = {k: 0 for k in KINDS}
            steps = 0
            error = None
            vacuum: dict[str, Any] = {}
            try:
                keep = await self._db(self.retention.protected)
                batch = self.settings.batch
                for kind, scope, cutoff in self.plan(started):
                    cursor = None
                    while True:
                        n, cursor = await self._db(self.retention.step, kind, scope, cutoff,
                                                   cursor, batch, keep)
                        steps += 1
                        deleted[kind] += n
                        if cursor is None:
                            break
                        await asyncio.sleep(0)  # the loop's other work between steps
                touched = [TABLE_OF[k].name for k, n in deleted.items() if n]
                if "raw" in touched or deleted["raw"]:
                    touched.append("raw_status")
                vacuum = await self._db(self.retention.vacuum, self.settings.vacuum_pages,
                                        touched)
            except Exception as exc:
                error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                log.warning("retention pass stopped: %s", error)
            result: RetentionPass = {
                "started_ms": started, "finished_ms": self.clock.now_ms(),
                "duration_s": round(time.perf_counter() - t0, 3), "steps": steps,
                "deleted": {k: n for k, n in deleted.items() if n}, "vacuum": vacuum,
                "error": error}
            self.last_pass = result
            self.passes += 1
            await self.measure()
            total = sum(deleted.values())
            if (total or error) and self._record is not None:
                what = ", ".join(f"{n} {k}" for k, n in deleted.items() if n) or "nothing"
                await self._record(None, "retention", reason=(
                    f"retention deleted {what} in {steps} step(s)" if error is None
                    else f"retention stopped after {what}: {error}"),
                    outcome="ok" if error is None else "failed",
                    duration_ms=result["duration_s"] * 1000, detail=dict(result))
            return result

    async def measure(self) -> dict | None:
        """Database size and rows/oldest per table (a read: the worker is not needed)."""
        try:
            self.stats = await asyncio.to_thread(self.retention.stats)
            self.stats_ms = self.clock.now_ms()
        except Exception as exc:  # the store away: keep the last figures
            log.warning("database statistics failed: %s", exc)
        return self.stats

    def snapshot(self) -> StorageSnapshot:
        st = self.stats or {}
        return {"backend": st.get("backend"), "size_bytes": st.get("size_bytes"),
                "measured_ms": self.stats_ms, "tables": st.get("tables") or {},
                "last_pass": self.last_pass,
                "spool_max_bytes": self.config.store.spool_max}
