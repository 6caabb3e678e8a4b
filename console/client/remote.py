"""A Control over the websocket feed: the console attached to a remote daemon.

:class:`RemoteControl` speaks feed protocol v1 (``docs/protocol.md``) and offers
the same four calls as :class:`~flowdeck.pipeline.serve.control.LocalControl`, so
``FlowdeckApp(control=RemoteControl(url, token))`` shows the same screens:

- ``snapshot()`` is a ``query`` named ``snapshot`` (the daemon shares one
  engine snapshot among all its viewers for half a second);
- ``subscribe()`` returns a local subscription fed by the feed's ``events``
  channel (its snapshot first: the recent history, then every event);
- ``act()`` and ``query()`` are ``action`` / ``query`` requests answered by a
  ``result`` with the same ``id``; a refused action raises ``ControlError``.

The connection opens on first use and is re-opened by the next call after a
loss; the ``events`` subscription then resumes from the last ``seq`` seen, so
the console's event log keeps what happened while it was away (or, past the
daemon's replay buffer, gets a fresh snapshot).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections import deque
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from flowdeck.pipeline.core.shapes import ActionResult, HubEvent, ViewerSnapshot
from flowdeck.pipeline.serve.control import ControlError

REQUEST_TIMEOUT = {"query": 60.0, "action": 600.0}


class RemoteError(ConnectionError):
    """The daemon cannot be reached or refused us: one line saying why."""


def feed_url(url: str) -> str:
    """ws://host:port, http://host:port or host:port -> ws://host:port/feed."""
    text = url.strip()
    if "://" not in text:
        text = "ws://" + text
    parts = urlsplit(text)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss") or not parts.netloc:
        raise RemoteError(f"cannot read feed address {url!r}: use ws://HOST:PORT")
    path = parts.path if parts.path not in ("", "/") else "/feed"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


def describe_close(code: int | None, reason: str | None) -> str:
    if code == 4401:
        return "the daemon refused the token (pass --token, or set FLOWDECK_TOKEN)"
    if code == 1008:
        return f"the daemon disconnected this viewer: {reason or 'policy violation'}"
    if code == 1001:
        return "the daemon is shutting down"
    return f"connection closed ({code}{': ' + reason if reason else ''})"


