"""The hub: every event the engine emits, fanned out to subscribers (console, feed, log).

Subscribers get bounded queues: a slow subscriber loses its oldest events
(counted), it never grows memory or slows the engine. ``publish`` is safe to
call from the engine's worker thread.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from flowdeck.pipeline.core.shapes import HubEvent


@dataclass(slots=True)
class Event:
    type: str  # run_started | run_finished | fetch | issue | quarantine | action | records | log
    ts: float
    flow: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    seq: int = 0

    def as_dict(self) -> HubEvent:
        return {"type": self.type, "ts": self.ts, "flow": self.flow, "seq": self.seq,
                "data": self.data}


class Subscription:
    def __init__(self, hub: Hub, maxsize: int, types: set[str] | None) -> None:
        self.hub = hub
        self.queue: deque[Event] = deque(maxlen=maxsize)
        self.types = types
        self.dropped = 0
        self._wake = asyncio.Event()

    def _put(self, ev: Event) -> None:
        if self.types is not None and ev.type not in self.types:
            return
        if len(self.queue) == self.queue.maxlen:
            self.dropped += 1
        self.queue.append(ev)
        self._wake.set()

    async def get(self) -> Event:
        while not self.queue:
            self._wake.clear()
            await self._wake.wait()
        return self.queue.popleft()

    def drain(self) -> list[Event]:
        out = list(self.queue)
        self.queue.clear()
        return out

    def close(self) -> None:
        self.hub._subs.discard(self)


class Hub:
    # No history is kept here: subscribers keep what they need (the feed its recent events,
    # slimmed). A copy of the last 2,000 events, records batches included, was read by
    # nobody and was most of what each full garbage collection had to walk.
    def __init__(self) -> None:
        self._subs: set[Subscription] = set()
        self._seq = itertools.count(1)
        self.loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def subscribe(self, maxsize: int = 10_000, types: set[str] | None = None) -> Subscription:
        sub = Subscription(self, maxsize, types)
        self._subs.add(sub)
        return sub

    def publish(self, ev: Event) -> None:
        loop = self.loop
        if loop is not None and loop.is_running():
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is not loop:
                loop.call_soon_threadsafe(self._deliver, ev)
                return
        self._deliver(ev)

    def _deliver(self, ev: Event) -> None:
        ev.seq = next(self._seq)
        for sub in list(self._subs):
            sub._put(ev)
