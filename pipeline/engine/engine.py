"""The engine: runs each flow's sources through the stages into the store, on a schedule.

One run of a flow: fetch every enabled source at once (async HTTP), commit
each payload to the raw store *first*, then process all payloads of the run
in the engine's worker thread: per source collect -> validate -> transform ->
enrich -> quality, then all sources together resolve -> detect -> store (one
transaction). Processing happens on one worker thread, so stage state needs
no locks and the event loop (console, feed) stays free.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import os
import re
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from flowdeck.pipeline.config import Config, FlowConfig
from flowdeck.pipeline.core.clock import Clock, SystemClock
from flowdeck.pipeline.core.hub import Event, Hub
from flowdeck.pipeline.engine.alerts import Alerter
from flowdeck.pipeline.engine.breakers import CLOSED, HALF_OPEN, Breaker, BreakerSettings
from flowdeck.pipeline.engine.spool import RawSpool
from flowdeck.pipeline.model import STAGES, Batch, StageStats
from flowdeck.pipeline.sources.base import Fetched, FetchError
from flowdeck.pipeline.sources.file import FileSource
from flowdeck.pipeline.sources.http import HttpSource
from flowdeck.pipeline.sources.websocket import WebsocketSource
from flowdeck.pipeline.stages.collect import Collector
from flowdeck.pipeline.stages.detect import AnomalyDetector
from flowdeck.pipeline.stages.enrich import Enricher
from flowdeck.pipeline.stages.quality import QualityCheck
from flowdeck.pipeline.stages.resolve import Resolver
from flowdeck.pipeline.stages.transform import Transformer
from flowdeck.pipeline.stages.validate import Validator
from flowdeck.storage.caches import Caches, CacheSettings
from flowdeck.storage.db import UNAVAILABLE
from flowdeck.storage.model import BatchWrite, IssueDraft, RawDraft
from flowdeck.storage.store import Store

log = logging.getLogger("flowdeck.engine")


# Issues whose condition can clear by itself (incidents close when a source answers).
AUTO_RESOLVE_KINDS = ("conflict", "low_quality", "anomaly", "quarantine")
MAX_DEFERRED = 10_000  # bookkeeping writes held while the store is away


def _short(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def _gc_paused(fn):
    """Run ``fn`` with the cyclic garbage collector paused (reference counting still frees).

    A batch allocates a few objects per record and keeps them alive until it is stored,
    so the collector would walk the whole growing batch again and again for nothing: it
    cost about a third of the stages' time (bench/bench_throughput.py, 100k records).
    """
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            if was_enabled:
                gc.enable()
    return wrapper


_heap_frozen = False


def _freeze_startup_heap() -> None:
    """Once per process, after the engine has started: collect, then ``gc.freeze()``.

    What start-up leaves alive (modules, SQLAlchemy's compiled metadata, the config, the
    stages) lives as long as the process, yet every full collection walked all of it: one
    took 55-80 ms in bench_feed, holding the GIL, so the feed's event loop and the next
    batch waited behind it. Frozen objects are skipped by every later collection; cycles
    made later are still collected.
    """
    global _heap_frozen
    if _heap_frozen:
        return
    _heap_frozen = True
    gc.collect()
    gc.freeze()


def _iso(ms: int) -> str:
    return time.strftime("%H:%M:%SZ", time.gmtime(ms / 1000))


@dataclass
class Payload:
    """A committed raw payload waiting to be processed."""

    raw_id: int
    source: str
    body: bytes
    content_type: str | None
    fetched_ms: int
    truncated: bool = False


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


@dataclass
class RunSummary:
    flow: str
    run_id: int | None
    trigger: str
    started_ms: int
    finished_ms: int = 0
    status: str = "ok"
    stages: dict[str, StageStats] = field(default_factory=lambda: {s: StageStats()
                                                                   for s in STAGES})
    sources: dict[str, dict] = field(default_factory=dict)
    payloads: int = 0
    quarantined: int = 0
    issues_raised: int = 0
    issues_opened: int = 0
    conflicts: int = 0
    anomalies: int = 0
    buffered: int = 0  # payloads spooled because the store was unavailable
    error: str | None = None
    changed_keys: set[str] = field(default_factory=set)  # keys with new values stored

    def as_dict(self) -> dict:
        return {"flow": self.flow, "run_id": self.run_id, "trigger": self.trigger,
                "status": self.status, "started_ms": self.started_ms,
                "finished_ms": self.finished_ms,
                "duration_ms": self.finished_ms - self.started_ms,
                "payloads": self.payloads, "quarantined": self.quarantined,
                "issues_raised": self.issues_raised, "issues_opened": self.issues_opened,
                "conflicts": self.conflicts, "anomalies": self.anomalies,
                "buffered": self.buffered,
                "stages": {k: v.as_dict() for k, v in self.stages.items()},
                "sources": self.sources, "error": self.error}


class FlowRuntime:
    """A flow's stages, fetchers and counters."""

    def __init__(self, name: str, cfg: FlowConfig, config: Config) -> None:
        self.name = name
        self.cfg = cfg
        self.collector = Collector(name, cfg)
        self.validator = Validator(name, cfg)
        self.transformer = Transformer(name, cfg)
        self.enricher = Enricher(name, cfg, config)
        self.quality = QualityCheck(name, cfg)
        self.resolver = Resolver(name, cfg)
        self.detector = AnomalyDetector(name, cfg)
        self.metrics = cfg.metrics()
        self.fetchers: dict[str, Any] = {}
        self.health: dict[str, SourceHealth] = {s.name: SourceHealth() for s in cfg.sources}
        self.version_id: int | None = None
        self.paused = False
        self.totals: dict[str, StageStats] = {s: StageStats() for s in STAGES}
        self.runs = 0
        self.failed_runs = 0
        self.last_run: RunSummary | None = None
        self.last_success_ms: int | None = None
        self.throughput: deque[tuple[int, int]] = deque(maxlen=120)  # (finished_ms, records out)
        self.running = False
        self.lock = asyncio.Lock()
        b = cfg.recovery.breaker
        self.breaker_settings = BreakerSettings(
            window=b.window, min_requests=b.min_requests, failure_rate=b.failure_rate,
            cooldown_s=b.cooldown, max_cooldown_s=b.max_cooldown, probes=b.probes)
        self.breakers = {s.name: Breaker(self.breaker_settings) for s in cfg.sources}
        self.pinned: str | None = None  # operator's forced failover: only this source
        self.primary: str | None = None  # best source that answered in the last run
        self.active: list[str] = []  # sources that answered in the last run
        self.incident = False  # every source down: serving last-known-good, marked stale
        self.store_down_since: int | None = None  # this flow met the store unavailable
        self.resume_pending = False  # committed payloads left unprocessed by a store failure
        # L1 entries dropped just before a run's records event, reported by the run's
        # invalidation (Engine._publish_stored)
        self.dropped_early: dict[str, int] = {}
        self.spool_full_noted = False

    def stage_versions(self) -> dict[str, str]:
        return {st.name: st.version for st in (self.collector, self.validator, self.transformer,
                                               self.enricher, self.quality, self.resolver,
                                               self.detector)}

    def state(self) -> str:
        if self.paused:
            return "paused"
        enabled = [s.name for s in self.cfg.sources if s.enabled]
        down = [s for s in enabled if self.health[s].consecutive_failures > 0
                or self.breakers[s].state != CLOSED]
        if self.incident or (enabled and len(down) == len(enabled)):
            return "failing"
        if down or self.store_down_since is not None or (
                self.last_run and self.last_run.status != "ok"):
            return "degraded"
        if any(self.health[s].stale or self.health[s].error_rate_high for s in enabled):
            return "degraded"
        return "healthy"

    def candidates(self, now_ms: int) -> list[str]:
        """Sources to ask this run, best first: pinned, else enabled ones whose breaker
        allows it, by priority."""
        if self.pinned:
            return [self.pinned]
        order = sorted((s for s in self.cfg.sources if s.enabled),
                       key=lambda s: (s.priority, s.name))
        return [s.name for s in order if self.breakers[s.name].allows(now_ms)]


