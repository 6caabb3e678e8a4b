"""Layered caches for what viewers read: L1 memory, L2 Redis, L3 database, L4 HTTP.

DESIGN.md section 2. A read (``latest``, ``history``) looks in each layer in
turn and fills the ones above it on the way back:

- **L1** is in-process, one ``cachetools.TTLCache`` (TTL + LRU) per flow. An
  entry is *fresh* for ``l1_ttl`` seconds, then *stale* for ``l1_stale`` more:
  a stale hit is answered at once while one background load refreshes it
  (stale-while-revalidate). Concurrent misses for the same entry share one
  load (single-flight), so a burst of readers never stampedes the database.
- **L2** is Redis (``redis.asyncio``), shared by every daemon of a deployment:
  one hash per (flow, key) under ``<namespace>:c:``, so invalidating a key
  drops all its variants with one ``DEL``. Invalidations are published on
  ``<namespace>:invalidate`` and every other daemon drops its L1 copies when
  the message arrives. If Redis goes away the caches keep answering from L1
  and L3, count the errors, report the outage once and reconnect by themselves.
- **L3** is the database: the ``latest`` table, upserted in the same
  transaction as the records, and the roll-up tables that history reads.
  Counting it here means: a load that found rows is an L3 hit.
- **L4** is the HTTP edge. The read API asks :meth:`Caches.http_response` for
  an encoded body and its ETag (kept in L1 and invalidated with the data it
  came from) and answers ``If-None-Match`` with 304; :meth:`http_policy` gives
  each endpoint's ``Cache-Control``. A 304 is an L4 hit, a 200 a miss.

Invalidation is by event and cascades: when a batch stores new values for some
keys, :meth:`Caches.invalidate` drops those keys (and the flow-wide entries
that include them) from L1 and L2, drops the HTTP bodies built from them, and
tells the other daemons. Time-based expiry applies in every layer as well.

Time is injected (``timer``), so expiry is testable without sleeping. Methods
are called on the event loop; database loads run on the ``reader`` executor.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import json
import logging
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from cachetools import TTLCache

log = logging.getLogger("flowdeck.cache")

LAYERS = ("l1", "l2", "l3", "l4")
LAYER_NAMES = {"l1": "memory", "l2": "redis", "l3": "database", "l4": "http"}
MAX_REWARM = 1000  # entries remembered per flow, between runs, for pre-warming
FLOW_WIDE = None  # the "key" of entries that cover every key of a flow (all latest values)
ALL_FLOWS = "*"  # the "flow" of entries that cover every flow

# (kind, key, variant): what an entry is, which series key it belongs to (or FLOW_WIDE),
# and the parameters that distinguish it (a history's metric and step, an HTTP query).
EntryKey = tuple[str, "str | None", str]


@dataclass
class CacheSettings:
    """What the caches need from the configuration (``cache:`` in the flow file)."""

    l1_ttl: float = 30.0
    l1_size: int = 10_000
    l1_stale: float = 5.0
    redis_url: str | None = None
    namespace: str = "flowdeck"
    l2_ttl: float = 300.0
    l2_timeout: float = 0.25
    http: dict[str, tuple[float, float]] = field(default_factory=dict)  # kind -> (max_age, swr)
    prewarm_keys: int = 20
    history_points: int = 120


@dataclass
class LayerStats:
    """Counters of one layer. ``hits``/``misses`` count lookups; the rest count entries."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    invalidations: int = 0
    errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "evictions": self.evictions,
                "invalidations": self.invalidations, "errors": self.errors}


class _Entry:
    """A cached value and the moment it turns stale."""

    __slots__ = ("value", "fresh_until")

    def __init__(self, value: Any, fresh_until: float) -> None:
        self.value = value
        self.fresh_until = fresh_until


