"""What every source kind is: the ``Source`` protocol, the context a source is opened
with, and the registry the engine looks a kind up in.

A source kind is one module that registers a factory::

    @register("http")
    async def open_http(src: SourceConfig, ctx: SourceContext) -> Source: ...

and one import line in ``flowdeck.pipeline.sources`` (which imports every kind, so the
registry is full once the package is imported). The engine opens each configured
source with ``SOURCES[src.kind](src, ctx)``, calls ``fetch`` every run and ``close``
at stop; it knows no kind by name.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from flowdeck.pipeline.config import Config, SourceConfig
from flowdeck.pipeline.core.clock import Clock
from flowdeck.pipeline.core.redact import redact
from flowdeck.storage.model import RawDraft


class FetchError(Exception):
    """A fetch failed (timeout, connection refused, HTTP error). ``kind`` is for counting."""

    def __init__(self, kind: str, message: str, status: int | None = None) -> None:
        message = redact(message)  # an upstream's error text may echo a credential back
        super().__init__(message)
        self.kind = kind  # timeout | connect | http | protocol | io
        self.message = message
        self.status = status


class Source(Protocol):
    """One configured source, opened for the engine's lifetime."""

    # attempts the last fetch took (1 = no retry): the engine records retries as actions
    last_attempts: int

    async def fetch(self) -> list[RawDraft]:
        """What is new since the last fetch: each payload becomes one raw row and one
        batch (``fetched_ms`` is stamped by the engine). Raises FetchError."""
        ...

    async def close(self) -> None:
        """Release what the source holds (a subscription); the engine is stopping."""
        ...


@dataclass
class SourceContext:
    """What a source may use when it is opened: the engine's HTTP client and clock, the
    config (to resolve paths), the engine's event log, and the options the engine was
    started with for a kind (e.g. ``simulated``: simulator_url, scenario, seed), which
    the engine passes through without reading them."""

    config: Config
    http: httpx.AsyncClient
    clock: Clock
    log: Callable[[str], None]  # a line in the engine's event log
    options: dict[str, Any] = field(default_factory=dict)
    # what kinds share between their sources (one simulator for every simulated source),
    # keyed by the kind's module
    shared: dict[str, Any] = field(default_factory=dict)
    _closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def on_close(self, closer: Callable[[], Awaitable[None]]) -> None:
        """Have ``closer`` run at ``close`` (after every source is closed), last in first."""
        self._closers.append(closer)

    async def close(self) -> None:
        while self._closers:
            await self._closers.pop()()
        self.shared.clear()


SourceFactory = Callable[[SourceConfig, SourceContext], Awaitable[Source]]
SOURCES: dict[str, SourceFactory] = {}


def register(kind: str) -> Callable[[SourceFactory], SourceFactory]:
    """Make ``kind`` (a ``kind:`` of the config) open sources with the decorated factory."""
    def deco(factory: SourceFactory) -> SourceFactory:
        if kind in SOURCES:
            raise ValueError(f"source kind {kind!r} is registered twice")
        SOURCES[kind] = factory
        return factory
    return deco
