"""The feed's channels: sequence numbers, replay backlog, and how a delta reaches viewers.

:class:`Channels` maps each channel name to its :class:`Channel` (per-channel ``seq``,
subscribers and bounded replay buffer). ``Channels.publish`` gives a delta the channel's
next ``seq``, encodes it **once**, keeps it in the replay buffer and fans it out: every
subscriber of the channel gets those same bytes (subscribers with filters share one
encoding per distinct filter). ``replay`` sends what a viewer missed after a seq (for
``resume_from`` and after a snapshot); ``resync`` takes every subscription back out after
lost events, with a gap notice, for the server to send each a fresh snapshot.

What happens to a message once a viewer has it (writing, queueing, conflation) is
``viewer.py``'s concern.
"""

from __future__ import annotations

import itertools
import json
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flowdeck.pipeline.serve.metrics import FeedMetrics
from flowdeck.pipeline.serve.protocol import (
    MERGE_RECORDS,
    Filter,
    all_channels,
    channel_kind,
    envelope,
    envelope_raw,
)

if TYPE_CHECKING:
    from flowdeck.pipeline.serve.feed import FeedLimits
    from flowdeck.pipeline.serve.viewer import Viewer


@dataclass(slots=True)
class Message:
    """One encoded server message; ``payload`` is what goes on the wire."""

    channel: str | None
    type: str
    seq: int
    ts: float
    data: Any
    ckey: Any  # conflation key, or None
    payload: bytes
    merge: bool = False

    def content(self) -> Any:
        """The data, decoded from the payload for messages kept as bytes only."""
        return self.data if self.data is not None else json.loads(self.payload)["data"]


@dataclass(slots=True)
class Sub:
    """One viewer's subscription to one channel."""

    filter: Filter | None
    ack: bool


class Channel:
    """A channel's sequence counter, subscribers and replay buffer."""

    __slots__ = ("name", "kind", "flow", "seq", "subscribers", "buffer", "buffer_bytes", "label",
                 "complete_from")

    def __init__(self, name: str, kind: str, flow: str | None) -> None:
        self.name = name
        self.kind = kind
        self.flow = flow
        self.seq = 0
        self.subscribers: dict[Viewer, Sub] = {}
        self.buffer: deque[Message] = deque()
        self.buffer_bytes = 0
        # The first seq from which the buffer misses nothing (a fan-out gap marker or a
        # jump in the stream moves it): a resume from before it gets a snapshot.
        self.complete_from = 1

    def reset(self) -> None:
        """Forget seq and buffer (the fan-out numbers the channel again from its stream)."""
        self.seq = 0
        self.buffer.clear()
        self.buffer_bytes = 0
        self.complete_from = 1

    def remember(self, msg: Message, limits: FeedLimits) -> None:
        """Keep the encoded message for resume (bytes only: no parsed data to keep alive)."""
        msg = Message(
            msg.channel, msg.type, msg.seq, msg.ts, None, msg.ckey, msg.payload, msg.merge
        )
        self.buffer.append(msg)
        self.buffer_bytes += len(msg.payload)
        while self.buffer and (
            len(self.buffer) > limits.replay_messages or self.buffer_bytes > limits.replay_bytes
        ):
            self.buffer_bytes -= len(self.buffer.popleft().payload)

    def covers(self, after: int) -> bool:
        """Whether every message after seq ``after`` is still in the replay buffer."""
        if after < 0 or after > self.seq or after + 1 < self.complete_from:
            return False
        if after == self.seq:
            return True
        return bool(self.buffer) and self.buffer[0].seq <= after + 1

    def since(self, after: int) -> Iterator[Message]:
        if not self.buffer or after >= self.seq:
            return iter(())
        start = max(0, after + 1 - self.buffer[0].seq)
        if self.complete_from > 1:  # seqs may skip (gap markers): find the first by seq
            return (m for m in self.buffer if m.seq > after)
        return itertools.islice(self.buffer, start, None)