class _CountingTTLCache(TTLCache):
    """A TTLCache that counts what it throws away: LRU evictions and expired entries."""

    def __init__(self, maxsize: int, ttl: float, timer: Callable[[], float],
                 stats: LayerStats) -> None:
        super().__init__(maxsize, ttl, timer)
        self._stats = stats
        # TTLCache's own structures (cachetools 5 to 8 name them so), for ``hit``: the
        # per-key expiry links in LRU order and the values. Without them, ``hit`` goes
        # through ``__getitem__`` (same answer, a few more calls).
        links = getattr(self, "_TTLCache__links", None)
        data = getattr(self, "_Cache__data", None)
        fast = isinstance(links, OrderedDict) and isinstance(data, dict)
        self._links: OrderedDict | None = links if fast else None
        self._data: dict = data if fast and data is not None else {}

    def hit(self, key: EntryKey, now: float) -> Any:
        """``self[key]`` at the time ``now`` (the caller read the clock), None if absent
        or expired: TTLCache's lookup (the key becomes the most recently used, an expired
        entry is left for ``expire`` to count) in one call instead of four."""
        links = self._links
        if links is None:
            try:
                return self[key]
            except KeyError:
                return None
        link = links.get(key)
        if link is None:
            return None
        links.move_to_end(key)
        return self._data[key] if now < link.expires else None

    def popitem(self):  # cachetools calls this to make room (least recently used first)
        item = super().popitem()
        self._stats.evictions += 1
        return item

    def expire(self, time=None):
        expired = super().expire(time)
        self._stats.evictions += len(expired)
        return expired


class MemoryCache:
    """L1: per flow, TTL + LRU. Entries live ``ttl + stale`` seconds; fresh for ``ttl``."""

    def __init__(self, size: int, ttl: float, stale: float, timer: Callable[[], float],
                 stats: LayerStats) -> None:
        self.size = size
        self.ttl = ttl
        self.stale = stale
        self.timer = timer
        self.stats = stats
        self.flows: dict[str, _CountingTTLCache] = {}

    def _flow(self, flow: str) -> _CountingTTLCache:
        c = self.flows.get(flow)
        if c is None:
            c = self.flows[flow] = _CountingTTLCache(self.size, self.ttl + self.stale,
                                                     self.timer, self.stats)
        return c

    def get(self, flow: str, ek: EntryKey, now: float | None = None) -> _Entry | None:
        """The entry (fresh or stale) at ``now`` (default: the timer's time), or None."""
        c = self.flows.get(flow)
        if c is None:
            return None
        return c.hit(ek, self.timer() if now is None else now)

    def put(self, flow: str, ek: EntryKey, value: Any) -> None:
        self._flow(flow)[ek] = _Entry(value, self.timer() + self.ttl)

    def drop(self, flow: str, keys: Iterable[str] | None = None,
             kinds: Iterable[str] | None = None) -> list[EntryKey]:
        """Drop a flow's entries for these keys and its flow-wide ones (all if keys is None)."""
        c = self.flows.get(flow)
        if c is None:
            return []
        wanted = None if keys is None else set(keys)
        kinds = None if kinds is None else set(kinds)
        gone = [ek for ek in list(c.keys())
                if (wanted is None or ek[1] is FLOW_WIDE or ek[1] in wanted)
                and (kinds is None or ek[0] in kinds)]
        for ek in gone:
            c.pop(ek, None)
        return gone

    def clear(self) -> int:
        n = sum(len(c) for c in self.flows.values())
        self.flows.clear()
        return n

    def __len__(self) -> int:
        for c in self.flows.values():
            c.expire()
        return sum(len(c) for c in self.flows.values())


