"""Websocket sources: subscribe to an upstream feed, buffer messages between runs, reconnect."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import deque
from pathlib import Path

from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from flowdeck.pipeline.config import SecretError, SourceConfig
from flowdeck.pipeline.sources.base import FetchError, Source, SourceContext, register
from flowdeck.storage.model import RawDraft

BUFFER_LIMIT = 100_000  # messages kept between runs; the oldest go first past it


class WebsocketSource:
    """Each run takes the messages received since the last one as one JSON-lines payload."""

    last_attempts = 1  # the subscription reconnects by itself; a fetch never retries

    def __init__(self, src: SourceConfig, url: str, base_dir: Path | None = None) -> None:
        self.src = src
        self.base_dir = base_dir
        self.url = url
        self.buffer: deque[bytes] = deque(maxlen=BUFFER_LIMIT)
        self.task: asyncio.Task | None = None
        self.connected = False
        self.last_error: str | None = None
        self.dropped = 0

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run(), name=f"ws:{self.url}")

    async def close(self) -> None:
        """End the subscription."""
        if self.task:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None

    async def _run(self) -> None:
        delay = 0.5
        while True:
            try:
                async with connect(self.url, open_timeout=self.src.timeout,
                                   max_size=self.src.max_bytes,
                                   additional_headers=self.src.resolved_headers(
                                       self.base_dir) or None) as ws:
                    self.connected = True
                    self.last_error = None
                    delay = 0.5
                    async for msg in ws:
                        if len(self.buffer) == self.buffer.maxlen:
                            self.dropped += 1
                        self.buffer.append(msg.encode() if isinstance(msg, str) else msg)
            except asyncio.CancelledError:
                raise
            except (OSError, WebSocketException, TimeoutError, SecretError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
            self.connected = False
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 30.0)

    async def fetch(self) -> list[RawDraft]:
        self.start()
        if not self.buffer:
            if not self.connected and self.last_error:
                raise FetchError("connect", self.last_error)
            return []
        lines = []
        while self.buffer:
            lines.append(self.buffer.popleft().strip())
        return [RawDraft(self.src.name, b"\n".join(lines),
                         content_type="application/x-ndjson", origin=self.url)]


@register("websocket")
async def open_websocket(src: SourceConfig, ctx: SourceContext) -> Source:
    return WebsocketSource(src, src.url, ctx.config.base_dir)
