"""Event fan-out between daemons through Redis Streams: one stream per feed channel.

Every daemon of a deployment publishes the deltas of the flows it runs to Redis, and
reads every channel's stream back, so a viewer attached to any node sees every flow's
records, issues and actions (``docs/architecture.md``, *Fan-out between nodes*).

- **One stream per channel** (``<prefix>ch:<channel>``). A delta is added with
  ``XADD key MAXLEN ~ N 0-*``: Redis gives it the entry id ``0-<seq>``, the stream's
  next sequence number, atomically. That number *is* the channel's ``seq`` on every
  node: no counter of ours to keep in step, and it survives trimming (the stream keeps
  its last id), so a viewer resumes on another node with the same ``seq``.
- ``MAXLEN ~ N`` (N = the feed's replay backlog) bounds Redis' memory like the feed's
  own buffer; a node that starts reads each stream from the start, which fills its
  replay buffer, so a viewer can resume on a node that restarted.
- Every node (the publisher too) delivers a delta to its viewers only when it reads
  it back from the stream, so order and numbering are the same everywhere.
- A set ``<prefix>channels`` names every channel that has a stream (new flows of other
  nodes appear in it); ``<prefix>epoch`` is the deployment's feed epoch.
- Redis down: :meth:`publish` returns False and the feed publishes locally (its own
  flows only, a local epoch); one reconnect loop brings the fan-out back, and the feed
  then resyncs its viewers (``gap`` + snapshot) onto the streams. A node that published
  locally meanwhile adds a *gap marker* to those channels, so the other nodes' viewers
  of them get a snapshot too (they missed those events).

Pub/sub was not used: it keeps nothing, so a node that was briefly away, or a viewer
resuming on another node, could not get what it missed, and it numbers nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("flowdeck.fanout")

# Channel kinds that carry cluster-wide deltas (the others, caches and metrics, describe
# one node and stay local).
CLUSTER_KINDS = frozenset({"flows", "flow", "records", "quality", "recovery", "events"})


@dataclass(slots=True)
class Entry:
    """One stream entry: a delta (``data`` is its JSON) or a gap marker (``gap`` says why)."""

    channel: str
    seq: int
    ts: float
    data: bytes | None
    ckey: Any
    node: str
    gap: str | None = None


def encode_ckey(ckey: Any) -> str:
    """A conflation key as JSON (tuples become lists; ``decode_ckey`` makes them tuples)."""
    return json.dumps(ckey, separators=(",", ":"), default=str)


def decode_ckey(raw: str | bytes | None) -> Any:
    if raw is None:
        return None
    value = json.loads(raw)

    def tup(v: Any) -> Any:
        return tuple(tup(x) for x in v) if isinstance(v, list) else v

    return tup(value)


def _seq(entry_id: bytes | str) -> int:
    s = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(s.partition("-")[2])


class Fanout:
    """Publishes deltas to, and reads them from, per-channel Redis streams.

    The feed sets :attr:`on_entries` (entries read, in stream order, called on the loop
    without awaiting in between), :attr:`on_down` (reason), :attr:`on_up` (the
    entries of a full re-read, to apply after a resync) and :attr:`on_known` (every
    channel of the deployment, when new ones appear).
    """

    def __init__(self, url: str, prefix: str, *, node: str, maxlen: int = 1000,
                 max_bytes: int = 8 * 1024 * 1024, timeout: float = 5.0, block_s: float = 1.0, retry_s: float = 1.0,
                 clock: Callable[[], float] = time.time) -> None:
        import redis.asyncio as aioredis  # optional dependency: only with cache.redis_url

        self.url = url
        self.prefix = prefix
        self.node = node
        self.maxlen = maxlen
        self.max_bytes = max_bytes
        self._avg: dict[str, float] = {}  # channel -> moving average of an entry's bytes
        self.timeout = timeout
        self.block_s = block_s
        self.retry_s = retry_s
        self.clock = clock
        self.client = aioredis.Redis.from_url(url, socket_timeout=timeout,
                                              socket_connect_timeout=timeout)
        # XREAD BLOCK holds its connection for block_s: its own client, a longer timeout.
        self.reader = aioredis.Redis.from_url(url, socket_timeout=block_s + timeout,
                                              socket_connect_timeout=timeout)
        self.up = False
        self.epoch: str | None = None
        self.down_since: float | None = None
        self.last_error: str | None = None
        self.on_entries: Callable[[list[Entry]], None] = lambda entries: None
        self.on_down: Callable[[str], None] = lambda reason: None
        self.on_up: Callable[[list[Entry]], None] = lambda entries: None
        self.on_known: Callable[[list[str]], None] = lambda channels: None
        self._announced = False
        self.published = 0
        self.received = 0
        self.errors = 0
        self.outages = 0
        self.lag_s = 0.0  # publish-to-read delay of the newest entry read
        self._ids: dict[str, str] = {}  # stream key -> last id read
        self._known: set[str] = set()  # channels named in <prefix>channels
        self._outbox: deque[tuple[str, bytes, float, Any]] = deque()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._local_while_down: set[str] = set()
        self._stopping = False

    # ------------------------------------------------------------ keys

    def key(self, channel: str) -> str:
        return f"{self.prefix}ch:{channel}"

    @property
    def channels_key(self) -> str:
        return f"{self.prefix}channels"

    # ------------------------------------------------------------ lifecycle

    async def start(self, channels: list[str]) -> list[Entry]:
        """Connect, register ``channels`` (this node's), and read every stream from its
        start: the entries returned fill the feed's replay buffers. Redis away at start is
        an outage (empty list, degraded), not an error."""
        self._known.update(channels)
        try:
            entries = await self._connect()
        except Exception as exc:  # any failure to reach Redis: run degraded, retry
            self._failed(exc)
            self._spawn(self._reconnect())
            return []
        self._spawn(self._read_loop())
        self._spawn(self._send_loop())
        return entries

    async def stop(self) -> None:
        self._stopping = True
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for c in (self.client, self.reader):
            with contextlib.suppress(Exception):
                await c.aclose()

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _connect(self) -> list[Entry]:
        """Ping, agree on the epoch, register our channels, read every stream from 0."""
        c = self.client
        await c.ping()
        await c.set(f"{self.prefix}epoch", uuid.uuid4().hex[:12], nx=True)
        raw = await c.get(f"{self.prefix}epoch")
        self.epoch = raw.decode() if isinstance(raw, bytes) else raw
        if self._known:
            await c.sadd(self.channels_key, *sorted(self._known))
        await self._refresh_known()
        self._ids = {self.key(ch): "0-0" for ch in self._known}
        entries: list[Entry] = []
        while True:
            batch = await self._xread(block=False)
            if not batch:
                break
            entries.extend(batch)
        self.up = True
        self.down_since = None
        return entries

    async def _refresh_known(self) -> None:
        """Channels other nodes registered (their flows): read their streams from 0."""
        async with self.client.pipeline(transaction=False) as p:
            p.smembers(self.channels_key)
            p.get(f"{self.prefix}epoch")
            names, epoch = await p.execute()
        epoch = epoch.decode() if isinstance(epoch, bytes) else epoch
        if self.up and epoch != self.epoch:
            # Redis lost our keys (flushed, or restarted empty): every stream's numbering
            # starts over, so go through the outage path: reconnect, re-read, resync.
            raise ConnectionError(f"the fan-out's keys under {self.prefix!r} were lost")
        new = []
        for n in names:
            name = n.decode() if isinstance(n, bytes) else n
            if name not in self._known:
                self._known.add(name)
                new.append(name)
            self._ids.setdefault(self.key(name), "0-0")
        if new or not self._announced:
            self._announced = True
            self.on_known(sorted(self._known))

    # ------------------------------------------------------------ publishing

    def publish(self, channel: str, data: bytes, ts: float, ckey: Any) -> bool:
        """Queue a delta for its channel's stream; False while Redis is away (the caller
        then delivers it locally)."""
        if not self.up:
            self._local_while_down.add(channel)
            return False
        self._outbox.append((channel, data, ts, ckey))
        self._wake.set()
        return True

    async def _send_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._outbox and self.up:
                batch: list[tuple[str, bytes, float, Any]] = []  # a pipeline: <= 500, ~1 MiB
                size = 0
                while self._outbox and len(batch) < 500 and size < 1024 * 1024:
                    item = self._outbox.popleft()
                    batch.append(item)
                    size += len(item[1])
                try:
                    await self._send(batch)
                except Exception as exc:
                    # Not known to be in Redis: the feed delivers them locally, and the
                    # resync after recovery covers whatever went either way.
                    self._local_while_down.update(ch for ch, *_ in batch)
                    self._outbox.extendleft(reversed(batch))
                    self._down(exc)
                    break

    async def _send(self, batch: list[tuple[str, bytes, float, Any]]) -> None:
        new = sorted({ch for ch, *_ in batch} - self._known)
        async with self.client.pipeline(transaction=False) as p:
            if new:
                p.sadd(self.channels_key, *new)
            for channel, data, ts, ckey in batch:
                n = self.stream_len(channel, len(data))
                # "~" trims whole stream nodes (100 entries): cheap, and right for the
                # count bound; a stream of large entries is trimmed exactly to its few.
                p.xadd(self.key(channel),
                       {"ts": repr(ts), "d": data, "k": encode_ckey(ckey), "n": self.node},
                       id="0-*", maxlen=n, approximate=n >= self.maxlen)
            await p.execute()
        self._known.update(new)
        for ch in new:
            self._ids.setdefault(self.key(ch), "0-0")
        self.published += len(batch)

    def stream_len(self, channel: str, size: int) -> int:
        """How many entries the channel's stream keeps: the replay backlog's count, or
        fewer when its entries are large (records batches), so a stream holds about
        ``max_bytes`` like the feed's own buffer."""
        avg = self._avg.get(channel)
        avg = size if avg is None else avg * 0.9 + size * 0.1
        self._avg[channel] = avg
        return max(16, min(self.maxlen, int(self.max_bytes // max(avg, 1.0))))

    def take_unsent(self) -> list[tuple[str, bytes, float, Any]]:
        """Deltas accepted while up but not written when Redis went away."""
        out = list(self._outbox)
        self._outbox.clear()
        return out

    # ------------------------------------------------------------ reading

    async def _xread(self, block: bool) -> list[Entry]:
        if not self._ids:
            if block:
                await asyncio.sleep(self.block_s)
            return []
        streams: Any = dict(self._ids)
        resp: Any = await self.reader.xread(
            streams, count=1000, block=int(self.block_s * 1000) if block else None
        )
        out: list[Entry] = []
        now = self.clock()
        for key, items in resp or []:
            k = key.decode() if isinstance(key, bytes) else key
            channel = k[len(self.prefix) + 3:]
            for entry_id, fields in items:
                f = {(a.decode() if isinstance(a, bytes) else a): b for a, b in fields.items()}
                ts = float(f.get("ts", b"0"))
                node = f.get("n", b"")
                gap = f.get("g")
                out.append(Entry(
                    channel, _seq(entry_id), ts, f.get("d"), decode_ckey(f.get("k")),
                    node.decode() if isinstance(node, bytes) else node,
                    gap.decode() if isinstance(gap, bytes) else gap,
                ))
                self._ids[k] = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                self.lag_s = max(0.0, now - ts)
        self.received += len(out)
        return out

    async def _read_loop(self) -> None:
        last_refresh = 0.0
        while True:
            try:
                if time.monotonic() - last_refresh >= self.block_s:
                    await self._refresh_known()
                    last_refresh = time.monotonic()
                entries = await self._xread(block=True)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._down(exc)
                return
            if entries:
                self.on_entries(entries)

    # ------------------------------------------------------------ outages

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        self.last_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        if self.down_since is None:
            self.down_since = self.clock()

    def _down(self, exc: BaseException) -> None:
        """Redis failed under the reader or the sender: degrade once, reconnect."""
        self._failed(exc)
        if not self.up:
            return
        self.up = False
        self.outages += 1
        log.warning("event fan-out through Redis unavailable (%s): this node's viewers see "
                    "its own flows only until it answers again", self.last_error)
        for t in list(self._tasks):
            if t is not asyncio.current_task():
                t.cancel()
        self.on_down(f"event fan-out unavailable ({self.last_error}): "
                     "this node's flows only")
        if not self._stopping:
            self._spawn(self._reconnect())

    async def _reconnect(self) -> None:
        while True:
            await asyncio.sleep(self.retry_s)
            try:
                await self.client.ping()
                await self._mark_gaps()  # first, so this node reads its own markers below
                entries = await self._connect()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.up = False
                self._failed(exc)
                continue
            log.warning("event fan-out through Redis is back: resyncing viewers")
            self.on_up(entries)
            with contextlib.suppress(Exception):  # published locally while reconnecting
                await self._mark_gaps()
            self._spawn(self._read_loop())
            self._spawn(self._send_loop())
            if self._outbox:
                self._wake.set()
            return

    async def _mark_gaps(self) -> None:
        """Tell the other nodes' viewers of the channels this node published on only
        locally: a gap marker in each of their streams (one seq, no delta)."""
        if not self._local_while_down:
            return
        chans = sorted(self._local_while_down)
        now = self.clock()
        reason = f"node {self.node} was cut off from the fan-out; events of its flows missed"
        async with self.client.pipeline(transaction=False) as p:
            p.sadd(self.channels_key, *chans)
            for ch in chans:
                p.xadd(self.key(ch), {"ts": repr(now), "g": reason, "n": self.node},
                       id="0-*", maxlen=self.maxlen, approximate=True)
            await p.execute()
        self._local_while_down.clear()

    # ------------------------------------------------------------ figures

    def status(self) -> dict[str, Any]:
        """What the feed says about the fan-out (``hello``, ``/metrics``, ``flowdeck status``)."""
        return {"backend": "redis-streams", "up": self.up, "degraded": not self.up,
                "node": self.node, "epoch": self.epoch, "published": self.published,
                "received": self.received, "errors": self.errors, "outages": self.outages,
                "lag_s": round(self.lag_s, 3), "last_error": self.last_error,
                "down_since": self.down_since}

    async def delete_keys(self) -> int:
        """Every key under the prefix (tests, and an operator clearing a deployment)."""
        names = [k async for k in self.client.scan_iter(match=f"{self.prefix}*", count=1000)]
        n = 0
        for i in range(0, len(names), 500):
            n += int(await self.client.delete(*names[i:i + 500]))
        return n


__all__ = ["CLUSTER_KINDS", "Entry", "Fanout", "decode_ckey", "encode_ckey"]