class RedisCache:
    """L2: values shared between daemons, and the invalidation channel between them.

    Every call is guarded: an error marks Redis down, is counted, and the caller
    carries on without L2; one reconnect loop brings it back.
    """

    def __init__(self, url: str, namespace: str, ttl: float, timeout: float,
                 stats: LayerStats, node: str) -> None:
        import redis.asyncio as aioredis  # optional dependency: only with cache.redis_url

        self.url = url
        self.ns = namespace
        self.ttl = ttl
        self.stats = stats
        self.node = node
        self.channel = f"{namespace}:invalidate"
        self.client = aioredis.Redis.from_url(url, socket_timeout=timeout,
                                              socket_connect_timeout=timeout)
        self.up = False
        self.down_since: float | None = None
        self.last_error: str | None = None

    def hash_key(self, flow: str, key: str | None) -> str:
        return f"{self.ns}:c:{flow}:{'*' if key is FLOW_WIDE else 'k:' + key}"

    @staticmethod
    def field(ek: EntryKey) -> str:
        return f"{ek[0]}|{ek[2]}"

    async def get(self, flow: str, ek: EntryKey, now: float) -> tuple[bool, Any]:
        raw = await self.client.hget(self.hash_key(flow, ek[1]), self.field(ek))
        if raw is None:
            return False, None
        item = json.loads(raw)
        if item["e"] < now:  # expired variant of a hash that other variants keep alive
            return False, None
        return True, item["v"]

    async def put(self, flow: str, ek: EntryKey, value: Any, now: float) -> None:
        name = self.hash_key(flow, ek[1])
        body = json.dumps({"e": now + self.ttl, "v": value}, separators=(",", ":"))
        async with self.client.pipeline(transaction=False) as p:
            p.hset(name, self.field(ek), body)
            p.expire(name, max(1, int(self.ttl + 1)))
            await p.execute()

    async def invalidate(self, flow: str, keys: list[str] | None) -> int:
        """Delete these keys' hashes (and the flow-wide one), then tell the other daemons."""
        if keys is None:
            names = [k async for k in self.client.scan_iter(match=f"{self.ns}:c:{flow}:*",
                                                            count=1000)]
        else:
            names = [self.hash_key(flow, k) for k in keys] + [self.hash_key(flow, FLOW_WIDE)]
        deleted = 0
        async with self.client.pipeline(transaction=False) as p:
            for i in range(0, len(names), 500):
                p.delete(*names[i:i + 500])
            p.publish(self.channel, json.dumps({"node": self.node, "flow": flow, "keys": keys}))
            res = await p.execute()
        deleted = sum(int(r) for r in res[:-1])
        return deleted

    async def clear(self) -> int:
        names = [k async for k in self.client.scan_iter(match=f"{self.ns}:c:*", count=1000)]
        n = 0
        for i in range(0, len(names), 500):
            n += int(await self.client.delete(*names[i:i + 500]))
        await self.client.publish(self.channel, json.dumps({"node": self.node, "flow": None,
                                                            "keys": None}))
        return n

    async def size(self) -> int:
        n = 0
        async for _ in self.client.scan_iter(match=f"{self.ns}:c:*", count=1000):
            n += 1
        return n


