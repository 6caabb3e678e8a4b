"""Alert hooks: a webhook per severity, POSTed in the background, retried, never blocking.

When a quality issue is opened (not when an open one recurs), its JSON goes to
the webhook configured for its severity. Sending happens in tasks on the event
loop with jittered exponential retries; the pipeline never waits for it, and a
backlog past ``MAX_PENDING`` is dropped and counted rather than queued forever.
Each delivery, good or failed, becomes a recovery action.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import httpx
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from flowdeck.pipeline.config import AlertsConfig

MAX_PENDING = 100


class DeliveryError(Exception):
    pass


class Alerter:
    def __init__(
        self, config: AlertsConfig, http: httpx.AsyncClient, record: Callable[..., Awaitable[None]]
    ) -> None:
        self.config = config
        self.http = http
        self.record = record  # async (flow, action, reason, outcome) -> None
        self.pending: set[asyncio.Task] = set()
        self.dropped = 0
        self.loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def notify(self, issue: dict) -> None:
        """Queue an alert for a newly opened issue. Safe to call from any thread."""
        url = self.config.webhooks.get(issue.get("severity", ""))
        if not url or self.loop is None:
            return
        self.loop.call_soon_threadsafe(self._start, url, issue)

    def _start(self, url: str, issue: dict) -> None:
        if len(self.pending) >= MAX_PENDING:
            self.dropped += 1
            return
        task = asyncio.get_running_loop().create_task(self._deliver(url, issue))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _deliver(self, url: str, issue: dict) -> None:
        payload = {
            k: issue.get(k)
            for k in ("flow", "kind", "severity", "title", "key", "source", "detail", "fingerprint")
        }
        attempts = 0
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self.config.retries + 1),
                wait=wait_exponential_jitter(
                    multiplier=self.config.backoff,
                    max=self.config.backoff * 30,
                    jitter=self.config.backoff,
                ),
                retry=retry_if_exception_type((httpx.HTTPError, DeliveryError)),
                reraise=True,
            ):
                with attempt:
                    attempts += 1
                    resp = await self.http.post(url, json=payload, timeout=self.config.timeout)
                    if resp.status_code >= 300:
                        raise DeliveryError(f"HTTP {resp.status_code}")
            outcome, reason = "ok", f"{issue.get('severity')} alert delivered"
        except (httpx.HTTPError, DeliveryError) as exc:
            outcome, reason = "failed", f"alert not delivered: {exc or type(exc).__name__}"
        await self.record(
            issue.get("flow"),
            "alert",
            reason + f" after {attempts} attempt(s): {issue.get('title', '')[:120]}",
            outcome,
        )

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait (a little) for deliveries in flight, e.g. at shutdown."""
        if self.pending:
            await asyncio.wait(list(self.pending), timeout=timeout)