async def open_feed(
    url: str, token: str | None, *, timeout: float = 5.0, max_size: int | None = 256 * 2**20
) -> ClientConnection:
    """A websocket connection to a flowdeck feed, or RemoteError with the reason."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        return await connect(
            url,
            additional_headers=headers,
            open_timeout=timeout,
            max_size=max_size,
            compression=None,
            ping_interval=20,
            close_timeout=5,
        )
    except InvalidStatus as exc:
        status = exc.response.status_code
        body = exc.response.body.decode("utf-8", "replace").strip()
        with contextlib.suppress(ValueError, AttributeError):
            body = json.loads(body)["error"]
        raise RemoteError(
            f"{url} refused the connection: HTTP {status}" + (f": {body}" if body else "")
        ) from None
    except (OSError, TimeoutError, WebSocketException) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise RemoteError(f"cannot connect to {url}: {reason}") from None


class RemoteSubscription:
    """Events from the feed, for one consumer: bounded, the oldest go first when full."""

    def __init__(self, owner: RemoteControl, maxsize: int, types: set[str] | None) -> None:
        self.owner = owner
        self.queue: deque[HubEvent] = deque(maxlen=maxsize)
        self.types = types
        self.dropped = 0
        self._wake = asyncio.Event()

    def _put(self, ev: HubEvent) -> None:
        if self.types is not None and ev.get("type") not in self.types:
            return
        if len(self.queue) == self.queue.maxlen:
            self.dropped += 1
        self.queue.append(ev)
        self._wake.set()

    async def get(self) -> HubEvent:
        while not self.queue:
            self._wake.clear()
            await self._wake.wait()
        return self.queue.popleft()

    def drain(self) -> list[HubEvent]:
        out = list(self.queue)
        self.queue.clear()
        return out

    def close(self) -> None:
        self.owner._subs.discard(self)


class RemoteControl:
    """The Control interface over a flowdeck feed at ``url``."""

    def __init__(self, url: str, token: str | None = None, *, timeout: float = 5.0) -> None:
        self.url = feed_url(url)
        self.token = token
        self.timeout = timeout
        self.description = self.url
        self.epoch: str | None = None
        self.flows: list[str] = []
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task | None = None
        self._lock = asyncio.Lock()
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
        self._subs: set[RemoteSubscription] = set()
        self._events_seq: int | None = None  # feed seq of the events channel
        # Events handed out lately, by identity: with several nodes behind one feed
        # (fan-out), hub seqs are each node's own, so they cannot say what was seen.
        self._seen_events: dict[tuple, None] = {}
        self._closed_reason: str | None = None

    # ------------------------------------------------------------ connection

    @property
    def connected(self) -> bool:
        return self._ws is not None and self._reader is not None and not self._reader.done()

    async def connect(self) -> None:
        """Open (or re-open) the connection and (re)subscribe to events."""
        async with self._lock:
            if self.connected:
                return
            ws = await open_feed(self.url, self.token, timeout=self.timeout)
            try:
                hello = json.loads(await asyncio.wait_for(ws.recv(), self.timeout))
            except ConnectionClosed as exc:
                rcvd = exc.rcvd
                why = describe_close(rcvd.code if rcvd else None, rcvd.reason if rcvd else None)
                raise RemoteError(f"{self.url}: {why}") from None
            except (TimeoutError, ValueError) as exc:
                await ws.close()
                raise RemoteError(
                    f"{self.url} is not a flowdeck feed: {exc or 'no hello'}"
                ) from None
            if hello.get("type") != "hello" or hello.get("data", {}).get("protocol") != 1:
                await ws.close()
                raise RemoteError(f"{self.url} speaks an unknown protocol: {hello!r:.100}")
            data = hello["data"]
            if self.epoch is not None and data.get("epoch") != self.epoch:
                self._events_seq = None  # a restarted daemon: start over
                self._seen_events.clear()
            self.epoch = data.get("epoch")
            self.flows = list(data.get("flows") or [])
            self._ws = ws
            self._closed_reason = None
            self._reader = asyncio.get_running_loop().create_task(self._read(ws))
            sub: dict[str, Any] = {"type": "subscribe", "channel": "events"}
            if self._events_seq is not None:
                sub.update(resume_from=self._events_seq, epoch=self.epoch)
            await ws.send(json.dumps(sub))

    async def close(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
            self._reader = None

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                self._dispatch(json.loads(raw))
        except ConnectionClosed:
            pass
        finally:
            self._closed_reason = describe_close(ws.close_code, ws.close_reason)
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_exception(RemoteError(f"{self.url}: {self._closed_reason}"))
            self._waiting.clear()

    def _dispatch(self, m: dict) -> None:
        t = m.get("type")
        data = m.get("data") or {}
        if t in ("result", "error") and data.get("id") in self._waiting:
            fut = self._waiting.pop(data["id"])
            if not fut.done():
                if t == "result":
                    fut.set_result(data.get("result"))
                else:
                    fut.set_exception(ControlError(data.get("message", "refused")))
            return
        if m.get("channel") != "events":
            return
        if t == "snapshot":
            self._events_seq = m.get("seq")
            for ev in data.get("events", []):
                self._hand_out(ev)
        elif t == "delta":
            self._events_seq = m.get("seq")
            self._hand_out(data)

    def _hand_out(self, ev: HubEvent) -> None:
        ident = (ev.get("seq"), ev.get("ts"), ev.get("type"), ev.get("flow"))
        if ident in self._seen_events:
            return  # already handed out (a snapshot after a gap overlaps what we had)
        self._seen_events[ident] = None
        if len(self._seen_events) > 5000:
            del self._seen_events[next(iter(self._seen_events))]
        for sub in list(self._subs):
            sub._put(ev)

    async def _request(self, kind: str, name: str, params: dict) -> Any:
        if not self.connected:
            await self.connect()
        rid = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        try:
            await self._ws.send(
                json.dumps({"type": kind, "id": rid, "name": name, "params": params}, default=str)
            )
        except ConnectionClosed:
            self._waiting.pop(rid, None)
            raise RemoteError(f"{self.url}: {self._closed_reason or 'connection lost'}") from None
        try:
            return await asyncio.wait_for(fut, REQUEST_TIMEOUT[kind])
        except TimeoutError:
            raise RemoteError(
                f"{self.url}: no answer to {kind} {name!r} within {REQUEST_TIMEOUT[kind]:g}s"
            ) from None
        finally:
            self._waiting.pop(rid, None)

    # ------------------------------------------------------------ the Control interface

    async def snapshot(self, latest: list[str] | None = None) -> ViewerSnapshot:
        params = {} if latest is None else {"latest": list(latest)}
        snap = await self._request("query", "snapshot", params)
        snap["connection"] = self.description
        return snap

    def subscribe(self, types: set[str] | None = None) -> RemoteSubscription:
        sub = RemoteSubscription(self, 10_000, types)
        self._subs.add(sub)
        return sub

    async def act(self, name: str, **params: Any) -> ActionResult:
        return await self._request("action", name, params)

    async def query(self, name: str, **params: Any) -> Any:
        return await self._request("query", name, params)
