"""The live feed and HTTP API: one port, one ``websockets`` server.

``/feed`` is the websocket feed (protocol v1, ``docs/protocol.md``); every
other path is plain HTTP answered through ``websockets``' ``process_request``
hook (``http_api``): ``/healthz``, ``/readyz``, ``/metrics``, the read API
under ``/api/`` and the browser viewer at ``/``.

:class:`FeedServer` runs it: start and stop, the websocket handler and what a
viewer may ask (subscribe, unsubscribe, ack, ping, actions and queries),
channel snapshots from the engine's shared snapshot, and the periodic jobs
(hub pump, flow-summary refresh, heartbeats, metrics ticks). Its parts:

- ``access.py``: who gets in (bind address, token, Host and Origin checks);
- ``channels.py``: how a message travels. The engine publishes an event on its
  hub; the feed's pump turns it into deltas on channels (``protocol.route``),
  and ``Channels.publish`` gives each a per-channel ``seq``, encodes it
  **once**, keeps it in the channel's bounded replay buffer and fans the same
  bytes out to every subscriber;
- ``viewer.py``: one connection, written to directly while it keeps up, queued
  with conflation while it is slow, closed (1008) past a bound.

Inbound messages over ``max_inbound_bytes`` close the connection (1009); more than
``inbound_rate`` a second (past a burst) are dropped with an error, and a sustained
flood closes it (1008).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from flowdeck.pipeline.core.shapes import HubEvent, ViewerFlow, ViewerSnapshot
from flowdeck.pipeline.serve.access import CLOSE_UNAUTHORIZED, FeedError, Gate
from flowdeck.pipeline.serve.channels import Channel, Channels, Message, Sub
from flowdeck.pipeline.serve.control import Control, ControlError
from flowdeck.pipeline.serve.fanout import CLUSTER_KINDS, Entry, Fanout
from flowdeck.pipeline.serve.http_api import HttpApi
from flowdeck.pipeline.serve.metrics import FeedMetrics
from flowdeck.pipeline.serve.protocol import (
    FLOW_CHANGING,
    FLOW_KINDS,
    PROTOCOL_VERSION,
    REQUEST_TYPES,
    Filter,
    ProtocolError,
    channel_kind,
    dumps,
    envelope,
    latest_summary,
    remote_actor,
    route,
    slim_event,
    trim_snapshot,
)
from flowdeck.pipeline.serve.viewer import CLOSE_TOO_SLOW, Viewer

log = logging.getLogger("flowdeck.feed")


@dataclass(frozen=True)
class FeedLimits:
    """Every bound the feed keeps. The defaults suit a daemon; tests shrink them."""

    max_inbound_bytes: int = 64 * 1024  # a client message larger than this closes it (1009)
    write_buffer_bytes: int = 512 * 1024  # per viewer socket buffer before it counts as slow
    max_pending: int = 2000  # queued messages of a slow viewer before it is closed (1008)
    max_pending_bytes: int = 16 * 1024 * 1024
    replay_messages: int = 1000  # per channel, for resume_from
    replay_bytes: int = 8 * 1024 * 1024  # per channel
    ack_window: int = 256  # seqs a viewer with acks may be behind before it is paced
    heartbeat_s: float = 15.0
    metrics_interval_s: float = 1.0
    flows_interval_s: float = 1.0  # at most one flow-summary refresh per interval
    snapshot_ttl_s: float = 0.5  # engine snapshots are shared for this long
    max_requests_in_flight: int = 8  # actions and queries per viewer
    recent_events: int = 200  # what the events channel's snapshot holds
    close_timeout_s: float = 10.0
    # A client's whole opening handshake (HTTP request line and headers, then the answer)
    # must arrive within this: a slowloris client sending headers byte by byte is cut off.
    open_timeout_s: float = 10.0
    # Inbound messages per viewer: a token bucket of ``inbound_burst`` refilled at
    # ``inbound_rate`` per second. A message past it is dropped with a ``rate_limited``
    # error; ``inbound_burst`` dropped in a row close the viewer with 1008 (flooding).
    inbound_rate: float = 50.0
    inbound_burst: int = 100


class FeedServer:
    """Serves a :class:`~flowdeck.pipeline.serve.control.Control` on one port (feed + HTTP)."""

    def __init__(
        self,
        control: Control,
        *,
        host: str = "127.0.0.1",
        port: int = 8765,
        token: str | None = None,
        origins: list[str] | tuple[str, ...] = (),
        limits: FeedLimits | None = None,
        caches: Any = None,
        fanout: Fanout | None = None,
    ) -> None:
        self.gate = Gate(host, port, token, origins)  # FeedError for an unsafe config
        self.control = control
        # The engine's caches (flowdeck.storage.caches.Caches) when it runs in this process:
        # the read API keeps encoded bodies there and counts the L4 (HTTP) layer.
        self.caches = caches if caches is not None else getattr(
            getattr(control, "engine", None), "caches", None)
        self.host = host
        self.port = port
        self.limits = limits or FeedLimits()
        self.local_epoch = uuid.uuid4().hex[:12]
        # Events of every node through Redis (fanout.py), or None: this node's only.
        self.fanout = fanout
        self.local_flows: set[str] = set()
        self._remote_summary: dict[str, ViewerFlow] = {}
        self._numbering = 0  # +1 whenever seqs switch between the streams' and local ones
        self._renumbered_at = -1e18  # (monotonic) when it last did
        self.metrics = FeedMetrics()
        self.http = HttpApi(self)
        self.flows: list[str] = []
        self.channels = Channels(self.limits, self.metrics)
        self.viewers: set[Viewer] = set()
        self.recent: deque[HubEvent] = deque(maxlen=self.limits.recent_events)
        self.server: Server | None = None
        self._hub_sub = None
        self._hub_dropped = 0
        self._tasks: set[asyncio.Task] = set()
        self._flows_dirty = asyncio.Event()
        self._last_summary: dict[str, ViewerFlow] = {}
        self._snap: tuple[ViewerSnapshot, dict[str, int]] | None = None
        self._snap_started = -1e18
        self._snap_task: asyncio.Task | None = None
        self._snap_task_started = -1e18

    # ------------------------------------------------------------ lifecycle

    @property
    def token(self) -> str | None:
        """The feed's token, or None (loopback only); the HTTP API marks replies private."""
        return self.gate.token

    @property
    def epoch(self) -> str:
        """The deployment's epoch while the fan-out is up (seqs are the streams', the same
        on every node), else this server's own (seqs are local)."""
        f = self.fanout
        if f is not None and f.up and f.epoch:
            return f.epoch
        return self.local_epoch

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else (self.host or "0.0.0.0")
        return f"http://{host}:{self.port}"

    @property
    def feed_url(self) -> str:
        return "ws" + self.url[4:] + "/feed"

    async def start(self) -> None:
        """Subscribe to the engine's events, then listen. FeedError if the port is taken."""
        self._hub_sub = self.control.subscribe()
        snap = await self.snapshot()
        self.flows = list(snap["flows"])
        self.local_flows = set(self.flows)
        self.channels.open(self.flows)
        self.metrics.seed(snap)
        self._last_summary = dict(snap["flows"])
        if self.fanout is not None:
            f = self.fanout
            f.on_entries = self._on_entries
            f.on_down = self._fanout_down
            f.on_up = self._fanout_up
            f.on_known = self._open_channels
            self._on_entries(await f.start(
                [n for n, ch in self.channels.items() if ch.kind in CLUSTER_KINDS]))
        try:
            self.server = await serve(
                self._handler,
                self.host or None,
                self.port,
                process_request=self._process_request,
                compression=None,
                max_size=self.limits.max_inbound_bytes,
                write_limit=self.limits.write_buffer_bytes,
                max_queue=16,
                close_timeout=self.limits.close_timeout_s,
                open_timeout=self.limits.open_timeout_s,
                ping_interval=20,
                ping_timeout=20,
                server_header="flowdeck",
            )
        except OSError as exc:
            self._hub_sub.close()
            raise FeedError(
                f"cannot serve the feed on {self.host or '*'}:{self.port}: {exc.strerror or exc}"
            ) from None
        if self.port == 0:
            self.port = self.server.sockets[0].getsockname()[1]
        for coro in (
            self._pump(),
            self._refresh_flows(),
            self._heartbeats(),
            self._metrics_ticks(),
        ):
            self._spawn(coro)
        log.info("feed serving on %s", self.url)

    async def stop(self) -> None:
        """Close every viewer (1001 going away), stop the tasks, release the port."""
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), self.limits.close_timeout_s)
            self.server = None
        snap_task = self._snap_task
        if snap_task is not None and not snap_task.done():
            self._tasks.add(snap_task)  # cancelled with the rest: the engine stops next
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._hub_sub is not None:
            self._hub_sub.close()
        if self.fanout is not None:
            await self.fanout.stop()

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------ engine state

    async def snapshot(self, fresh_after: float | None = None) -> ViewerSnapshot:
        """The engine's snapshot, shared by every viewer for ``snapshot_ttl_s`` (single-flight).

        ``fresh_after`` (monotonic) asks for one whose fetch began at or after that time.
        """
        return (await self._snapshot_with_seqs(fresh_after))[0]

    async def _snapshot_with_seqs(
        self, fresh_after: float | None = None
    ) -> tuple[dict, dict[str, int]]:
        if fresh_after is None:
            fresh_after = time.monotonic() - self.limits.snapshot_ttl_s
        # none taken before the seqs were renumbered (their seqs are of the old numbering)
        fresh_after = max(fresh_after, self._renumbered_at)
        while True:
            if self._snap is not None and self._snap_started >= fresh_after:
                return self._snap
            task = self._snap_task
            if task is not None and not task.done():
                if self._snap_task_started >= fresh_after:
                    return await asyncio.shield(task)
                with contextlib.suppress(Exception):
                    await asyncio.shield(task)
                continue
            started = time.monotonic()
            seqs = self.channels.seqs()
            self._snap_task = asyncio.get_running_loop().create_task(
                self._fetch_snapshot(started, seqs)
            )
            self._snap_task_started = started
            return await asyncio.shield(self._snap_task)

    async def _fetch_snapshot(
        self, started: float, seqs: dict[str, int]
    ) -> tuple[dict, dict[str, int]]:
        snap = await self.control.snapshot()
        if started >= self._snap_started:
            self._snap, self._snap_started = (snap, seqs), started
        return snap, seqs

    async def refresh_metrics(self) -> None:
        """Scrape-time: open issues by flow and severity; breakers, caches and owed series
        from a fresh snapshot."""
        rows = await self.control.query("issues", state=["open", "acknowledged"], limit=100_000)
        self.metrics.set_open_issues(rows, self.flows)
        snap = await self.snapshot(fresh_after=time.monotonic())
        self.metrics.set_breakers(snap)
        self.metrics.set_caches(snap.get("caches"))
        self.metrics.set_series_owed(snap)
        self.metrics.set_store(snap)
        self.metrics.set_storage(snap)
        self.metrics.set_fanout(self.fanout_status())

    # ------------------------------------------------------------ events -> channels

    async def _pump(self) -> None:
        sub = self._hub_sub
        while True:
            ev = await sub.get()
            batch = [ev, *sub.drain()]
            for e in batch:
                self._on_event(e.as_dict() if hasattr(e, "as_dict") else e)
            if sub.dropped != self._hub_dropped:
                lost = sub.dropped - self._hub_dropped
                self._hub_dropped = sub.dropped
                self.metrics.drop("hub_overflow", lost)
                log.warning("feed fell behind the engine: %d events lost; resyncing viewers", lost)
                self._resync(f"server overloaded: {lost} events lost")

    def _on_event(self, ev: HubEvent) -> None:
        self.metrics.observe(ev)
        fanned = False
        for r in route(ev):
            ch = self.channels.get(r.channel)
            if ch is not None:
                fanned = self._publish(ch, r.data, r.ckey) or fanned
        if not fanned:  # else the events channel's entry read back fills it
            self.recent.append(slim_event(ev))
        if ev.get("type") in FLOW_CHANGING:
            self._flows_dirty.set()

    def _publish(self, ch: Channel, data: Any, ckey: Any = None) -> bool:
        """A delta of this node: to the fan-out (True; every node, this one too, delivers
        it when it reads it back), or straight to local viewers (no fan-out, or Redis away)."""
        f = self.fanout
        if f is not None and ch.kind in CLUSTER_KINDS:
            if f.publish(ch.name, dumps(data), time.time(), ckey):
                return True
        self.channels.publish(ch, data, ckey)
        return False

    # ------------------------------------------------------------ fan-out between nodes

    def _channel_for(self, name: str) -> Channel | None:
        """The channel of a fanned-out entry, opened when it names a flow of another node."""
        ch = self.channels.get(name)
        if ch is not None:
            return ch
        kind, sep, flow = name.partition(":")
        if not sep or kind not in FLOW_KINDS or not flow:
            return None
        self.flows.append(flow)
        for k in FLOW_KINDS:
            self.channels[f"{k}:{flow}"] = Channel(f"{k}:{flow}", k, flow)
        return self.channels[name]

    def _open_channels(self, names: list[str]) -> None:
        for name in names:
            self._channel_for(name)

    def _on_entries(self, entries: list[Entry]) -> None:
        """Entries read from the streams, in order: deltas at the seq their stream gave."""
        for e in entries:
            ch = self._channel_for(e.channel)
            if ch is None:
                continue
            if e.gap is not None or e.data is None:
                if self.channels.skip(ch, e.seq):
                    self._resync(e.gap or "gap in the event stream",
                                 only=lambda c, name=ch.name: c.name == name)
                continue
            if ch.seq and e.seq > ch.seq + 1:
                # trimmed from the stream before this node read them (it fell behind)
                self._resync(f"this node fell behind the event stream: {e.seq - ch.seq - 1}"
                             " deltas lost", only=lambda c, name=ch.name: c.name == name)
            msg = self.channels.ingest(ch, e.seq, e.ts, e.data, e.ckey)
            if msg is None:
                continue
            if ch.kind == "events":
                self.recent.append(json.loads(e.data))
            elif ch.kind == "flows":
                d = json.loads(e.data)
                flow = d.get("flow")
                if isinstance(flow, str) and e.node != self.fanout_node:
                    self._remote_summary[flow] = d.get("summary")

    def _fanout_down(self, reason: str) -> None:
        """Redis went away: viewers move to this node's own numbering (a gap, the local
        epoch, a snapshot); deltas not written to Redis are delivered here."""
        self._numbering += 1
        self._renumbered_at = time.monotonic()
        self._resync(reason, only=lambda c: c.kind in CLUSTER_KINDS,
                     extra={"epoch": self.local_epoch, "fanout": "degraded"})
        f = self.fanout
        if f is None:
            return
        for channel, data, _ts, ckey in f.take_unsent():
            ch = self.channels.get(channel)
            if ch is not None:
                self.channels.publish(ch, json.loads(data), ckey)

    def _fanout_up(self, entries: list[Entry]) -> None:
        """Redis is back: every cluster channel is numbered by its stream again (re-read
        from the start), and viewers get a gap with the deployment's epoch, then a snapshot."""
        self._numbering += 1
        self._renumbered_at = time.monotonic()
        self._resync("event fan-out restored", only=lambda c: c.kind in CLUSTER_KINDS,
                     extra={"epoch": self.epoch, "fanout": "up"})
        for ch in self.channels.values():
            if ch.kind in CLUSTER_KINDS:
                ch.reset()
        self.recent.clear()
        self._on_entries(entries)
        self._flows_dirty.set()

    @property
    def fanout_node(self) -> str | None:
        return None if self.fanout is None else self.fanout.node

    @staticmethod
    def runs_here(flow: str | None, snap: ViewerSnapshot | dict) -> bool:
        """Whether this node's engine runs ``flow``: every flow of its config, or in a
        cluster (nodes sharing one config) only those it holds the lease of; the others'
        summaries here are of a flow that never runs on this node."""
        cluster = snap.get("cluster")
        return flow in snap["flows"] and (cluster is None or flow in cluster["owned"])

    def all_flows(self, snap: ViewerSnapshot | dict) -> dict[str, ViewerFlow]:
        """Every flow's summary: this engine's for the flows it runs, and the last the
        fan-out brought of the flows other nodes run."""
        out = {**self._remote_summary, **snap["flows"]}
        for f, s in self._remote_summary.items():
            if not self.runs_here(f, snap):
                out[f] = s
        return out

    def fanout_status(self) -> dict[str, Any] | None:
        return None if self.fanout is None else self.fanout.status()

    def _resync(self, reason: str, only=None, extra: dict | None = None) -> None:
        """After lost events: every subscription (of the channels ``only`` accepts) gets a
        gap notice and a fresh snapshot."""
        self.channels.resync(
            self.viewers,
            reason,
            lambda viewer, ch, sub: self._spawn(self._send_snapshot(viewer, ch, sub)),
            only,
            extra,
        )

    # ------------------------------------------------------------ periodic

    def _flow_subscribers(self) -> bool:
        return any(
            ch.subscribers
            for name, ch in self.channels.items()
            if name == "flows" or ch.kind == "flow"
        )

    async def _refresh_flows(self) -> None:
        """Flow summaries change with runs: refresh them (debounced) and publish what changed."""
        last = 0.0
        while True:
            await self._flows_dirty.wait()
            if not self._flow_subscribers() and self.fanout is None:
                # (with a fan-out, other nodes' viewers may want them)
                self._flows_dirty.clear()
                continue
            wait = last + self.limits.flows_interval_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._flows_dirty.clear()
            last = time.monotonic()
            try:
                snap = await self.snapshot(fresh_after=last)
            except Exception as exc:  # the engine is busy or stopping: try again later
                log.warning("feed could not refresh flow summaries: %s", exc)
                self._flows_dirty.set()
                continue
            self.publish_summaries(snap)

    async def flow_stale(self, flow: str) -> bool:
        """Whether a flow serves last-known-good values (every source down), from the
        shared snapshot (at most ``snapshot_ttl_s`` old)."""
        snap = await self.snapshot()
        return bool((snap["flows"].get(flow) or {}).get("stale"))

    def publish_summaries(self, snap: ViewerSnapshot) -> None:
        now = time.time()
        for flow, summary in snap["flows"].items():
            if self._last_summary.get(flow) == summary or not self.runs_here(flow, snap):
                continue  # (another node's flow in a cluster: its owner publishes it)
            self._last_summary[flow] = summary
            self._publish(
                self.channels["flows"], {"flow": flow, "summary": summary}, flow
            )
            ch = self.channels.get(f"flow:{flow}")
            if ch is not None:
                self._publish(
                    ch,
                    {"type": "summary", "ts": now, "flow": flow, "seq": None, "data": summary},
                    "summary",
                )

    async def _heartbeats(self) -> None:
        """Every viewer hears from the server at least every ``heartbeat_s``."""
        while True:
            await asyncio.sleep(self.limits.heartbeat_s)
            now = time.time()
            data = {"channels": self.channels.seqs()}
            m = Message(
                None,
                "heartbeat",
                0,
                now,
                data,
                "heartbeat",
                envelope("heartbeat", None, 0, now, data),
            )
            written = sum(1 for v in list(self.viewers) if v.deliver(m))
            if written:
                self.metrics.sent("-", written)

    async def _metrics_ticks(self) -> None:
        while True:
            await asyncio.sleep(self.limits.metrics_interval_s)
            self.metrics.tick()
            self.metrics.set_fanout(self.fanout_status())
            data = self.metrics.channel_data(len(self.viewers))
            data["feed"]["fanout"] = self.fanout_status()
            ch = self.channels["metrics"]
            if ch.subscribers:
                self.channels.publish(ch, data, "metrics")

    # ------------------------------------------------------------ HTTP and handshake

    async def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        admitted = self.gate.admit(request)
        if isinstance(admitted, Response):
            return admitted
        if admitted.path == "/feed":
            conn.flowdeck_authorized = admitted.authorized  # the handler closes 4401 without it
            return None
        return await self.http.handle(
            request, admitted.path, admitted.query, admitted.authorized, admitted.cors
        )

    # ------------------------------------------------------------ websocket

    async def _handler(self, conn: ServerConnection) -> None:
        if not getattr(conn, "flowdeck_authorized", False):
            await conn.close(CLOSE_UNAUTHORIZED, "missing or wrong token")
            return
        viewer = Viewer(
            conn,
            limits=self.limits,
            metrics=self.metrics,
            channels=self.channels,
            spawn=self._spawn,
        )
        self.viewers.add(viewer)
        self.metrics.feed_clients.set(len(self.viewers))
        viewer.reply(
            "hello",
            {
                "server": "flowdeck",
                "protocol": PROTOCOL_VERSION,
                "epoch": self.epoch,
                "flows": self.flows,
                "channels": list(self.channels),
                "heartbeat_s": self.limits.heartbeat_s,
                "fanout": self.fanout_status(),
                "max_message_bytes": self.limits.max_inbound_bytes,
                "requests": list(REQUEST_TYPES),
            },
        )
        try:
            async for raw in conn:
                if viewer.closed:
                    break
                if viewer.over_rate():
                    if viewer.flood_reason is not None:
                        await conn.close(CLOSE_TOO_SLOW, viewer.flood_reason)
                        break
                    continue
                await self._on_message(viewer, raw)
        except ConnectionClosed:
            pass
        finally:
            viewer._lost()
            if viewer.writer is not None:
                viewer.writer.cancel()
            self.viewers.discard(viewer)
            self.metrics.feed_clients.set(len(self.viewers))

    async def _on_message(self, viewer: Viewer, raw: str | bytes) -> None:
        rid = None
        try:
            if isinstance(raw, bytes):
                raise ProtocolError("bad_request", "send JSON in text frames")
            try:
                msg = json.loads(raw)
            except ValueError as exc:
                raise ProtocolError("bad_json", f"not JSON: {exc}") from None
            if not isinstance(msg, dict):
                raise ProtocolError("bad_request", "a request is a JSON object with a type")
            rid = msg.get("id")
            t = msg.get("type")
            if t == "subscribe":
                await self._subscribe(viewer, msg, rid)
            elif t == "unsubscribe":
                name = msg.get("channel")
                ch = self.channels.get(name) if isinstance(name, str) else None
                if ch is None or name not in viewer.subs:
                    raise ProtocolError("not_subscribed", f"not subscribed to {name!r}")
                ch.subscribers.pop(viewer, None)
                viewer.subs.pop(name, None)
                viewer.acks.pop(name, None)
                viewer.drop_pending(name)
                viewer.reply("unsubscribed", {"id": rid, "channel": name}, name)
            elif t == "ack":
                seq = msg.get("seq")
                if not isinstance(seq, int) or isinstance(seq, bool):
                    raise ProtocolError("bad_request", "ack needs a channel and an integer seq")
                viewer.ack(msg.get("channel"), seq)
            elif t == "ping":
                viewer.reply("pong", {"id": rid})
            elif t in ("action", "query"):
                if viewer.in_flight >= self.limits.max_requests_in_flight:
                    raise ProtocolError(
                        "busy",
                        f"at most {self.limits.max_requests_in_flight}"
                        " actions and queries at a time",
                    )
                name, params = msg.get("name"), msg.get("params") or {}
                if not isinstance(name, str) or not isinstance(params, dict):
                    raise ProtocolError("bad_request", f"{t} needs a name and params object")
                actor = remote_actor(msg.get("actor")) if t == "action" else None
                viewer.in_flight += 1
                self._spawn(self._request(viewer, t, name, params, rid, actor))
            else:
                raise ProtocolError(
                    "unknown_type",
                    f"unknown message type {t!r} (known: {', '.join(REQUEST_TYPES)})",
                )
        except ProtocolError as exc:
            viewer.reply("error", {"id": rid, "code": exc.code, "message": str(exc)})

    async def _request(self, viewer: Viewer, kind: str, name: str, params: dict, rid: Any,
                       actor: str | None = None) -> None:
        """An action or query, answered with a ``result`` (or an ``error``) carrying ``id``."""
        try:
            if kind == "action":
                result = await self.control.act(name, **({"actor": actor} if actor else {}),
                                                **params)
            elif name == "snapshot":
                result = await self._cluster_snapshot(params.get("latest"))
            else:
                result = await self.control.query(name, **params)
            viewer.reply(
                "result", {"id": rid, "kind": kind, "name": name, "ok": True, "result": result}
            )
        except ControlError as exc:
            viewer.reply("error", {"id": rid, "code": f"{kind}_failed", "message": str(exc)})
        except (TypeError, KeyError, ValueError) as exc:
            what = f"missing parameter {exc}" if isinstance(exc, KeyError) else str(exc)
            viewer.reply(
                "error", {"id": rid, "code": "bad_params", "message": f"{kind} {name!r}: {what}"}
            )
        except Exception as exc:  # the engine failed: tell the viewer, keep the connection
            log.exception("feed %s %s failed", kind, name)
            viewer.reply(
                "error",
                {"id": rid, "code": f"{kind}_failed", "message": f"{type(exc).__name__}: {exc}"},
            )
        finally:
            viewer.in_flight -= 1

    async def _subscribe(self, viewer: Viewer, msg: dict, rid: Any) -> None:
        name = msg.get("channel")
        kind, _ = channel_kind(name, self.flows)
        ch = self.channels[name]
        flt = Filter.parse(kind, msg.get("filters"))
        sub = Sub(flt, bool(msg.get("ack")))
        resume = msg.get("resume_from")
        if resume is not None and (not isinstance(resume, int) or isinstance(resume, bool)):
            raise ProtocolError("bad_request", "resume_from must be an integer seq")
        epoch = msg.get("epoch")
        if name in viewer.subs:  # re-subscribing replaces filters and starts over
            ch.subscribers.pop(viewer, None)
            viewer.subs.pop(name)
            viewer.drop_pending(name)
        if sub.ack:
            viewer.acks[name] = deque()
        else:
            viewer.acks.pop(name, None)
        resumed = resume is not None and epoch in (None, self.epoch) and ch.covers(resume)
        viewer.reply(
            "subscribed",
            {
                "id": rid,
                "channel": name,
                "seq": ch.seq,
                "epoch": self.epoch,
                "resumed": resumed,
                "filters": msg.get("filters") or {},
            },
            name,
        )
        if resumed:
            self.channels.replay(viewer, ch, sub, resume)
            ch.subscribers[viewer] = sub
            viewer.subs[name] = sub
            return
        if resume is not None:
            if epoch not in (None, self.epoch):
                reason = "server restarted"
            elif resume > ch.seq:
                reason = "unknown position"
            else:
                reason = "replay buffer exceeded"
            oldest = ch.buffer[0].seq if ch.buffer else ch.seq + 1
            viewer.reply(
                "gap",
                {"resume_from": resume, "oldest": oldest, "seq": ch.seq, "reason": reason},
                name,
            )
        await self._send_snapshot(viewer, ch, sub)

    async def _cluster_snapshot(self, latest: list[str] | None) -> ViewerSnapshot:
        """The ``snapshot`` query: this engine's, plus the flows of other nodes the fan-out
        has seen (their last summary, their latest values from the shared store)."""
        snap = trim_snapshot(await self.snapshot(), latest)
        flows = self.all_flows(snap)
        remote = [f for f in flows if not self.runs_here(f, snap)]
        if not remote:
            return {**snap, "flows": flows}
        rows = dict(snap["latest"])
        for f in remote:
            if latest is None or f in latest:
                rows[f] = await self.control.query("latest", flow=f, fresh=True)
        summary = dict(snap.get("latest_summary") or {})
        for f in remote:
            if f in rows:
                summary[f] = latest_summary({f: rows[f]})[f]
        return {**snap, "flows": flows, "latest": rows,
                "latest_summary": summary}

    async def _send_snapshot(self, viewer: Viewer, ch: Channel, sub: Sub) -> None:
        """A channel snapshot, then whatever arrived while it was taken, then live deltas."""
        try:
            numbering = self._numbering
            seq, data = await self._channel_snapshot(ch)
            for _ in range(3):  # older than the replay buffer reaches: take a fresh one
                if ch.covers(seq) and numbering == self._numbering:
                    break
                numbering = self._numbering
                seq, data = await self._channel_snapshot(ch, fresh=True)
        except Exception as exc:
            viewer.reply(
                "error",
                {"code": "snapshot_failed", "message": f"{type(exc).__name__}: {exc}"},
                ch.name,
            )
            return
        if viewer.closed:
            return
        if not ch.covers(seq) or numbering != self._numbering:
            # more arrived meanwhile than the buffer holds, or the numbering changed
            viewer.reply(
                "error",
                {
                    "code": "snapshot_failed",
                    "message": "the channel moves faster than its replay buffer; subscribe again",
                },
                ch.name,
            )
            return
        if sub.filter is not None:
            data = sub.filter.snapshot(ch.kind, data)
        now = time.time()
        viewer.deliver(
            Message(
                ch.name,
                "snapshot",
                seq,
                now,
                data,
                None,
                envelope("snapshot", ch.name, seq, now, data),
            )
        )
        self.channels.replay(viewer, ch, sub, seq)
        ch.subscribers[viewer] = sub
        viewer.subs[ch.name] = sub

    async def _channel_snapshot(self, ch: Channel, fresh: bool = False) -> tuple[int, Any]:
        """(seq, data): the data reflects at least every delta up to seq.

        Engine-backed channels use the shared snapshot (``fresh`` asks for a new one).
        """
        kind = ch.kind
        if kind == "events":
            return ch.seq, {"events": list(self.recent)}
        if kind == "metrics":
            return ch.seq, self.metrics.channel_data(len(self.viewers))
        snap, seqs = await self._snapshot_with_seqs(time.monotonic() if fresh else None)
        seq = seqs.get(ch.name, 0)
        if kind == "caches":
            return seq, snap.get("caches") or {"layers": {}, "history": [], "hot_keys": []}
        if kind == "flows":
            return seq, {"flows": self.all_flows(snap)}
        if kind == "quality":
            return seq, {"issues": snap["issues"], "quarantine": snap["quarantine"]}
        if kind == "recovery":
            return seq, {"actions": snap["actions"]}
        flow = ch.flow
        if self.runs_here(flow, snap):
            latest = snap["latest"].get(flow, [])
            summary = snap["flows"].get(flow)
        else:  # another node's flow (in a cluster: one whose lease this node does not
            # hold): its values from the shared store, its owner's last summary
            latest = await self.control.query("latest", flow=flow, fresh=True)
            summary = self.all_flows(snap).get(flow or "")
        if kind == "records":
            return seq, {"flow": flow, "records": latest}
        return seq, {
            "flow": flow,
            "summary": summary,
            "latest": latest,
            "runs": [r for r in snap["runs"] if r.get("flow") == flow],
            "issues": [r for r in snap["issues"] if r.get("flow") == flow],
        }


__all__ = ["FeedLimits", "FeedServer"]
