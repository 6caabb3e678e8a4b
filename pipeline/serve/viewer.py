"""A connected viewer: one websocket, its subscriptions, and a queue only while it is slow.

A viewer that keeps up is written to directly, as ``websockets.broadcast`` does. A viewer
whose socket is backed up (or that subscribed with acks and is ``ack_window`` seqs behind)
gets a queue instead: newer messages with the same conflation key replace older ones
(latest per key, records merged per series key), and past a bound (``max_pending``,
``max_pending_bytes``) the viewer is closed with code 1008 (``CLOSE_TOO_SLOW``). Nothing a
slow viewer does costs the others more than a dictionary update.

Inbound, each viewer has a token bucket (``inbound_rate`` a second, ``inbound_burst`` deep):
a message past it is dropped unread with a ``rate_limited`` error, and ``inbound_burst``
dropped in a row close the viewer with 1008 (a flood), before any of it is parsed.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import ServerConnection
from websockets.protocol import State

from flowdeck.pipeline.serve.channels import Channel, Message, Sub
from flowdeck.pipeline.serve.metrics import FeedMetrics
from flowdeck.pipeline.serve.protocol import ProtocolError, envelope, merge_records

if TYPE_CHECKING:
    from flowdeck.pipeline.serve.feed import FeedLimits

log = logging.getLogger("flowdeck.feed")

CLOSE_TOO_SLOW = 1008  # policy violation: the viewer did not keep up


class Viewer:
    """One websocket connection: its subscriptions, and a queue only while it is slow."""

    _ids = itertools.count(1)

    def __init__(
        self,
        conn: ServerConnection,
        *,
        limits: FeedLimits,
        metrics: FeedMetrics,
        channels: Mapping[str, Channel],
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``channels`` is the feed's, to leave on close; ``spawn`` runs the closing
        handshake as a task the server tracks (and cancels on stop)."""
        self.id = next(self._ids)
        self.conn = conn
        self.limits = limits
        self.metrics = metrics
        self.channels = channels
        self.spawn = spawn
        self.subs: dict[str, Sub] = {}
        self.pending: OrderedDict[Any, Message] = OrderedDict()
        self.pending_bytes = 0
        self.writer: asyncio.Task | None = None
        self.closed = False
        self.acks: dict[str, deque[int]] = {}  # channel -> seqs written, not yet acked
        self._ack_wake = asyncio.Event()
        self._uniq = itertools.count()
        self.in_flight = 0
        self.clock = clock
        self._tokens = float(limits.inbound_burst)
        self._refilled = clock()
        self._refused = 0  # messages dropped in a row by the rate limit
        self.flood_reason: str | None = None

    # ------------------------------------------------------------ sending

    def deliver(self, m: Message) -> bool:
        """Write now if the socket keeps up (True), else queue with conflation (False)."""
        if self.closed:
            return False
        if self.pending or self.conn.paused or (self.acks and self._ack_blocked()):
            self._enqueue(m)
            return False
        return self._write(m)

    def _write(self, m: Message) -> bool:
        conn = self.conn
        if conn.protocol.state is not State.OPEN or conn.transport.is_closing():
            self._lost()
            return False
        try:
            conn.protocol.send_text(m.payload)
            conn.send_data()
        except Exception:  # a socket that fails under us: the handler sees it close
            self._lost()
            return False
        if self.acks and m.seq and m.type == "delta":
            unacked = self.acks.get(m.channel)
            if unacked is not None:
                unacked.append(m.seq)
        return True

    def _enqueue(self, m: Message) -> None:
        if m.ckey is None:
            key: Any = next(self._uniq)
        else:
            key = (m.channel, m.ckey)
            old = self.pending.pop(key, None)
            if old is not None:
                self.pending_bytes -= len(old.payload)
                self.metrics.drop("conflated")
                if m.merge and old.merge and old.type == m.type == "delta":
                    data = merge_records(old.content(), m.content())
                    m = Message(
                        m.channel,
                        m.type,
                        m.seq,
                        m.ts,
                        data,
                        m.ckey,
                        envelope(m.type, m.channel, m.seq, m.ts, data),
                        True,
                    )
        self.pending[key] = m
        self.pending_bytes += len(m.payload)
        lim = self.limits
        if len(self.pending) > lim.max_pending or self.pending_bytes > lim.max_pending_bytes:
            self.close_slow()
        elif self.writer is None:
            self.writer = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        """Write the queue as the socket drains (and as acks arrive), oldest first."""
        try:
            while self.pending and not self.closed:
                if self.conn.paused:
                    await self.conn.drain()
                    continue
                if self.acks and self._ack_blocked():
                    self._ack_wake.clear()
                    await self._ack_wake.wait()
                    continue
                _, m = self.pending.popitem(last=False)
                self.pending_bytes -= len(m.payload)
                if self._write(m):
                    self.metrics.sent(m.channel or "-", 1)
        except Exception:  # connection lost while waiting: the handler cleans up
            self._lost()
        finally:
            self.writer = None

    def _ack_blocked(self) -> bool:
        window = self.limits.ack_window
        return any(len(unacked) >= window for unacked in self.acks.values())

    def ack(self, channel: str, seq: int) -> None:
        """The viewer has processed everything up to ``seq`` on ``channel``."""
        unacked = self.acks.get(channel)
        if unacked is None:
            raise ProtocolError(
                "bad_request", f'channel {channel!r} is not subscribed with "ack": true'
            )
        while unacked and unacked[0] <= seq:
            unacked.popleft()
        self._ack_wake.set()

    def reply(self, type_: str, data: dict, channel: str | None = None) -> None:
        """A reply, error or notice for this viewer only (never conflated)."""
        now = time.time()
        m = Message(channel, type_, 0, now, data, None, envelope(type_, channel, 0, now, data))
        if self.deliver(m):
            self.metrics.sent("-", 1)

    # ------------------------------------------------------------ inbound rate

    def over_rate(self) -> bool:
        """Take one inbound message from the bucket; True if it must be dropped (the viewer
        was told; when it keeps flooding it is marked closed with ``flood_reason`` set, and
        the handler closes the connection with 1008)."""
        lim = self.limits
        now = self.clock()
        self._tokens = min(
            float(lim.inbound_burst), self._tokens + (now - self._refilled) * lim.inbound_rate
        )
        self._refilled = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            self._refused = 0
            return False
        self._refused += 1
        self.metrics.drop("rate_limited")
        if self._refused >= lim.inbound_burst:
            self._lost()
            self.flood_reason = f"flooding: over {lim.inbound_rate:g} messages/s"
            log.warning("feed viewer %s at %s closed: %s", self.id, self.conn.remote_address,
                        self.flood_reason)
        else:
            self.reply("error", {"id": None, "code": "rate_limited", "message":
                                 f"over {lim.inbound_rate:g} messages/s: message dropped"})
        return True

    # ------------------------------------------------------------ closing

    def close_slow(self) -> None:
        """Disconnect a viewer that fell too far behind: 1008 with the reason."""
        n, size = len(self.pending), self.pending_bytes
        self.metrics.drop("slow_viewer", n)
        self.pending.clear()
        self.pending_bytes = 0
        self._lost()
        reason = f"viewer too slow: {n} messages ({size // 1024} KiB) queued"
        log.warning("feed viewer %s at %s closed: %s", self.id, self.conn.remote_address, reason)
        self.spawn(self.conn.close(CLOSE_TOO_SLOW, reason))

    def _lost(self) -> None:
        if not self.closed:
            self.closed = True
            self.detach()
            self._ack_wake.set()

    def detach(self) -> None:
        for name in list(self.subs):
            ch = self.channels.get(name)
            if ch is not None:
                ch.subscribers.pop(self, None)
        self.subs.clear()

    def drop_pending(self, channel: str) -> None:
        for key in [k for k, m in self.pending.items() if m.channel == channel]:
            self.pending_bytes -= len(self.pending.pop(key).payload)


__all__ = ["CLOSE_TOO_SLOW", "Viewer"]
