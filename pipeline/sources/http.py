"""HTTP sources: httpx, timeouts, retries with jittered backoff, conditional GETs."""

from __future__ import annotations

from pathlib import Path

import httpx
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from flowdeck.pipeline.config import SecretError, SourceConfig
from flowdeck.pipeline.sources.base import FetchError, Source, SourceContext, register
from flowdeck.storage.model import RawDraft


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, FetchError) and (exc.kind in ("timeout", "connect")
                                            or (exc.status or 0) >= 500)


class HttpSource:
    """GET a URL. An unchanged upstream (ETag / Last-Modified) costs a 304 and yields nothing."""

    def __init__(self, src: SourceConfig, client: httpx.AsyncClient, url: str | None = None,
                 backoff: float = 0.2, base_dir: Path | None = None) -> None:
        self.src = src
        self.client = client
        self.url = url or src.url
        self.etag: str | None = None
        self.last_modified: str | None = None
        self.backoff = backoff
        self.last_attempts = 0
        self.base_dir = base_dir  # attempts the last fetch took (1 = no retry)

    async def fetch(self) -> list[RawDraft]:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.src.retries + 1),
            wait=wait_exponential_jitter(multiplier=self.backoff, max=self.backoff * 20,
                                        jitter=self.backoff),
            retry=retry_if_exception(_retryable), reraise=True)
        self.last_attempts = 0
        async for attempt in retrying:
            with attempt:
                self.last_attempts = attempt.retry_state.attempt_number
                return await self._once()
        raise AssertionError("unreachable")  # tenacity either returns or re-raises

    async def close(self) -> None:
        """Nothing to release: the client is the engine's."""

    async def _once(self) -> list[RawDraft]:
        try:  # read at each fetch: a rotated credential is used without a restart
            headers = self.src.resolved_headers(self.base_dir)
            params = self.src.resolved_params()
        except SecretError as exc:
            raise FetchError("config", str(exc)) from None
        if self.etag:
            headers["If-None-Match"] = self.etag
        if self.last_modified:
            headers["If-Modified-Since"] = self.last_modified
        limit = self.src.max_bytes
        try:
            async with self.client.stream("GET", self.url, headers=headers,
                                          params=params or None,
                                          timeout=self.src.timeout) as resp:
                if resp.status_code == 304:
                    return []
                if resp.status_code >= 400:
                    text = (await resp.aread())[:200].decode("utf-8", "replace")
                    raise FetchError("http", f"HTTP {resp.status_code}: {text.strip()[:120]}",
                                     resp.status_code)
                chunks: list[bytes] = []
                size = 0
                truncated = False
                async for chunk in resp.aiter_bytes():
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > limit:
                        truncated = True
                        break
                body = b"".join(chunks)
                self.etag = resp.headers.get("etag")
                self.last_modified = resp.headers.get("last-modified")
                return [RawDraft(self.src.name, body,
                                 content_type=resp.headers.get("content-type"),
                                 status_code=resp.status_code, truncated=truncated,
                                 origin=self.url)]
        except httpx.TimeoutException:
            raise FetchError("timeout", f"timed out after {self.src.timeout:g}s") from None
        except httpx.ConnectError as exc:
            raise FetchError("connect", f"cannot connect: {exc}") from None
        except httpx.HTTPError as exc:
            raise FetchError("protocol", f"{type(exc).__name__}: {exc}") from None


@register("http")
async def open_http(src: SourceConfig, ctx: SourceContext) -> Source:
    return HttpSource(src, ctx.http, src.url, backoff=src.backoff, base_dir=ctx.config.base_dir)