# What deferred batches owe (series points, raw status: Store.write_batch) is written
# once it is store.derived_delay old or this many rows, whichever comes first ...
DERIVED_FLUSH_ROWS = 8000
# ... in steps of at most this many series points, each its own transaction on the
# worker, so a run that arrives meanwhile waits for one step (~2-6 ms), not for all
# of it (a 4,000-point flush in one go took 23-30 ms in bench_feed and was its tail).
DERIVED_STEP_ROWS = 1000


class Engine:
    def __init__(self, config: Config, store: Store, *, clock: Clock | None = None,
                 hub: Hub | None = None, simulator_url: str | None = None,
                 scenario: str | None = None, seed: int = 7) -> None:
        self.config = config
        self.store = store
        self.clock = clock or SystemClock()
        self.hub = hub or Hub()
        self.simulator_url = simulator_url
        self.scenario = scenario
        self.seed = seed
        self.simulator = None
        self.flows = {name: FlowRuntime(name, f, config) for name, f in config.flows.items()}
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="flowdeck-worker")
        # Viewers' reads (through the caches) use their own threads, so a read never
        # waits behind a batch being processed.
        self.reader = ThreadPoolExecutor(2, thread_name_prefix="flowdeck-reader")
        self.caches = Caches(cache_settings(config), store=store, reader=self.reader,
                             timer=self.clock.now, emit=self.emit, on_action=self._cache_action,
                             settle=self._settle_history)
        self.http: httpx.AsyncClient | None = None
        self.alerter: Alerter | None = None
        self.scheduler = None
        self.started = False
        self._tasks: set[asyncio.Task] = set()
        self._cache_ticks: asyncio.Task | None = None
        self.store_down_since: int | None = None  # the store is unavailable since then
        self.store_error: str | None = None
        self._deferred: deque = deque()  # bookkeeping writes waiting for the store, in order
        # Series, roll-ups and raw status owed by deferred batches (Store.write_batch):
        # written in steps by a flush task once they are store.derived_delay old or
        # DERIVED_FLUSH_ROWS, before history is read, and at stop.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._derived_signalled = False  # the worker has asked the loop to look
        self._derived_closed = False  # stopping: what is owed is written by _stop_derived
        self._derived_timer: asyncio.TimerHandle | None = None
        self._derived_flush: asyncio.Task | None = None
        self.deferred_dropped = 0
        root = self._spool_root()
        self.spools = {name: RawSpool(root / name if root else None, config.store.spool_max)
                       for name in self.flows}

    # ------------------------------------------------------------ lifecycle

    async def _db(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.worker, fn, *args)

    def _spool_root(self) -> Path | None:
        """store.spool_dir, else next to a SQLite file, else ./flowdeck-spool/<database>;
        None (memory only) for an in-memory database."""
        if self.config.store.spool_dir:
            return Path(os.path.expanduser(self.config.store.spool_dir))
        url = getattr(getattr(self.store, "engine", None), "url", None)
        if url is None:
            return None
        if url.get_backend_name() == "sqlite":
            db = url.database
            if not db or db == ":memory:" or db.startswith("file:"):
                return None
            return Path(db + ".spool")
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{url.host or 'local'}-{url.port or ''}-"
                                                f"{url.database or ''}")
        return Path("flowdeck-spool") / name

    # ------------------------------------------------------------ store availability

    def _store_failed(self, exc: BaseException) -> None:
        self.store_error = _short(exc)
        if self.store_down_since is None:
            self.store_down_since = self.clock.now_ms()
            log.warning("store unavailable: %s", self.store_error)
            self.emit("log", None, message=f"store unavailable ({self.store_error}): raw "
                                           "payloads are buffered until it answers")

    async def _write(self, fn, *args, **kw):
        """A bookkeeping write (actions, issues, source state, runs): while the store is
        away it is held, in order, and written when the store answers again."""
        call = functools.partial(fn, *args, **kw)
        if self.store_down_since is None:
            try:
                return await self._db(call)
            except UNAVAILABLE as exc:
                self._store_failed(exc)
        if len(self._deferred) >= MAX_DEFERRED:
            self._deferred.popleft()
            self.deferred_dropped += 1
        self._deferred.append(call)
        return None

    async def _try(self, default, fn, *args, **kw):
        """A store call that can be skipped while the store is away."""
        if self.store_down_since is not None:
            return default
        try:
            return await self._db(functools.partial(fn, *args, **kw))
        except UNAVAILABLE as exc:
            self._store_failed(exc)
            return default

    async def _flush_deferred(self) -> bool:
        while self._deferred:
            try:
                await self._db(self._deferred[0])
            except UNAVAILABLE as exc:
                self._store_failed(exc)
                return False
            self._deferred.popleft()
        return True

    def _late_run(self, flow: str, trigger: str, started_ms: int, status: str, stats: dict,
                  finished_ms: int, error: str | None) -> None:
        """Record a run that happened while the store was away."""
        self.store.finish_run(self.store.start_run(flow, trigger, started_ms), status, stats,
                              finished_ms, error)

    async def _drain_spool(self, rt: FlowRuntime) -> int:
        """Commit the flow's spooled payloads to the raw store, oldest first."""
        spool = self.spools[rt.name]
        if not len(spool):
            return 0
        n = 0
        for e in await self._db(spool.entries):
            try:
                await self._db(functools.partial(
                    self.store.insert_raw, rt.name, e.source, e.body, e.fetched_ms,
                    content_type=e.content_type, status_code=e.status_code,
                    truncated=e.truncated))
            except UNAVAILABLE as exc:
                self._store_failed(exc)
                break
            await self._db(spool.remove, e)
            n += 1
        return n

    async def _buffer(self, rt: FlowRuntime, source: str, f: Fetched, summary: RunSummary,
                      fetched_ms: int) -> None:
        spool = self.spools[rt.name]
        kept = await self._db(functools.partial(
            spool.add, source, f.body, fetched_ms, content_type=f.content_type,
            status_code=f.status, truncated=f.truncated))
        if kept:
            summary.buffered += 1
            return
        if not rt.spool_full_noted:
            rt.spool_full_noted = True
            await self.auto_action(rt.name, "spool_full", source=source, outcome="failed",
                                   reason=f"the raw spool is full ({spool.bytes} bytes, "
                                          "store.spool_max): new payloads are dropped until "
                                          "the store answers")

    async def _note_outage(self, rt: FlowRuntime, summary: RunSummary) -> None:
        if rt.store_down_since is None:
            rt.store_down_since = self.store_down_since or self.clock.now_ms()
            where = self.spools[rt.name].folder or "memory"
            await self.auto_action(
                rt.name, "store_unavailable", outcome="failed",
                reason=f"database unavailable ({self.store_error}): fetched payloads are "
                       f"buffered in {where}, retried every {self.config.store.retry:g}s")
            self.emit("issue", rt.name, kind="store_unavailable", severity="error",
                      title=f"database unavailable: {self.store_error}", key=None, source=None)
            self.emit("flow_state", rt.name, state=rt.state())
        if summary.status == "ok":
            summary.status = "partial"
        spooled = len(self.spools[rt.name])
        summary.error = (f"store unavailable ({self.store_error}): {spooled} payload(s) "
                         "buffered") + (f"; {summary.error}" if summary.error else "")

    async def _outage_over(self, rt: FlowRuntime, committed: int) -> None:
        """The store answers again and the flow's buffer is committed: say so, and record
        the outage as an issue that is already closed."""
        down, rt.store_down_since = rt.store_down_since, None
        rt.spool_full_noted = False
        now = self.clock.now_ms()
        fp = f"store_unavailable:{rt.name}"
        dropped = self.spools[rt.name].dropped
        res = await self._write(self.store.raise_issues, [IssueDraft(
            flow=rt.name, kind="store_unavailable", severity="error",
            title=f"the database was unavailable for {(now - down) / 1000:.0f}s "
                  f"({self.store_error}); {committed} buffered payload(s) committed",
            fingerprint=fp, detail={"since_ms": down, "until_ms": now, "committed": committed,
                                    "dropped": dropped})], down)
        for issue in (res[0] if res else []):
            if self.alerter is not None:
                self.alerter.notify(issue)
        await self._write(self.store.resolve_by_fingerprint, rt.name, fp, "auto", now)
        await self.auto_action(rt.name, "store_recovered", outcome="ok",
                               duration_ms=float(now - down),
                               reason=f"database answers again after {(now - down) / 1000:.0f}s:"
                                      f" {committed} buffered payload(s) committed"
                                      + (f", {dropped} dropped (spool full)" if dropped else ""))
        self.emit("flow_state", rt.name, state=rt.state())

    async def _retry_store(self) -> None:
        """The retry timer: commit buffered payloads even when no run is due."""
        for rt in self.flows.values():
            if rt.lock.locked():
                continue
            if len(self.spools[rt.name]) or rt.store_down_since is not None or rt.resume_pending:
                task = asyncio.current_task()
                if task is not None:
                    self._tasks.add(task)
                try:
                    await self.run_flow(rt.name, "spool", fetch=False)
                except Exception:
                    log.exception("spool retry of %s failed", rt.name)
                finally:
                    if task is not None:
                        self._tasks.discard(task)

    async def start(self, *, schedule: bool = True, resume: bool = True) -> None:
        loop = asyncio.get_running_loop()
        self.hub.bind(loop)
        self._loop = loop
        self._derived_closed = False
        self.http = httpx.AsyncClient(http2=False, follow_redirects=True,
                                      limits=httpx.Limits(max_connections=50))
        self.alerter = Alerter(self.config.alerts, self.http, self._alert_done)
        self.alerter.bind(loop)
        if any(s.kind == "simulated" for f in self.config.flows.values() for s in f.sources):
            if not self.simulator_url:
                from flowdeck.pipeline.demo.simulator import Scenario, Simulator

                scen = Scenario.load(self.scenario) if self.scenario else None
                self.simulator = Simulator(seed=self.seed, scenario=scen, clock=self.clock)
                await self.simulator.start()
                self.simulator_url = self.simulator.base_url
                self.emit("log", None, message=f"simulator started on {self.simulator_url}"
                          + (f" (scenario {self.scenario})" if self.scenario else ""))
        now = self.clock.now_ms()
        for rt in self.flows.values():
            rt.version_id = await self._db(
                self.store.pipeline_version, rt.name, rt.cfg.model_dump(mode="json"),
                rt.stage_versions(), now)
            for src in rt.cfg.sources:
                rt.fetchers[src.name] = self._make_fetcher(src)
            await self._db(self._warm_detectors, rt)
            await self._db(self._load_recovery_state, rt)
        await self.caches.start()
        self._cache_ticks = loop.create_task(self._cache_stats())
        self.started = True
        if resume:
            await self.resume()
        _freeze_startup_heap()
        if schedule:
            self._start_scheduler()

    def _make_fetcher(self, src):
        if src.kind in ("http", "simulated"):
            url = src.url
            if src.kind == "simulated":
                url = self.simulator_url.rstrip("/") + "/" + src.url.lstrip("/")
            return HttpSource(src, self.http, url, backoff=src.backoff)
        if src.kind == "file":
            return FileSource(src, str(self.config.resolve_path(src.path)))
        return WebsocketSource(src, src.url)

    def _warm_detectors(self, rt: FlowRuntime) -> None:
        for spec in rt.cfg.detect:
            hist = self.store.recent_values(rt.name, spec.metric, spec.window)
            rt.detector.warm(spec.metric, hist)

    def _start_scheduler(self) -> None:
        from apscheduler.schedulers.asyncio import AsyncIOScheduler
        from apscheduler.triggers.cron import CronTrigger
        from apscheduler.triggers.interval import IntervalTrigger

        self.scheduler = AsyncIOScheduler(timezone="UTC")
        for name, rt in self.flows.items():
            sch = rt.cfg.schedule
            if sch.every is not None:
                trigger = IntervalTrigger(seconds=sch.every, jitter=sch.jitter or None)
            else:
                trigger = CronTrigger.from_crontab(sch.cron, timezone="UTC")
            self.scheduler.add_job(self._scheduled, trigger, args=[name], id=name, name=name,
                                   max_instances=1, coalesce=True,
                                   misfire_grace_time=max(1, int(sch.every or 60)),
                                   next_run_time=self.clock.utcnow())
        self.scheduler.add_job(self._retry_store, IntervalTrigger(seconds=self.config.store.retry),
                               id="flowdeck:store-retry", name="store retry", max_instances=1,
                               coalesce=True)
        self.scheduler.start()

    async def _scheduled(self, name: str) -> None:
        if self.flows[name].paused:
            return
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self.run_flow(name, "schedule")
        except Exception:  # a run must never kill the scheduler
            log.exception("run of %s failed", name)
        finally:
            if task is not None:
                self._tasks.discard(task)

    def pause(self, name: str) -> bool:
        """Stop scheduling a flow (a run in progress finishes). False if it was paused."""
        rt = self.flows[name]
        if rt.paused:
            return False
        rt.paused = True
        if self.scheduler is not None and self.scheduler.get_job(name):
            self.scheduler.pause_job(name)
        self.emit("flow_state", name, state="paused")
        return True

    def resume_flow(self, name: str) -> bool:
        rt = self.flows[name]
        if not rt.paused:
            return False
        rt.paused = False
        if self.scheduler is not None and self.scheduler.get_job(name):
            self.scheduler.resume_job(name)
        self.emit("flow_state", name, state=rt.state())
        return True

    def next_run_ms(self, name: str) -> int | None:
        if self.scheduler is None:
            return None
        job = self.scheduler.get_job(name)
        if job is None or job.next_run_time is None:
            return None
        return int(job.next_run_time.timestamp() * 1000)

    async def stop(self) -> None:
        """Finish the batch in progress, then release everything."""
        if self.scheduler is not None:
            # No new runs; let the ones in progress finish (shutting the scheduler down
            # first would cancel them mid-batch), then stop it.
            self.scheduler.pause()
            if self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
            self.scheduler.shutdown(wait=False)
            self.scheduler = None
        for rt in self.flows.values():  # manual runs and replays in progress
            async with rt.lock:
                pass
        for rt in self.flows.values():
            for f in rt.fetchers.values():
                if isinstance(f, WebsocketSource):
                    await f.stop()
        await self._stop_derived()
        if self._cache_ticks is not None:
            self._cache_ticks.cancel()
            self._cache_ticks = None
        await self.caches.stop()
        if self.alerter is not None:
            await self.alerter.drain()
        if self.http is not None:
            await self.http.aclose()
        if self.simulator is not None:
            await self.simulator.stop()
            self.simulator = None
        self.worker.shutdown(wait=True)
        self.reader.shutdown(wait=True)
        self.started = False

    # ------------------------------------------------------------ events

    def emit(self, type_: str, flow_name: str | None, /, **data: Any) -> None:
        self.hub.publish(Event(type=type_, ts=self.clock.now(), flow=flow_name, data=data))

    # ------------------------------------------------------------ runs

    async def run_flow(self, name: str, trigger: str = "manual", *,
                       fetch: bool = True) -> RunSummary:
        """One run. ``fetch=False`` only commits and processes what the store could not
        take before (the spool retry)."""
        rt = self.flows[name]
        async with rt.lock:
            rt.running = True
            try:
                return await self._run(rt, trigger, fetch)
            finally:
                rt.running = False

    async def run_all_once(self) -> list[RunSummary]:
        return list(await asyncio.gather(*(self.run_flow(n, "once") for n in self.flows)))

    async def _run(self, rt: FlowRuntime, trigger: str, fetch: bool = True) -> RunSummary:
        started = self.clock.now_ms()
        try:  # the first write of a run: while the store is away, this is the probe
            run_id = await self._db(self.store.start_run, rt.name, trigger, started)
        except UNAVAILABLE as exc:
            self._store_failed(exc)
            run_id = None
        summary = RunSummary(rt.name, run_id, trigger, started)
        self.emit("run_started", rt.name, run_id=run_id, trigger=trigger)
        try:
            backlog = False
            if run_id is not None:  # the store answers: held writes first, then the spool
                self.store_down_since = None
                if await self._flush_deferred():
                    committed = await self._drain_spool(rt)
                    if self.store_down_since is None and rt.store_down_since is not None:
                        await self._outage_over(rt, committed)
                    backlog = committed > 0 or rt.resume_pending
            enabled = [s for s in rt.cfg.sources if s.enabled]
            results = await self._fetch_sources(rt, summary) if fetch else {}
            payloads: list[Payload] = []
            spool = self.spools[rt.name]
            fetched_now: list[tuple[str, Fetched, int, dict]] = []  # in fetch order
            for src_name, fetched in results.items():
                src = rt.cfg.sources[[s.name for s in rt.cfg.sources].index(src_name)]
                info = summary.sources.setdefault(src.name, {"payloads": 0})
                if isinstance(fetched, FetchError):
                    info["error"] = fetched.message
                    continue
                for f in fetched:
                    fetched_now.append((src.name, f, self.clock.now_ms(), info))
            committed_ids = None
            if fetched_now and self.store_down_since is None and not len(spool):
                # All of the run's payloads in one transaction, committed before any
                # processing (raw first); while the spool holds older ones, keep the order.
                try:
                    committed_ids = await self._db(functools.partial(
                        self.store.insert_raws, rt.name,
                        [RawDraft(name, f.body, ms, f.content_type, f.status, f.truncated)
                         for name, f, ms, _ in fetched_now], run_id=run_id))
                except UNAVAILABLE as exc:
                    self._store_failed(exc)  # nothing of it was committed: spool it all
            if committed_ids is None:
                for name, f, ms, _ in fetched_now:
                    await self._buffer(rt, name, f, summary, ms)
            else:
                for (name, f, ms, info), (raw_id, new) in zip(fetched_now, committed_ids,
                                                              strict=True):
                    if not new and await self._try(False, self.store.raw_processed, raw_id):
                        rt.health[name].unchanged += 1
                        info["unchanged"] = info.get("unchanged", 0) + 1
                        continue
                    info["payloads"] += 1
                    payloads.append(Payload(raw_id, name, f.body, f.content_type, ms,
                                            f.truncated))
            if backlog and self.store_down_since is None:
                # Everything committed and not yet processed, in order: what the spool just
                # committed, what a store failure left half done, and this run's payloads.
                rows = await self._try(None, self.store.pending_raw, rt.name)
                if rows is not None:
                    rt.resume_pending = False
                    payloads = self._payloads(rt, rows)
            if payloads and self.store_down_since is None:
                try:
                    await self._db(self._process, rt, payloads, summary, False)
                    await self._after_write(rt, summary)
                except UNAVAILABLE as exc:
                    self._store_failed(exc)
            if payloads and self.store_down_since is not None:
                rt.resume_pending = True  # committed, not processed: the next good run does
            errors = [s for s, i in summary.sources.items() if "error" in i]
            answered = [s for s in results if not isinstance(results[s], FetchError)]
            if fetch and enabled and not answered:
                summary.status = "failed"
                summary.error = "; ".join(f"{s}: {i.get('error') or i.get('skipped')}"
                                          for s, i in summary.sources.items())
            elif errors:
                summary.status = "partial"
            if self.store_down_since is not None:
                await self._note_outage(rt, summary)
            if fetch:
                await self._after_run(rt, answered, summary)
        except Exception as exc:
            log.exception("run %s of %s failed", run_id, rt.name)
            summary.status = "failed"
            summary.error = f"{type(exc).__name__}: {exc}"
        summary.finished_ms = self.clock.now_ms()
        if run_id is not None:
            await self._write(self.store.finish_run, run_id, summary.status, summary.as_dict(),
                              summary.finished_ms, summary.error)
        else:
            await self._write(self._late_run, rt.name, trigger, started, summary.status,
                              summary.as_dict(), summary.finished_ms, summary.error)
        self._account(rt, summary)
        self.emit("run_finished", rt.name, **summary.as_dict())
        return summary

    def _payloads(self, rt: FlowRuntime, rows: list[dict]) -> list[Payload]:
        known = {s.name for s in rt.cfg.sources}
        return [Payload(r["id"], r["source"], r["body"], r["content_type"], r["fetched_ms"],
                        r["truncated"]) for r in rows if r["source"] in known]

    # ------------------------------------------------------------ caches

    async def _after_write(self, rt: FlowRuntime, summary: RunSummary) -> None:
        """New values stored: invalidate those keys in every cache layer, then pre-warm what
        readers used since the last run (hottest keys first) so the next readers hit."""
        if not summary.changed_keys:
            return
        dropped, rt.dropped_early = rt.dropped_early, {}
        await self.caches.invalidate(rt.name, summary.changed_keys,
                                     l3_rows=len(summary.changed_keys), dropped=dropped)
        if self.config.cache.prewarm:
            await self.caches.rewarm(rt.name, self.config.cache.prewarm)

    async def _cache_stats(self) -> None:
        """Every stats interval: one point of per-layer hit rates, announced on the hub."""
        while True:
            await asyncio.sleep(self.config.cache.stats_interval)
            try:
                point = await self.caches.sample()
            except Exception:  # statistics must never take the engine down
                log.exception("cache statistics failed")
                continue
            self.emit("cache_stats", None, layers=self.caches.layer_stats(), point=point)

    async def _cache_action(self, action: str, outcome: str, reason: str) -> None:
        await self.auto_action(None, action, source="redis", outcome=outcome, reason=reason)

    # ------------------------------------------------------------ recovery

    async def _fetch_sources(self, rt: FlowRuntime, summary: RunSummary) -> dict:
        """Ask the sources their breakers allow: all at once (merge), or one after another
        until one answers (failover). Each outcome feeds that source's breaker."""
        now = self.clock.now_ms()
        order = rt.candidates(now)
        for s in rt.cfg.sources:
            if s.enabled and s.name not in order:
                retry = rt.breakers[s.name].retry_at_ms
                summary.sources[s.name] = {"payloads": 0, "skipped": (
                    "pinned to " + rt.pinned if rt.pinned else
                    f"breaker open until {_iso(retry)}" if retry else "breaker open")}
        results: dict[str, list[Fetched] | FetchError] = {}
        if rt.cfg.recovery.mode == "merge" or rt.pinned:
            fetched = await asyncio.gather(*(self._fetch(rt, s) for s in order))
            results = dict(zip(order, fetched, strict=True))
            for s, res in results.items():
                await self._breaker_outcome(rt, s, res)
        else:
            for s in order:
                res = await self._fetch(rt, s)
                results[s] = res
                await self._breaker_outcome(rt, s, res)
                if not isinstance(res, FetchError):
                    break
        return results

    async def _breaker_outcome(self, rt: FlowRuntime, source: str, res) -> None:
        b = rt.breakers[source]
        before = b.state
        ok = not isinstance(res, FetchError)
        now = self.clock.now_ms()
        attempts = getattr(rt.fetchers[source], "last_attempts", 1)
        if attempts > 1:
            await self.auto_action(rt.name, "retry", source=source, outcome="ok" if ok else "failed",
                                   reason=f"{attempts - 1} retr{'y' if attempts == 2 else 'ies'}"
                                          + ("" if ok else f", still failing: {res.message}"))
        change = b.record(ok, now)
        if before == HALF_OPEN:
            await self.auto_action(rt.name, "probe", source=source,
                                   outcome="ok" if ok else "failed",
                                   reason=("half-open probe answered" if ok else
                                           f"half-open probe failed: {res.message}"))
        if change == "opened":
            n = len(b.outcomes)
            fails = sum(1 for o in b.outcomes if not o)
            await self.auto_action(rt.name, "breaker_open", source=source, outcome="ok",
                                   reason=f"{fails} of the last {n} requests failed "
                                          f"({res.message}); probing again in "
                                          f"{b.cooldown_s:g}s")
        elif change == "reopened":
            await self.auto_action(rt.name, "breaker_open", source=source, outcome="ok",
                                   reason=f"probe failed; waiting {b.cooldown_s:g}s "
                                          "before the next one")
        elif change == "closed":
            await self.auto_action(rt.name, "breaker_close", source=source, outcome="ok",
                                   reason=f"{b.settings.probes} probes in a row answered: "
                                          f"{source} is back")
        if b.state != before or change:
            await self._write(self.store.save_source_state, rt.name, source,
                              {"breaker": b.as_dict()}, now)
            self.emit("breaker", rt.name, source=source, state=b.state, before=before)

    async def _after_run(self, rt: FlowRuntime, answered: list[str], summary: RunSummary) -> None:
        """Failover/failback and incidents, decided from who answered this run."""
        prio = {s.name: (s.priority, s.name) for s in rt.cfg.sources}
        # A source still on probation (half-open) answers but is not trusted as primary yet:
        # the flow returns to it once its breaker has closed.
        trusted = [s for s in answered if rt.breakers[s].state == CLOSED] or answered
        primary = min(trusted, key=lambda s: prio[s]) if trusted else None
        if primary and rt.primary and primary != rt.primary:
            back = prio[primary] < prio[rt.primary]
            await self.auto_action(
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
            cleared = await self._try([], self.store.auto_resolve, rt.name, AUTO_RESOLVE_KINDS,
                                      now - int(quiet * 1000), now)
            for row in cleared:
                self.emit("issue_state", rt.name, id=row["id"], state="resolved", actor="auto",
                          title=row["title"])
            if cleared:
                await self.auto_action(
                    rt.name, "auto_resolve", outcome="ok",
                    reason=f"{len(cleared)} issue(s) quiet for {quiet:g}s resolved: "
                           + "; ".join(f"#{r['id']} {r['kind']}" for r in cleared[:10]))
        enabled = [s for s in rt.cfg.sources if s.enabled]
        now = self.clock.now_ms()
        if enabled and not answered and not rt.incident:
            rt.incident = True
            why = "; ".join(f"{s}: {i.get('error') or i.get('skipped')}"
                            for s, i in summary.sources.items())
            res = await self._write(self.store.raise_issues, [IssueDraft(
                flow=rt.name, kind="incident", severity="critical",
                title=f"every source of {rt.name} is down: serving last-known-good values "
                      "marked stale",
                fingerprint=f"incident:{rt.name}", detail={"sources": summary.sources})], now)
            for issue in (res[0] if res else []):
                self.alerter.notify(issue)
            await self.auto_action(rt.name, "incident", outcome="ok",
                                   reason=f"all sources down ({why}); serving stale data")
            self.emit("flow_state", rt.name, state="failing", stale=True)
        elif answered and rt.incident:
            rt.incident = False
            await self._write(self.store.resolve_by_fingerprint, rt.name,
                              f"incident:{rt.name}", "auto", now)
            await self.auto_action(rt.name, "recovered", source=primary, outcome="ok",
                                   reason=f"{', '.join(answered)} answering again; "
                                          "incident resolved")
            self.emit("flow_state", rt.name, state=rt.state(), stale=False)

    async def _source_conditions(self, rt: FlowRuntime, answered: list[str]) -> None:
        """Failures the breaker does not see: a source that answers with nothing new for
        longer than the freshness target (stale), and a high error rate over a window."""
        rec = rt.cfg.recovery
        now = self.clock.now_ms()
        stale_after = rec.stale_after if rec.stale_after is not None else rt.cfg.freshness
        for src in rt.cfg.sources:
            s, h = src.name, rt.health[src.name]
            if not src.enabled:
                continue
            newest = max(rt.collector.sources[s].last_ts.values(), default=None)
            if newest is not None:
                h.newest_ts_ms = newest
            if rec.stale and s in answered:
                base = h.newest_ts_ms if h.newest_ts_ms is not None else h.first_ok_ms
                age_s = (now - base) / 1000 if base is not None else 0.0
                if age_s > stale_after and not h.stale:
                    h.stale = True
                    what = (f"its newest record is {age_s:.0f}s old" if h.newest_ts_ms
                            is not None else f"it brought no record in {age_s:.0f}s")
                    await self._condition(
                        rt, s, "stale_source", "stale", True, "warning",
                        f"{s} answers but {what} (freshness target {stale_after:g}s)",
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
            res = await self._write(self.store.raise_issues, [IssueDraft(
                flow=rt.name, kind=kind, severity=severity, title=reason,
                fingerprint=fingerprint, source=source, detail=detail or {})], now)
            for issue in (res[0] if res else []):
                if self.alerter is not None:
                    self.alerter.notify(issue)
            self.emit("issue", rt.name, kind=kind, severity=severity, title=reason, key=None,
                      source=source)
        else:
            await self._write(self.store.resolve_by_fingerprint, rt.name, fingerprint, "auto",
                              now)
        await self.auto_action(rt.name, action, source=source, outcome="ok", reason=reason)
        self.emit("flow_state", rt.name, state=rt.state())

    async def auto_action(self, flow: str, action: str, *, reason: str, outcome: str = "ok",
                          source: str | None = None, actor: str = "auto",
                          duration_ms: float | None = None, detail: dict | None = None) -> None:
        """Record a recovery action (automatic or operator) and announce it. While the store
        is away the row is held and written, with its own time, when it answers."""
        await self._write(
            self.store.add_action, ts_ms=self.clock.now_ms(), action=action, actor=actor,
            reason=reason, outcome=outcome, flow=flow, source=source, duration_ms=duration_ms,
            detail=detail)
        self.emit("action", flow, action=action, actor=actor, reason=reason, outcome=outcome,
                  source=source)

    async def _alert_done(self, flow: str | None, action: str, reason: str, outcome: str) -> None:
        await self.auto_action(flow, action, reason=reason, outcome=outcome)

    def reset_breaker(self, flow: str, source: str) -> str:
        b = self.flows[flow].breakers[source]
        before = b.state
        b.reset()
        self.store.save_source_state(flow, source, {"breaker": b.as_dict()}, self.clock.now_ms())
        return before

    def _load_recovery_state(self, rt: FlowRuntime) -> None:
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

    def _account(self, rt: FlowRuntime, summary: RunSummary) -> None:
        rt.runs += 1
        rt.last_run = summary
        if summary.status == "failed":
            rt.failed_runs += 1
        else:
            rt.last_success_ms = summary.finished_ms
        for k, v in summary.stages.items():
            rt.totals[k].add(v)
        rt.throughput.append((summary.finished_ms, summary.stages["store"].records_out))

    async def _fetch(self, rt: FlowRuntime, source: str) -> list[Fetched] | FetchError:
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

    # ------------------------------------------------------------ processing (worker thread)

    @_gc_paused
    def _process(self, rt: FlowRuntime, payloads: list[Payload], summary: RunSummary,
                 replay: bool) -> None:
        """Run the stages over a run's payloads and commit the result in one transaction."""
        if not payloads:
            return
        now = self.clock.now_ms()
        st = summary.stages
        merged = Batch(rt.name, None, None, now)
        raw_status = []
        seen_pairs: dict[str, list[tuple[str, int]]] = {}
        quarantine = []
        issues: list[IssueDraft] = []
        for p in payloads:
            summary.payloads += 1
            batch = Batch(rt.name, p.source, p.raw_id, p.fetched_ms)
            t = time.perf_counter()
            if p.truncated:
                batch.reject(None, stage="collect", reason="too_large", item=-1,
                             message=f"payload larger than max_bytes "
                                     f"({len(p.body)} bytes read before stopping)")
            else:
                rt.collector.decode(batch, p.body, p.content_type)
            n_items = len(batch.items) or (1 if batch.quarantine else 0)
            self._stage(st["collect"], n_items, batch,
                        lambda b=batch, p=p: rt.collector.run(b, now, replay=replay), t)
            seen_pairs.setdefault(p.source, []).extend((r.key, r.ts) for r in batch.records)
            for stage in (rt.validator, rt.transformer, rt.enricher, rt.quality):
                self._stage(st[stage.name], len(batch.records), batch,
                            lambda b=batch, s=stage: s.run(b, now))
            raw_status.append({"raw_id": p.raw_id, "processed_ms": now,
                               "version_id": rt.version_id, "records_in": n_items,
                               "records_out": len(batch.records),
                               "outcome": "ok" if not batch.quarantine else (
                                   "partial" if batch.records else "rejected")})
            quarantine.extend(batch.quarantine)
            issues.extend(batch.issues)
            merged.records.extend(batch.records)
        if quarantine:
            issues.append(self._quarantine_issue(rt, quarantine))
        # Resolve needs what is already stored for the same windows (late sources merge in).
        t = time.perf_counter()
        stored = self.store.contributions(
            rt.name, {(r.key, rt.resolver.bucket(r.ts)) for r in merged.records})
        n = len(merged.records)
        self._stage(st["resolve"], n, merged, lambda: rt.resolver.run(merged, now, stored), t)
        self._stage(st["detect"], len(merged.records), merged, lambda: rt.detector.run(merged, now))
        for d in issues:  # quality issues named records by source timestamp: use the window
            d.record_keys = [(k, rt.resolver.bucket(ts)) for k, ts in d.record_keys]
        issues.extend(merged.issues)
        write = BatchWrite(rt.name, raw_status=raw_status, quarantine=quarantine, issues=issues)
        flow, version_id, metrics = rt.name, rt.version_id, rt.metrics
        records, series = write.records, write.series
        for r in merged.records:
            data = r.data
            records.append({
                "flow": flow, "key": r.key, "ts_ms": r.ts, "data": data,
                "quality": r.quality, "anomaly_score": r.anomaly, "anomalous": r.anomalous,
                "flags": r.flags, "sources": r.sources, "contributions": r.contrib or {},
                "raw_ids": r.raw_ids, "version_id": version_id, "updated_ms": now})
            for m in metrics:
                v = data.get(m)
                tv = type(v)
                # Finite numbers only (v - v is NaN for NaN and inf); exact types first, cheap.
                if tv is float or tv is int or (tv is not bool and isinstance(v, int | float)):
                    if v - v == 0:
                        series.append((flow, r.key, m, r.ts, float(v)))
        if replay:
            keep = {(q.raw_id, q.item) for q in quarantine}
            replayed_raw = {p.raw_id for p in payloads}
            for row in self.store.quarantined(rt.name, "open", limit=100_000):
                pair = (row["raw_id"], row["item"])
                if row["raw_id"] in replayed_raw and pair not in keep:
                    write.replayed.append(pair)

        def publish_records() -> None:
            """Viewers see a run's values once they are committed (records and latest),
            without waiting for its series, roll-ups and bookkeeping (docs/protocol.md)."""
            newest = {}
            for r in merged.records:
                newest[r.key] = r
            self._publish_stored(rt, Event(
                type="records", ts=self.clock.now(), flow=rt.name,
                data={"count": len(merged.records), "latest": [
                    {"key": r.key, "ts_ms": r.ts, "data": r.data, "quality": r.quality,
                     "anomaly_score": r.anomaly, "anomalous": r.anomalous, "flags": r.flags,
                     "sources": r.sources} for r in newest.values()]}))

        t = time.perf_counter()
        defer = self.started and self.config.store.derived_delay > 0
        try:
            counts = self.store.write_batch(write, now, stored=publish_records, defer=defer)
        except Exception:
            # The batch is not complete in the store (its records may be, its raw status is
            # not): let the next fetch bring these records again (collect would otherwise
            # drop them as duplicates of what it has seen); every write repeats idempotently.
            if not replay:
                for source, pairs in seen_pairs.items():
                    rt.collector.forget(source, pairs)
            raise
        if defer:
            self._derived_written()
        summary.changed_keys.update(r["key"] for r in write.records)
        ss = st["store"]
        ss.records_in += len(write.records)
        ss.records_out += len(write.records)
        ss.seconds += time.perf_counter() - t
        summary.quarantined += len(quarantine)
        summary.issues_raised += len(issues)
        summary.issues_opened += counts["issues_opened"]
        if self.alerter is not None:
            for issue in counts["opened"]:
                self.alerter.notify(issue)
        summary.conflicts += sum(1 for d in issues if d.kind == "conflict")
        summary.anomalies += sum(1 for r in merged.records if r.anomalous)
        for q in quarantine:
            self.emit("quarantine", rt.name, source=q.source, raw_id=q.raw_id, item=q.item,
                      stage=q.stage, reason=q.reason, message=q.message[:300])
        for d in issues:
            self.emit("issue", rt.name, kind=d.kind, severity=d.severity, title=d.title,
                      key=d.key, source=d.source)

    def _publish_stored(self, rt: FlowRuntime, ev: Event) -> None:
        """A run's stored values to viewers (from the worker): on the loop, right after
        this process's L1 has dropped those keys, so a viewer that reads latest when the
        event arrives is never answered from an entry older than it (the other layers
        follow in the run's invalidation)."""
        loop = self._loop
        if loop is None or not loop.is_running():
            self.hub.publish(ev)
            return

        def deliver() -> None:
            dropped = self.caches.drop_local(rt.name, (r["key"] for r in ev.data["latest"]))
            for layer, n in dropped.items():
                rt.dropped_early[layer] = rt.dropped_early.get(layer, 0) + n
            self.hub.publish(ev)

        loop.call_soon_threadsafe(deliver)

    # ------------------------------------------------------------ deferred series

    def _derived_written(self) -> None:
        """After a deferred batch (worker thread): have the loop flush or set a timer,
        unless it already has been asked or a flush is running (which looks again when
        it ends)."""
        if self._derived_signalled or self._loop is None:
            return
        if self._derived_flush is not None and not self._derived_flush.done():
            return
        self._derived_signalled = True
        self._loop.call_soon_threadsafe(self._derived_check)

    def _derived_check(self) -> None:
        """On the loop: flush now if what is owed is due, else when it will be."""
        self._derived_signalled = False
        if self._derived_closed or (self._derived_flush is not None
                                    and not self._derived_flush.done()):
            return
        rows, age = self.store.derived_owed()
        if age is None:
            return
        wait = 0.0 if rows >= DERIVED_FLUSH_ROWS else self.config.store.derived_delay - age
        if wait <= 0:
            if self._derived_timer is not None:
                self._derived_timer.cancel()
                self._derived_timer = None
            self._derived_flush = self._loop.create_task(self._flush_derived())
        elif self._derived_timer is None:
            self._derived_timer = self._loop.call_later(wait, self._derived_due)

    def _derived_due(self) -> None:
        self._derived_timer = None
        self._derived_check()

    async def _write_owed_until(self, target: int) -> None:
        """Flush steps on the worker, other work between them, until every batch up to
        ``target`` (Store.derived_seq) is written."""
        while self.store.derived_seq()[1] < target:
            await self._db(self.store.flush_step, DERIVED_STEP_ROWS)

    async def _flush_derived(self) -> None:
        try:
            await self._write_owed_until(self.store.derived_seq()[0])
        except Exception as exc:  # still owed: try again later (the next run may first)
            log.warning("writing deferred series failed: %s: %s", type(exc).__name__, exc)
            if not self._derived_closed and self._derived_timer is None:
                self._derived_timer = self._loop.call_later(self.config.store.retry,
                                                            self._derived_due)
            return
        self._derived_check()  # what runs owed meanwhile: now, or a timer

    async def _settle_history(self, flow: str) -> None:
        """Before the caches load history from the store: write what deferred runs owe,
        so a reader is never shown a value in latest that its history lacks. If the
        store fails, the read goes on with what is stored."""
        try:
            await self._write_owed_until(self.store.derived_seq()[0])
        except Exception as exc:
            log.debug("history read before deferred series were written: %s", exc)

    async def _stop_derived(self) -> None:
        """At stop: no more timers; what is owed is written (or, if the store fails,
        left to the next start's resume: those payloads have no raw status)."""
        self._derived_closed = True
        if self._derived_timer is not None:
            self._derived_timer.cancel()
            self._derived_timer = None
        if self._derived_flush is not None:
            await asyncio.gather(self._derived_flush, return_exceptions=True)
            self._derived_flush = None
        try:
            await self._db(self.store.flush_derived)
        except Exception as exc:
            log.warning("deferred series not written at stop (%s: %s); their payloads "
                        "are processed again at the next start", type(exc).__name__, exc)

    def process_payloads(self, name: str, payloads: list[Payload],
                         trigger: str = "direct") -> RunSummary:
        """Process already-committed payloads synchronously (benchmarks, tools).

        Call it from one thread at a time, and not while the engine is running flows.
        """
        rt = self.flows[name]
        summary = RunSummary(name, None, trigger, self.clock.now_ms())
        self._process(rt, payloads, summary, False)
        summary.finished_ms = self.clock.now_ms()
        return summary

    @staticmethod
    def _stage(stats: StageStats, n_in: int, batch: Batch, fn, t0: float | None = None) -> None:
        t = t0 if t0 is not None else time.perf_counter()
        q0 = len(batch.quarantine)
        d0 = sum(batch.dropped.values())
        try:
            fn()
        except Exception:
            stats.errors += 1
            raise
        finally:
            stats.seconds += time.perf_counter() - t
        stats.records_in += n_in
        stats.rejected += len(batch.quarantine) - q0
        stats.dropped += sum(batch.dropped.values()) - d0
        stats.records_out += len(batch.records)

    def _quarantine_issue(self, rt: FlowRuntime, rows) -> IssueDraft:
        reasons: dict[str, int] = {}
        for q in rows:
            reasons[q.reason] = reasons.get(q.reason, 0) + 1
        sources = sorted({q.source for q in rows})
        text = ", ".join(f"{n} {r}" for r, n in sorted(reasons.items()))
        return IssueDraft(
            flow=rt.name, kind="quarantine", severity="error" if len(rows) > 10 else "warning",
            title=f"{len(rows)} item(s) quarantined from {', '.join(sources)}: {text}",
            fingerprint=f"quarantine:{rt.name}:{','.join(sources)}",
            source=sources[0] if len(sources) == 1 else None,
            detail={"reasons": reasons, "examples": [q.message[:200] for q in rows[:5]]},
            raw_ids=sorted({q.raw_id for q in rows}))

    # ------------------------------------------------------------ resume and replay

    async def resume(self) -> list[RunSummary]:
        """Process raw payloads that were committed but never processed (after a crash)."""
        out = []
        for rt in self.flows.values():
            await self._drain_spool(rt)  # payloads buffered before a crash or a stop
            rows = await self._db(self.store.pending_raw, rt.name)
            if rows:
                out.append(await self._reprocess(rt, rows, "resume", replay=False))
        return out

    async def replay(self, flow: str, *, quarantine: bool = False,
                     since_ms: int | None = None) -> RunSummary:
        """Re-run stored payloads through the current pipeline. Idempotent."""
        rt = self.flows[flow]
        if quarantine:
            q = await self._db(self.store.quarantined, flow, "open", 100_000)
            ids = sorted({r["raw_id"] for r in q})
            rows = [await self._db(self.store.get_raw, i) for i in ids]
        else:
            rows = await self._db(self.store.raw_since, flow, since_ms or 0)
        return await self._reprocess(rt, [r for r in rows if r], "replay", replay=True)

    async def _reprocess(self, rt: FlowRuntime, rows: list[dict], trigger: str,
                         replay: bool) -> RunSummary:
        async with rt.lock:
            started = self.clock.now_ms()
            run_id = await self._db(self.store.start_run, rt.name, trigger, started)
            summary = RunSummary(rt.name, run_id, trigger, started)
            payloads = self._payloads(rt, rows)
            try:
                await self._db(self._process, rt, payloads, summary, replay)
                await self._after_write(rt, summary)
            except Exception as exc:
                log.exception("%s of %s failed", trigger, rt.name)
                summary.status = "failed"
                summary.error = f"{type(exc).__name__}: {exc}"
            summary.finished_ms = self.clock.now_ms()
            await self._db(self.store.finish_run, run_id, summary.status, summary.as_dict(),
                           summary.finished_ms, summary.error)
            self.emit("run_finished", rt.name, **summary.as_dict())
            return summary

    # ------------------------------------------------------------ state for viewers

    def snapshot(self) -> dict:
        """A plain picture of the engine (flows, stages, sources) for the console and status."""
        flows = {}
        for name, rt in self.flows.items():
            flows[name] = {
                "state": rt.state(), "paused": rt.paused, "running": rt.running,
                "runs": rt.runs, "failed_runs": rt.failed_runs,
                "last_success_ms": rt.last_success_ms, "next_run_ms": self.next_run_ms(name),
                "last_run": rt.last_run.as_dict() if rt.last_run else None,
                "totals": {k: v.as_dict() for k, v in rt.totals.items()},
                "throughput": list(rt.throughput),
                "mode": rt.cfg.recovery.mode, "incident": rt.incident, "stale": rt.incident,
                "primary": rt.primary, "pinned": rt.pinned, "active": rt.active,
                "store": {"available": self.store_down_since is None,
                          "down_since_ms": rt.store_down_since,
                          "buffered": len(self.spools[name]),
                          "buffered_bytes": self.spools[name].bytes,
                          "dropped": self.spools[name].dropped},
                "sources": {s.name: {"kind": s.kind, "priority": s.priority,
                                     "enabled": s.enabled, **rt.health[s.name].as_dict(),
                                     "breaker": rt.breakers[s.name].as_dict()}
                            for s in rt.cfg.sources},
            }
        rows, age = self.store.derived_owed()
        return {"ts": self.clock.now(), "flows": flows, "caches": self.caches.snapshot(),
                # series points and raw status that runs still owe the store (derived_delay)
                "series_owed": {"rows": rows, "age_s": age}}


def cache_settings(config: Config) -> CacheSettings:
    """The storage layer's cache settings from the ``cache:`` section of the config."""
    c = config.cache
    return CacheSettings(l1_ttl=c.l1.ttl, l1_size=c.l1.size, l1_stale=c.l1.stale,
                         redis_url=c.redis_url, namespace=c.namespace, l2_ttl=c.l2.ttl,
                         l2_timeout=c.l2.timeout, http=c.http_policies(),
                         prewarm_keys=c.prewarm)

