"""The deferred-series flusher: owns the ``store.derived_delay`` policy.

With a delay, a run commits its records and latest values (and so its series points,
which are the records' values) at once and leaves what it owes the store (roll-ups,
new series names, raw status: ``Store.write_batch(defer=True)``)
to be written later, in steps, so a run arriving meanwhile waits for one step, not for
all of it. What is owed is written once it is ``derived_delay`` old or
``FLUSH_ROWS`` rows, before history is read (so a reader never sees a value in latest
that its history lacks), and at stop. The flusher asks the store only through its
public derived methods: ``derived_owed``, ``derived_seq``, ``flush_step``,
``flush_derived``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flowdeck.storage.store import Store

log = logging.getLogger("flowdeck.engine")

# What deferred batches owe is written once it is store.derived_delay old or this many
# rows, whichever comes first ...
FLUSH_ROWS = 8000
# ... in steps of at most this many minute roll-ups (each one upsert, the points of a
# series' minute folded first), each its own transaction on the worker, so a run that
# arrives meanwhile waits for one step (a few ms), not for all of it (a 4,000-point
# flush in one go took 23-30 ms in bench_feed and was its tail, when points were rows).
STEP_ROWS = 1000


class DeferredSeries:
    def __init__(self, store: Store, delay: float, retry: float,
                 db: Callable[..., Awaitable[Any]]) -> None:
        self.store = store
        self.delay = delay  # store.derived_delay, seconds; 0 writes everything at once
        self.retry = retry  # store.retry: the wait after a failed flush
        self.db = db  # runs a store call on the engine's worker thread
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = False
        self._signalled = False  # the worker has asked the loop to look
        self._closed = False  # stopping: what is owed is written by stop
        self._timer: asyncio.TimerHandle | None = None
        self._flush: asyncio.Task | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """The engine runs on ``loop``: batches may defer from now on."""
        self._loop = loop
        self._closed = False
        self._running = True

    @property
    def active(self) -> bool:
        """Does a batch written now defer what it owes?"""
        return self._running and self.delay > 0

    def owed(self) -> tuple[int, float | None]:
        """(rows, age in seconds of the oldest) still owed (the snapshot, /metrics)."""
        return self.store.derived_owed()

    def written(self) -> None:
        """After a deferred batch (worker thread): have the loop flush or set a timer,
        unless it already has been asked or a flush is running (which looks again when
        it ends)."""
        if self._signalled or self._loop is None:
            return
        if self._flush is not None and not self._flush.done():
            return
        self._signalled = True
        self._loop.call_soon_threadsafe(self._check)

    def _check(self) -> None:
        """On the loop: flush now if what is owed is due, else when it will be."""
        self._signalled = False
        if self._closed or (self._flush is not None and not self._flush.done()):
            return
        rows, age = self.store.derived_owed()
        if age is None:
            return
        wait = 0.0 if rows >= FLUSH_ROWS else self.delay - age
        if wait <= 0:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._flush = self._loop.create_task(self._flush_owed())
        elif self._timer is None:
            self._timer = self._loop.call_later(wait, self._due)

    def _due(self) -> None:
        self._timer = None
        self._check()

    async def _write_owed_until(self, target: int) -> None:
        """Flush steps on the worker, other work between them, until every batch up to
        ``target`` (Store.derived_seq) is written."""
        while self.store.derived_seq()[1] < target:
            await self.db(self.store.flush_step, STEP_ROWS)

    async def _flush_owed(self) -> None:
        try:
            await self._write_owed_until(self.store.derived_seq()[0])
        except Exception as exc:  # still owed: try again later (the next run may first)
            log.warning("writing deferred series failed: %s: %s", type(exc).__name__, exc)
            if not self._closed and self._timer is None:
                self._timer = self._loop.call_later(self.retry, self._due)
            return
        self._check()  # what runs owed meanwhile: now, or a timer

    async def settle(self, flow: str) -> None:
        """Before the caches load history from the store: write what deferred runs owe,
        so a reader is never shown a value in latest that its history lacks. If the
        store fails, the read goes on with what is stored."""
        try:
            await self._write_owed_until(self.store.derived_seq()[0])
        except Exception as exc:
            log.debug("history read before deferred series were written: %s", exc)

    async def stop(self) -> None:
        """At stop: no more timers; what is owed is written (or, if the store fails,
        left to the next start's resume: those payloads have no raw status)."""
        self._closed = True
        self._running = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._flush is not None:
            await asyncio.gather(self._flush, return_exceptions=True)
            self._flush = None
        try:
            await self.db(self.store.flush_derived)
        except Exception as exc:
            log.warning("deferred series not written at stop (%s: %s); their payloads "
                        "are processed again at the next start", type(exc).__name__, exc)
