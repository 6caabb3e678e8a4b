"""Source recovery: each source's health, its breaker, which sources a run asks (all at
once, or one after another until one answers), failover and failback, incidents, the
conditions a breaker does not see (stale, error rate), and the breakers' state kept in
the store across restarts. Breakers themselves are in breakers.py."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flowdeck.pipeline.core.clock import Clock
from flowdeck.pipeline.core.durations import human_duration
from flowdeck.pipeline.engine.breakers import CLOSED, HALF_OPEN, Breaker
from flowdeck.pipeline.engine.guard import StoreGuard
from flowdeck.pipeline.sources.base import FetchError
from flowdeck.storage.model import IssueDraft, RawDraft

if TYPE_CHECKING:
    from flowdeck.pipeline.engine.flow import FlowRuntime, RunSummary
    from flowdeck.storage.store import Store

log = logging.getLogger("flowdeck.engine")

# Issues whose condition can clear by itself (incidents close when a source answers).
AUTO_RESOLVE_KINDS = ("conflict", "low_quality", "anomaly", "quarantine")


def _iso(ms: int) -> str:
    return time.strftime("%H:%M:%SZ", time.gmtime(ms / 1000))


@dataclass
class SourceHealth:
    requests: int = 0
    errors: int = 0
    consecutive_failures: int = 0
    last_ok_ms: int | None = None
    last_error: str | None = None
    last_error_ms: int | None = None
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=200))
    unchanged: int = 0
    outcomes: deque = field(default_factory=deque)  # (ms, ok) over the error-rate window
    first_ok_ms: int | None = None  # first answer since the engine started
    newest_ts_ms: int | None = None  # newest record timestamp this source brought
    stale: bool = False  # answers, but nothing newer than stale_after
    error_rate_high: bool = False  # failures over the window at or above the threshold

    def window_error_rate(self, now_ms: int, window_s: float) -> tuple[float, int]:
        """(failure share, requests) over the last ``window_s`` seconds."""
        lo = now_ms - int(window_s * 1000)
        while self.outcomes and self.outcomes[0][0] < lo:
            self.outcomes.popleft()
        n = len(self.outcomes)
        return (sum(1 for _, ok in self.outcomes if not ok) / n if n else 0.0), n

    def as_dict(self) -> dict:
        lat = sorted(self.latencies_ms)
        p = (lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 1)) if lat else (
            lambda q: None)
        return {"requests": self.requests, "errors": self.errors,
                "consecutive_failures": self.consecutive_failures,
                "last_ok_ms": self.last_ok_ms, "last_error": self.last_error,
                "last_error_ms": self.last_error_ms, "latency_p50_ms": p(0.5),
                "latency_p95_ms": p(0.95), "unchanged": self.unchanged,
                "error_rate": round(self.errors / self.requests, 4) if self.requests else 0.0,
                "newest_ts_ms": self.newest_ts_ms, "stale": self.stale,
                "error_rate_high": self.error_rate_high}


# Records a recovery action: Engine.auto_action(flow, action, reason=..., outcome=...,
# source=..., duration_ms=...).
Action = Callable[..., Awaitable[None]]


class Failover:
    """The engine's source recovery; the per-flow state it works on (health, breakers,
    pinned, primary, active, incident) is on each FlowRuntime."""

    def __init__(self, store: Store, clock: Clock, guard: StoreGuard,
                 emit: Callable[..., None], action: Action,
                 notify: Callable[[dict], None]) -> None:
        self.store = store
        self.clock = clock
        self.guard = guard
        self.emit = emit
        self.action = action
        self.notify = notify  # an issue just opened, to the alerter

    def candidates(self, rt: FlowRuntime, now_ms: int) -> list[str]:
        """Sources to ask this run, best first: pinned, else enabled ones whose breaker
        allows it, by priority."""
        if rt.pinned:
            return [rt.pinned]
        order = sorted((s for s in rt.cfg.sources if s.enabled),
                       key=lambda s: (s.priority, s.name))
        return [s.name for s in order if rt.breakers[s.name].allows(now_ms)]

    async def fetch_sources(self, rt: FlowRuntime, summary: RunSummary) -> dict:
        """Ask the sources their breakers allow: all at once (merge), or one after another
        until one answers (failover). Each outcome feeds that source's breaker."""
        now = self.clock.now_ms()
        order = self.candidates(rt, now)
        for s in rt.cfg.sources:
            if s.enabled and s.name not in order:
                retry = rt.breakers[s.name].retry_at_ms
                summary.sources[s.name] = {"payloads": 0, "skipped": (
                    "pinned to " + rt.pinned if rt.pinned else
                    f"breaker open until {_iso(retry)}" if retry else "breaker open")}
        results: dict[str, list[RawDraft] | FetchError] = {}
        if rt.cfg.recovery.mode == "merge" or rt.pinned:
            fetched = await asyncio.gather(*(self.fetch(rt, s) for s in order))
            results = dict(zip(order, fetched, strict=True))
            for s, res in results.items():
                await self._breaker_outcome(rt, s, res)
        else:
            for s in order:
                res = await self.fetch(rt, s)
                results[s] = res
                await self._breaker_outcome(rt, s, res)
                if not isinstance(res, FetchError):
                    break
        return results

    async def fetch(self, rt: FlowRuntime, source: str) -> list[RawDraft] | FetchError:
        """One source's fetch, into its health."""
        h = rt.health[source]
        t0 = time.perf_counter()
        h.requests += 1
        try:
            out = await rt.fetchers[source].fetch()
        except FetchError as exc:
            h.errors += 1
            h.consecutive_failures += 1
            h.last_error = exc.message
            h.last_error_ms = self.clock.now_ms()
            h.outcomes.append((h.last_error_ms, False))
            self.emit("fetch", rt.name, source=source, ok=False, error=exc.message,
                      kind=exc.kind)
            return exc
        ms = (time.perf_counter() - t0) * 1000
        h.latencies_ms.append(ms)
        h.consecutive_failures = 0
        h.last_ok_ms = self.clock.now_ms()
        h.outcomes.append((h.last_ok_ms, True))
        if h.first_ok_ms is None:
            h.first_ok_ms = h.last_ok_ms
        self.emit("fetch", rt.name, source=source, ok=True, latency_ms=round(ms, 2),
                  payloads=len(out), bytes=sum(len(f.body) for f in out))
        return out

    async def _breaker_outcome(self, rt: FlowRuntime, source: str, res: Any) -> None:
        b = rt.breakers[source]
        before = b.state
        ok = not isinstance(res, FetchError)
        now = self.clock.now_ms()
        attempts = rt.fetchers[source].last_attempts
        if attempts > 1:
            await self.action(rt.name, "retry", source=source, outcome="ok" if ok else "failed",
                              reason=f"{attempts - 1} retr{'y' if attempts == 2 else 'ies'}"
                                     + ("" if ok else f", still failing: {res.message}"))
        change = b.record(ok, now)
        if before == HALF_OPEN:
            await self.action(rt.name, "probe", source=source,
                              outcome="ok" if ok else "failed",
                              reason=("half-open probe answered" if ok else
                                      f"half-open probe failed: {res.message}"))
        if change == "opened":
            n = len(b.outcomes)
            fails = sum(1 for o in b.outcomes if not o)
            await self.action(rt.name, "breaker_open", source=source, outcome="ok",
                              reason=f"{fails} of the last {n} requests failed "
                                     f"({res.message}); probing again in "
                                     f"{b.cooldown_s:g}s")
        elif change == "reopened":
            await self.action(rt.name, "breaker_open", source=source, outcome="ok",
                              reason=f"probe failed; waiting {b.cooldown_s:g}s "
                                     "before the next one")
        elif change == "closed":
            await self.action(rt.name, "breaker_close", source=source, outcome="ok",
                              reason=f"{b.settings.probes} probes in a row answered: "
                                     f"{source} is back")
        if b.state != before or change:
            await self.guard.write(self.store.save_source_state, rt.name, source,
                                   {"breaker": b.as_dict()}, now)
            self.emit("breaker", rt.name, source=source, state=b.state, before=before)

    async def after_run(self, rt: FlowRuntime, answered: list[str], summary: RunSummary) -> None:
        """Failover/failback and incidents, decided from who answered this run."""
        prio = {s.name: (s.priority, s.name) for s in rt.cfg.sources}
        # A source still on probation (half-open) answers but is not trusted as primary yet:
        # the flow returns to it once its breaker has closed.
        trusted = [s for s in answered if rt.breakers[s].state == CLOSED] or answered
        primary = min(trusted, key=lambda s: prio[s]) if trusted else None
        if primary and rt.primary and primary != rt.primary:
            back = prio[primary] < prio[rt.primary]
            await self.action(
                rt.name, "failback" if back else "failover", source=primary, outcome="ok",
                reason=(f"{primary} answers again: back from {rt.primary}" if back else
                        f"{rt.primary} unavailable: failed over to {primary}"))
        if primary:
            rt.primary = primary
        rt.active = sorted(answered, key=lambda s: prio[s])
        await self._source_conditions(rt, answered)
        quiet = rt.cfg.issues.auto_resolve
        if answered and quiet is not None:
            now = self.clock.now_ms()
            cleared = await self.guard.attempt([], self.store.auto_resolve, rt.name,
                                               AUTO_RESOLVE_KINDS, now - int(quiet * 1000), now)
            for row in cleared:
                self.emit("issue_state", rt.name, id=row["id"], state="resolved", actor="auto",
                          title=row["title"])
            if cleared:
                await self.action(
                    rt.name, "auto_resolve", outcome="ok",
                    reason=f"{len(cleared)} issue(s) quiet for {quiet:g}s resolved: "
                           + "; ".join(f"#{r['id']} {r['kind']}" for r in cleared[:10]))
        enabled = [s for s in rt.cfg.sources if s.enabled]
        now = self.clock.now_ms()
        if enabled and not answered and not rt.incident:
            rt.incident = True
            why = "; ".join(f"{s}: {i.get('error') or i.get('skipped')}"
                            for s, i in summary.sources.items())
            res = await self.guard.write(self.store.raise_issues, [IssueDraft(
                flow=rt.name, kind="incident", severity="critical",
                title=f"every source of {rt.name} is down: serving last-known-good values "
                      "marked stale",
                fingerprint=f"incident:{rt.name}", detail={"sources": summary.sources})], now)
            for issue in (res[0] if res else []):
                self.notify(issue)
            await self.action(rt.name, "incident", outcome="ok",
                              reason=f"all sources down ({why}); serving stale data")
            self.emit("flow_state", rt.name, state="failing", stale=True)
        elif answered and rt.incident:
            rt.incident = False
            await self.guard.write(self.store.resolve_by_fingerprint, rt.name,
                                   f"incident:{rt.name}", "auto", now)
            await self.action(rt.name, "recovered", source=primary, outcome="ok",
                              reason=f"{', '.join(answered)} answering again; "
                                     "incident resolved")
            self.emit("flow_state", rt.name, state=rt.state(), stale=False)

    async def _source_conditions(self, rt: FlowRuntime, answered: list[str]) -> None:
        """Failures the breaker does not see: a source that answers with nothing new for
        longer than the freshness target (stale), and a high error rate over a window."""
        rec = rt.cfg.recovery
        now = self.clock.now_ms()
        stale_after = (rec.stale_after if rec.stale_after is not None
                       else rt.cfg.freshness or 0.0)
        for src in rt.cfg.sources:
            s, h = src.name, rt.health[src.name]
            if not src.enabled:
                continue
            newest = max(rt.chain.collector.sources[s].last_ts.values(), default=None)
            if newest is not None:
                h.newest_ts_ms = newest
            if rec.stale and not rt.cfg.historical and s in answered:
                base = h.newest_ts_ms if h.newest_ts_ms is not None else h.first_ok_ms
                age_s = (now - base) / 1000 if base is not None else 0.0
                if age_s > stale_after and not h.stale:
                    h.stale = True
                    what = (f"its newest record is {human_duration(age_s)} old" if
                            h.newest_ts_ms is not None
                            else f"it brought no record in {human_duration(age_s)}")
                    await self._condition(
                        rt, s, "stale_source", "stale", True, "warning",
                        f"{s} answers but {what} (freshness target "
                        f"{human_duration(stale_after)})",
                        {"newest_ts_ms": h.newest_ts_ms, "stale_after_s": stale_after})
                elif age_s <= stale_after and h.stale:
                    h.stale = False
                    await self._condition(rt, s, "stale_source", "fresh", False, "warning",
                                          f"{s} brings new records again")
            er = rec.error_rate
            if er.threshold is None:
                continue
            rate, n = h.window_error_rate(now, er.window)
            if n < er.min_requests:
                continue
            if rate >= er.threshold and not h.error_rate_high:
                h.error_rate_high = True
                await self._condition(
                    rt, s, "error_rate", "error_rate", True,
                    "error" if rate >= 0.8 else "warning",
                    f"{s}: {rate:.0%} of {n} requests failed over the last {er.window:g}s "
                    f"(threshold {er.threshold:.0%})",
                    {"rate": round(rate, 3), "requests": n, "window_s": er.window})
            elif rate < er.threshold and h.error_rate_high:
                h.error_rate_high = False
                await self._condition(rt, s, "error_rate", "error_rate_ok", False, "warning",
                                      f"{s}: error rate back to {rate:.0%} of {n} requests")

    async def _condition(self, rt: FlowRuntime, source: str, kind: str, action: str,
                         raised: bool, severity: str, reason: str,
                         detail: dict | None = None) -> None:
        """Open (or close) a per-source issue and record the recovery action saying so."""
        fingerprint = f"{kind}:{rt.name}:{source}"
        now = self.clock.now_ms()
        if raised:
            res = await self.guard.write(self.store.raise_issues, [IssueDraft(
                flow=rt.name, kind=kind, severity=severity, title=reason,
                fingerprint=fingerprint, source=source, detail=detail or {})], now)
            for issue in (res[0] if res else []):
                self.notify(issue)
            self.emit("issue", rt.name, kind=kind, severity=severity, title=reason, key=None,
                      source=source)
        else:
            await self.guard.write(self.store.resolve_by_fingerprint, rt.name, fingerprint,
                                   "auto", now)
        await self.action(rt.name, action, source=source, outcome="ok", reason=reason)
        self.emit("flow_state", rt.name, state=rt.state())

    def reset_breaker(self, rt: FlowRuntime, source: str) -> str:
        """An operator's reset (worker thread): closed now, saved; returns the state before."""
        b = rt.breakers[source]
        before = b.state
        b.reset()
        self.store.save_source_state(rt.name, source, {"breaker": b.as_dict()},
                                     self.clock.now_ms())
        return before

    def load_state(self, rt: FlowRuntime) -> None:
        """At start (worker thread): breakers and open conditions as a restart left them."""
        for (_flow, source), st in self.store.source_states(rt.name).items():
            if source in rt.breakers and "breaker" in st:
                rt.breakers[source] = Breaker.from_dict(st["breaker"], rt.breaker_settings)
        open_issues = self.store.issues(flow=rt.name, state=("open", "acknowledged"))
        rt.incident = any(i["kind"] == "incident" for i in open_issues)
        for i in open_issues:  # conditions still open from before a restart close when clear
            if i["source"] in rt.health and i["kind"] == "stale_source":
                rt.health[i["source"]].stale = True
            elif i["source"] in rt.health and i["kind"] == "error_rate":
                rt.health[i["source"]].error_rate_high = True