class Caches:
    """The four layers behind one read interface, with their statistics."""

    def __init__(self, settings: CacheSettings, *, store=None, reader: Executor | None = None,
                 timer: Callable[[], float] = time.time,
                 emit: Callable[..., None] | None = None,
                 on_action: Callable[..., Awaitable[None]] | None = None,
                 settle: Callable[[str], Awaitable[None]] | None = None) -> None:
        self.settings = settings
        self.store = store
        self.reader = reader
        self.timer = timer
        self.emit = emit or (lambda *a, **k: None)
        self.on_action = on_action
        # Awaited before a flow's history is loaded from the store: the engine writes the
        # series that deferred runs still owe, so history has every value latest shows.
        self.settle = settle
        self.node = uuid.uuid4().hex[:12]
        self.stats = {layer: LayerStats() for layer in LAYERS}
        self._l1_stats = self.stats["l1"]  # the hit path's counter, one attribute away
        self.l1 = MemoryCache(settings.l1_size, settings.l1_ttl, settings.l1_stale, timer,
                              self.stats["l1"])
        self.l2: RedisCache | None = None
        self.l3_size = 0
        self.l2_size = 0
        # Reads per key, per flow (halved at every sample). Plain dicts: on the L1 hit path
        # ``counts[key] = get(key, 0) + 1`` measured 120 ns against 300 ns for a Counter's
        # ``+= 1`` (a dict subclass has no fast path for either subscript).
        self.hot: dict[str, dict[str, int]] = {}
        self.points: deque[dict] = deque(maxlen=settings.history_points)
        self._mark = {layer: (0, 0) for layer in LAYERS}
        self._inflight: dict[tuple[str, EntryKey], asyncio.Future] = {}
        self._generation: dict[str, int] = {}
        # What readers asked for since the flow's last run, and how to load it again.
        self._read_since_run: dict[str, dict[EntryKey, Callable]] = {}
        self._tasks: set[asyncio.Task] = set()
        self._reconnect: asyncio.Task | None = None
        self._listener: asyncio.Task | None = None
        self.on_remote_invalidation: Callable[[str | None, list | None], None] | None = None

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Connect L2 when configured. Redis being down at start is an outage, not an error."""
        if not self.settings.redis_url:
            return
        self.l2 = RedisCache(self.settings.redis_url, self.settings.namespace,
                             self.settings.l2_ttl, self.settings.l2_timeout,
                             self.stats["l2"], self.node)
        try:
            await self.l2.client.ping()
        except Exception as exc:  # any failure to reach Redis: carry on without L2
            self._l2_failed(exc)
            return
        self.l2.up = True
        self._listener = self._spawn(self._listen())

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.l2 is not None:
            with contextlib.suppress(Exception):
                await self.l2.client.aclose()

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------ reads

    def peek(self, flow: str, kind: str, key: str | None = FLOW_WIDE, variant: str = "") -> Any:
        """An L1 lookup only (fresh or stale), counted; None on a miss. The fast path."""
        e = self.l1.get(flow, (kind, key, variant))
        if e is None:
            self._l1_stats.misses += 1
            return None
        self._l1_stats.hits += 1
        return e.value

    async def get(self, flow: str, kind: str, key: str | None, variant: str,
                  load: Callable[[], Awaitable[Any]], *, hot: bool = True) -> Any:
        """The value through every layer: L1, then L2, then ``load()`` (the database).

        ``hot`` counts the read towards the key's hotness (pre-warming does not).
        """
        ek = (kind, key, variant)
        if hot:
            if key is not None:
                counts = self.hot.get(flow)
                if counts is None:
                    counts = self.hot[flow] = {}
                counts[key] = counts.get(key, 0) + 1
            recent = self._read_since_run.get(flow)
            if recent is None:
                recent = self._read_since_run[flow] = {}
            if len(recent) < MAX_REWARM:
                recent[ek] = load
        now = self.timer()  # one reading for the lookup and the freshness
        # MemoryCache.get and _CountingTTLCache.hit, inlined: this is the hit path.
        e = None
        c = self.l1.flows.get(flow)
        if c is not None:
            links = c._links
            if links is None:
                e = c.hit(ek, now)
            else:
                link = links.get(ek)
                if link is not None:
                    links.move_to_end(ek)
                    if now < link.expires:
                        e = c._data[ek]
        if e is not None:
            self._l1_stats.hits += 1
            if e.fresh_until <= now and (flow, ek) not in self._inflight:
                self._refresh(flow, ek, load)  # stale: answer now, refresh once behind it
            return e.value
        self._l1_stats.misses += 1
        fut = self._inflight.get((flow, ek))
        if fut is None:
            fut = self._refresh(flow, ek, load)
        return await asyncio.shield(fut)

    def _refresh(self, flow: str, ek: EntryKey, load, shared: bool = True) -> asyncio.Future:
        """Start the one load of an entry (single-flight); later callers share its future.

        ``shared`` entries go through L2 and count as L3 reads; others stay in L1.
        """
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._inflight[(flow, ek)] = fut
        self._spawn(self._load(flow, ek, load, fut, shared))
        return fut

    async def _load(self, flow: str, ek: EntryKey, load, fut: asyncio.Future,
                    shared: bool) -> None:
        generation = self._generation.get(flow, 0)
        try:
            found, value = await self._l2_get(flow, ek) if shared else (False, None)
            if not found:
                value = await load()
                if shared:
                    self.stats["l3"].hits += 1 if value else 0
                    self.stats["l3"].misses += 0 if value else 1
                    await self._l2_put(flow, ek, value)
            # An invalidation that arrived while loading means the value may predate it.
            if self._generation.get(flow, 0) == generation:
                self.l1.put(flow, ek, value)
            fut.set_result(value)
        except Exception as exc:
            fut.set_exception(exc)
            fut.exception()  # a stale refresh nobody awaits must not warn "never retrieved"
        finally:
            self._inflight.pop((flow, ek), None)

    async def _l2_get(self, flow: str, ek: EntryKey) -> tuple[bool, Any]:
        l2 = self.l2
        if l2 is None or not l2.up:
            return False, None
        try:
            found, value = await l2.get(flow, ek, self.timer())
        except Exception as exc:
            self._l2_failed(exc)
            return False, None
        if found:
            self.stats["l2"].hits += 1
        else:
            self.stats["l2"].misses += 1
        return found, value

    async def _l2_put(self, flow: str, ek: EntryKey, value: Any) -> None:
        l2 = self.l2
        if l2 is None or not l2.up:
            return
        try:
            await l2.put(flow, ek, value, self.timer())
        except Exception as exc:
            self._l2_failed(exc)

    # ------------------------------------------------------------ the reads viewers make

    async def _read(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.reader, fn, *args)

    async def latest(self, flow: str, key: str | None = None, *, hot: bool = True) -> list[dict]:
        """The newest validated value of every key of a flow (or of one key)."""
        store = self.store
        return await self.get(flow, "latest", key, "",
                              lambda: self._read(_jsonable_rows, store.latest, flow, key),
                              hot=hot)

    async def history(self, flow: str, key: str, metric: str, since_ms: int = 0,
                      step_ms: int | None = None, limit: int = 2000) -> list[list]:
        """A metric's points; with a 1m or 1h step the L3 roll-ups are read."""
        store = self.store
        variant = f"{metric}|{since_ms}|{step_ms}|{limit}"

        def load():
            return [list(p) for p in store.history(flow, key, metric, since_ms, step_ms, limit)]

        async def settled():
            if self.settle is not None:
                await self.settle(flow)
            return await self._read(load)

        return await self.get(flow, "history", key, variant, settled)

    # ------------------------------------------------------------ L4: the HTTP edge

    def http_policy(self, kind: str) -> tuple[float, float] | None:
        """(max-age, stale-while-revalidate) seconds for an endpoint, if configured."""
        return self.settings.http.get(kind)

    async def http_response(self, flow: str, key: str | None, variant: str,
                            build: Callable[[], Awaitable[bytes]]) -> tuple[bytes, str]:
        """An encoded API body and its ETag, kept in L1 until its data changes."""

        async def load():
            body = await build()
            return body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"'

        ek = ("http", key, variant)
        e = self.l1.get(flow, ek)
        if e is not None and e.fresh_until > self.timer():
            self.stats["l1"].hits += 1
            return e.value
        self.stats["l1"].misses += 1
        fut = self._inflight.get((flow, ek))
        if fut is None:  # encoded bodies are cheap to rebuild: L1 only, not shared via Redis
            fut = self._refresh(flow, ek, load, shared=False)
        return await asyncio.shield(fut)

    def count_http(self, not_modified: bool) -> None:
        """One answered API request: a 304 is an L4 hit, a full body a miss."""
        if not_modified:
            self.stats["l4"].hits += 1
        else:
            self.stats["l4"].misses += 1

    # ------------------------------------------------------------ invalidation

    async def invalidate(self, flow: str, keys: Iterable[str] | None, *,
                         reason: str = "new values", l3_rows: int = 0,
                         dropped: dict[str, int] | None = None) -> dict[str, int]:
        """New values for these keys (None: the whole flow): drop them from every layer.
        ``dropped``: what ``drop_local`` already took from L1 for the same change (counted
        there, reported here with the rest)."""
        keys = None if keys is None else sorted(set(keys))
        counts = self._drop_local(flow, keys)
        for layer, n in (dropped or {}).items():
            counts[layer] = counts.get(layer, 0) + n
        counts["l3"] = l3_rows  # rows of `latest` rewritten in the batch's own transaction
        self.stats["l3"].invalidations += l3_rows
        if self.l2 is not None and self.l2.up:
            try:
                counts["l2"] = await self.l2.invalidate(flow, keys)
                self.stats["l2"].invalidations += counts["l2"]
            except Exception as exc:
                self._l2_failed(exc)
        self._announce(flow, keys, counts, reason)
        return counts

    def drop_local(self, flow: str, keys: Iterable[str]) -> dict[str, int]:
        """Drop these keys from this process's L1 at once, without waiting for the other
        layers (the engine does this on the loop just before it tells viewers of new
        values, then ``invalidate`` does the rest)."""
        return self._drop_local(flow, sorted(set(keys)))

    def _drop_local(self, flow: str | None, keys: list[str] | None) -> dict[str, int]:
        """L1 (and the L4 bodies kept in it) for one flow, or every flow."""
        flows = [flow] if flow is not None else list(self.l1.flows)
        if flow is not None:
            self._generation[flow] = self._generation.get(flow, 0) + 1
        else:
            for f in flows:
                self._generation[f] = self._generation.get(f, 0) + 1
        gone: list[EntryKey] = []
        for f in flows:
            gone.extend(self.l1.drop(f, keys))
        if flow is not None:  # cross-flow entries (none today) go with any flow's change
            gone.extend(self.l1.drop(ALL_FLOWS, None))
        n_http = sum(1 for ek in gone if ek[0] == "http")
        self.stats["l1"].invalidations += len(gone) - n_http
        self.stats["l4"].invalidations += n_http
        return {"l1": len(gone) - n_http, "l4": n_http}

    def _announce(self, flow: str | None, keys: list[str] | None, counts: dict[str, int],
                  reason: str) -> None:
        self.emit("cache_invalidate", flow, keys=None if keys is None else keys[:20],
                  n_keys=None if keys is None else len(keys), layers=counts, reason=reason)

    async def _listen(self) -> None:
        """Other daemons' invalidations: drop our L1 copies as soon as one arrives."""
        l2 = self.l2
        pubsub = l2.client.pubsub()
        try:
            await pubsub.subscribe(l2.channel)
            while True:
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if msg is None or msg.get("type") != "message":
                    continue
                try:
                    data = json.loads(msg["data"])
                except ValueError:
                    continue
                if data.get("node") == self.node:
                    continue
                flow, keys = data.get("flow"), data.get("keys")
                counts = self._drop_local(flow, keys)
                self._announce(flow, keys, counts, f"invalidated by daemon {data.get('node')}")
                if self.on_remote_invalidation is not None:
                    self.on_remote_invalidation(flow, keys)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._listener = None  # this task is ending: nothing to cancel
            self._l2_failed(exc)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    # ------------------------------------------------------------ Redis outages

    def _l2_failed(self, exc: BaseException) -> None:
        l2 = self.l2
        self.stats["l2"].errors += 1
        if l2 is None:
            return
        l2.last_error = f"{type(exc).__name__}: {exc}"
        if not l2.up and l2.down_since is not None:
            return  # already known to be down; the reconnect loop is on it
        l2.up = False
        l2.down_since = self.timer()
        log.warning("redis cache unavailable (%s): serving from memory and the database",
                    l2.last_error)
        if self._listener is not None:
            self._listener.cancel()
            self._listener = None
        self._action("cache_l2_down", "failed",
                     f"Redis at {_redact(l2.url)} unavailable ({l2.last_error}); serving from "
                     "memory and the database, reconnecting")
        if self._reconnect is None or self._reconnect.done():
            self._reconnect = self._spawn(self._reconnect_loop())

    async def _reconnect_loop(self) -> None:
        l2 = self.l2
        delay = 0.2
        while True:
            await asyncio.sleep(delay)
            try:
                await l2.client.ping()
            except Exception as exc:
                l2.last_error = f"{type(exc).__name__}: {exc}"
                delay = min(delay * 2, 5.0)
                continue
            break
        down_for = self.timer() - (l2.down_since or self.timer())
        l2.up = True
        l2.down_since = None
        # Invalidations sent while we were away never reached us: start L1 afresh.
        counts = self._drop_local(None, None)
        self._announce(None, None, counts, "redis reconnected: memory cache cleared")
        self._listener = self._spawn(self._listen())
        self._action("cache_l2_reconnected", "ok",
                     f"Redis at {_redact(l2.url)} answers again after {down_for:.1f}s; "
                     "memory cache cleared")

    def _action(self, action: str, outcome: str, reason: str) -> None:
        if self.on_action is not None:
            self._spawn(self.on_action(action, outcome, reason))

    # ------------------------------------------------------------ operator actions

    async def purge(self, flow: str | None = None, key: str | None = None,
                    layer: str | None = None) -> dict[str, int]:
        """Drop entries: one key of a flow, a whole flow, or everything; one layer or all.

        Purging L3 rebuilds the ``latest`` table from the stored records (the database
        keeps the data; only its materialised copy is redone).
        """
        if layer is not None and layer not in LAYERS:
            raise ValueError(f"no cache layer {layer!r} (layers: {', '.join(LAYERS)})")
        if key is not None and flow is None:
            raise ValueError("purging a key needs its flow")
        keys = None if key is None else [key]
        counts = {}
        if layer in (None, "l1", "l4"):
            flows = [flow] if flow is not None else list(self.l1.flows)
            kinds = {"l1": None, "l4": {"http"}, None: None}[layer]
            n_l1 = n_l4 = 0
            for f in flows:
                self._generation[f] = self._generation.get(f, 0) + 1
                for ek in self.l1.drop(f, keys, kinds):
                    if ek[0] == "http":
                        n_l4 += 1
                    else:
                        n_l1 += 1
            if layer in (None, "l1"):
                counts["l1"] = n_l1
            if layer in (None, "l4") or n_l4:
                counts["l4"] = n_l4
            self.stats["l1"].invalidations += n_l1
            self.stats["l4"].invalidations += n_l4
        if layer in (None, "l2") and self.l2 is not None and self.l2.up:
            try:
                if flow is None:
                    counts["l2"] = await self.l2.clear()
                else:
                    counts["l2"] = await self.l2.invalidate(flow, keys)
                self.stats["l2"].invalidations += counts["l2"]
            except Exception as exc:
                self._l2_failed(exc)
                counts["l2"] = 0
        if layer == "l3":
            counts["l3"] = await self._read(self.store.rebuild_latest, flow, key)
            self.stats["l3"].invalidations += counts["l3"]
            counts.update(self._drop_local(flow, keys))  # what was built from the old copy
        self._announce(flow, keys, counts, "purged by an operator")
        return counts

    def hot_keys(self, flow: str, n: int | None = None) -> list[tuple[str, int]]:
        return _most_common(self.hot.get(flow) or {}, n or self.settings.prewarm_keys)

    async def rewarm(self, flow: str, n: int | None = None) -> int:
        """After a run: load again the entries readers used since the previous run (the
        flow-wide ones first, then by how hot their key is), at most ``n`` + the flow-wide.

        What nobody read is not reloaded, so a flow that runs ten times a second for a
        viewer that looks once a second costs one load a second, not ten.
        """
        recent = self._read_since_run.pop(flow, None)
        if not recent:
            return 0
        hot = self.hot.get(flow) or {}
        wide = [(ek, ld) for ek, ld in recent.items() if ek[1] is FLOW_WIDE]

        def hotness(item: tuple[EntryKey, Any]) -> int:  # a flow-wide entry: 0
            key = item[0][1]
            return 0 if key is None else hot.get(key, 0)

        keyed = sorted(((ek, ld) for ek, ld in recent.items() if ek[1] is not FLOW_WIDE),
                       key=hotness, reverse=True)
        todo = wide + keyed[: self.settings.prewarm_keys if n is None else n]
        jobs = [self.get(flow, ek[0], ek[1], ek[2], ld, hot=False) for ek, ld in todo
                if self.l1.get(flow, ek) is None]
        results = await asyncio.gather(*jobs, return_exceptions=True)
        return sum(1 for r in results if not isinstance(r, BaseException))

    async def prewarm(self, flow: str, n: int | None = None) -> int:
        """Load a flow's latest values and its hottest keys into L1 and L2 ahead of readers
        (the operator's pre-warm)."""
        keys = [k for k, _ in self.hot_keys(flow, n)]
        jobs = [self.latest(flow, hot=False)] + [self.latest(flow, k, hot=False) for k in keys]
        results = await asyncio.gather(*jobs, return_exceptions=True)
        return sum(1 for r in results if not isinstance(r, BaseException))

    # ------------------------------------------------------------ statistics

    def layer_stats(self) -> dict[str, dict]:
        l2 = self.l2
        n_http = sum(1 for c in self.l1.flows.values() for ek in list(c.keys())
                     if ek[0] == "http")
        n_l1 = len(self.l1) - n_http
        out = {}
        for layer in LAYERS:
            st = self.stats[layer].as_dict()
            total = st["hits"] + st["misses"]
            st["hit_rate"] = round(st["hits"] / total, 4) if total else None
            st["name"] = LAYER_NAMES[layer]
            out[layer] = st
        out["l1"].update(enabled=True, connected=None, size=n_l1, capacity=self.settings.l1_size)
        out["l2"].update(enabled=l2 is not None, connected=(l2.up if l2 is not None else None),
                         size=self.l2_size, capacity=None,
                         error=(l2.last_error if l2 is not None and not l2.up else None))
        out["l3"].update(enabled=True, connected=None, size=self.l3_size, capacity=None)
        out["l4"].update(enabled=bool(self.settings.http), connected=None, size=n_http,
                         capacity=None)
        return out

    async def sample(self) -> dict:
        """One statistics interval: per-layer hit rates since the last sample, kept in history."""
        if self.store is not None:
            with contextlib.suppress(Exception):
                self.l3_size = await self._read(self.store.count, "latest")
        if self.l2 is not None and self.l2.up:
            try:
                self.l2_size = await self.l2.size()
            except Exception as exc:
                self._l2_failed(exc)
        rates, requests = {}, {}
        for layer in LAYERS:
            st = self.stats[layer]
            h0, m0 = self._mark[layer]
            dh, dm = st.hits - h0, st.misses - m0
            self._mark[layer] = (st.hits, st.misses)
            requests[layer] = dh + dm
            rates[layer] = round(dh / (dh + dm), 4) if dh + dm else None
        point = {"ts": self.timer(), "rates": rates, "requests": requests}
        self.points.append(point)
        for c in self.hot.values():  # hotness decays so yesterday's keys stop being "hot"
            for k in list(c):
                c[k] //= 2
                if not c[k]:
                    del c[k]
        return point

    def snapshot(self) -> dict:
        """The ``caches`` part of an engine snapshot (the console's Caches screen)."""
        top = sorted((-n, f, k) for f, c in self.hot.items() for k, n in _most_common(c, 10))
        hot = [{"flow": f, "key": k, "hits": -n} for n, f, k in top[:20]]
        return {"layers": self.layer_stats(), "history": list(self.points), "hot_keys": hot,
                "node": self.node}


def _jsonable_rows(fn, *args) -> list[dict]:
    """Rows as plain JSON values (bytes decoded, NaN as None), as viewers receive them."""
    out = []
    for row in fn(*args):
        out.append({k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()})
    return out


def _redact(url: str) -> str:
    """A Redis URL without its password, for logs and recovery actions."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"


def _most_common(counts: dict[str, int], n: int) -> list[tuple[str, int]]:
    """The n largest counts, most first, ties in insertion order: ``Counter.most_common(n)``."""
    return heapq.nlargest(n, counts.items(), key=itemgetter(1))