class Channels(dict[str, Channel]):
    """Every channel of the feed by name (a plain dict, so lookups stay C-speed), and
    publishing to them."""

    def __init__(self, limits: FeedLimits, metrics: FeedMetrics) -> None:
        super().__init__()
        self.limits = limits
        self.metrics = metrics

    def open(self, flows: list[str]) -> None:
        """One channel per global channel and per flow (``protocol.all_channels``)."""
        for name in all_channels(flows):
            kind, flow = channel_kind(name, flows)
            self[name] = Channel(name, kind, flow)

    def seqs(self) -> dict[str, int]:
        """Each channel's latest seq."""
        return {name: ch.seq for name, ch in self.items()}

    def publish(self, ch: Channel, data: Any, ckey: Any = None) -> Message:
        """A delta on a channel: next seq, encoded once, remembered, fanned out."""
        ch.seq += 1
        now = time.time()
        msg = Message(
            ch.name,
            "delta",
            ch.seq,
            now,
            data,
            ckey,
            envelope("delta", ch.name, ch.seq, now, data),
            ckey is MERGE_RECORDS,
        )
        ch.remember(msg, self.limits)
        if ch.subscribers:
            self._fanout(ch, msg)
        return msg

    def ingest(self, ch: Channel, seq: int, ts: float, data: bytes, ckey: Any) -> Message | None:
        """A delta read back from the fan-out, at the seq its stream gave it (``data`` is
        its encoded JSON: framed, not re-encoded). None for one already seen."""
        if seq <= ch.seq:
            return None
        if seq != ch.seq + 1:
            ch.complete_from = seq
        ch.seq = seq
        msg = Message(ch.name, "delta", seq, ts, None, ckey,
                      envelope_raw("delta", ch.name, seq, ts, data), ckey == MERGE_RECORDS)
        ch.remember(msg, self.limits)
        if ch.subscribers:
            self._fanout(ch, msg)
        return msg

    def skip(self, ch: Channel, seq: int) -> bool:
        """A fan-out gap marker at ``seq``: nothing after it replays from before it.
        True if the channel had not seen it (its viewers must resync)."""
        if seq <= ch.seq:
            return False
        ch.seq = seq
        ch.complete_from = seq + 1
        return True

    def _fanout(self, ch: Channel, msg: Message) -> None:
        filtered: dict[Filter, Message | None] = {}
        written = 0
        for viewer, sub in list(ch.subscribers.items()):
            m: Message | None = msg
            if sub.filter is not None:
                if sub.filter in filtered:
                    m = filtered[sub.filter]
                else:
                    m = filtered[sub.filter] = self._filtered(ch, msg, sub.filter)
                if m is None:
                    continue
            if viewer.deliver(m):
                written += 1
        if written:
            self.metrics.sent(ch.name, written)

    @staticmethod
    def _filtered(ch: Channel, msg: Message, flt: Filter) -> Message | None:
        content = msg.content()
        data = flt.delta(ch.kind, content)
        if data is None:
            return None
        if data is content:
            return msg
        return Message(
            msg.channel,
            msg.type,
            msg.seq,
            msg.ts,
            data,
            msg.ckey,
            envelope(msg.type, msg.channel, msg.seq, msg.ts, data),
            msg.merge,
        )

    def replay(self, viewer: Viewer, ch: Channel, sub: Sub, after: int) -> None:
        """Send the viewer what the channel published after seq ``after`` (through its filter)."""
        written = 0
        for m in list(ch.since(after)):
            fm = m if sub.filter is None else self._filtered(ch, m, sub.filter)
            if fm is not None and viewer.deliver(fm):
                written += 1
        if written:
            self.metrics.sent(ch.name, written)

    def resync(
        self,
        viewers: Iterable[Viewer],
        reason: str,
        resubscribe: Callable[[Viewer, Channel, Sub], object],
        only: Callable[[Channel], bool] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """After lost events: every subscription (of the channels ``only`` accepts) gets a
        gap notice (with ``extra``, e.g. a new epoch), then ``resubscribe`` (the server's
        fresh snapshot, which puts the subscription back: no duplicates)."""
        for viewer in list(viewers):
            for name, sub in list(viewer.subs.items()):
                ch = self[name]
                if only is not None and not only(ch):
                    continue
                ch.subscribers.pop(viewer, None)  # back in after the snapshot, no duplicates
                viewer.subs.pop(name, None)
                viewer.drop_pending(name)
                viewer.reply("gap", {"reason": reason, "seq": ch.seq, **(extra or {})}, name)
                resubscribe(viewer, ch, sub)

__all__ = ["Channel", "Channels", "Message", "Sub"]
