"""The engine: runs each flow's sources through the stages into the store, on a schedule.

One run of a flow: fetch every enabled source at once (async HTTP), commit
each payload to the raw store *first*, then process all payloads of the run
in the engine's worker thread through the flow's stage chain (stages/chain.py):
per source collect -> validate -> transform -> enrich -> quality, then all
sources together resolve -> detect -> store (one transaction). Processing
happens on one worker thread, so stage state needs no locks and the event loop
(console, feed) stays free.

This module is the engine's lifecycle (start, stop, resume, replay), its runs and
its snapshot; it composes the other concerns, each owning its state:
failover.py (source health, breakers, failover, source conditions), guard.py (the
store guard and the raw spool), deferred.py (the deferred-series flusher),
scheduler.py (the schedule) and alerts.py (webhooks).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import gc
import logging
import operator
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import httpx

from flowdeck.pipeline.config import Config
from flowdeck.pipeline.core import logs
from flowdeck.pipeline.core.clock import Clock, clock_from_env
from flowdeck.pipeline.core.hub import Event, Hub
from flowdeck.pipeline.core.redact import redact
from flowdeck.pipeline.core.shapes import (
    CacheSnapshot,
    EngineSnapshot,
    FlowSnapshot,
    SourceSnapshot,
)
from flowdeck.pipeline.engine.alerts import Alerter
from flowdeck.pipeline.engine.deferred import DeferredSeries
from flowdeck.pipeline.engine.failover import Failover
from flowdeck.pipeline.engine.flow import FlowRuntime, RunSummary
from flowdeck.pipeline.engine.guard import StoreGuard
from flowdeck.pipeline.engine.maintenance import Maintenance
from flowdeck.pipeline.engine.retention import RetentionJob
from flowdeck.pipeline.engine.scheduler import Scheduler
from flowdeck.pipeline.model import Batch
from flowdeck.pipeline.sniff import unmatched_paths
from flowdeck.pipeline.sources import SOURCES, FetchError, SourceContext
from flowdeck.pipeline.stages.chain import StageChain
from flowdeck.pipeline.stages.resolve import AGREEMENT_HISTORY_MS
from flowdeck.storage.caches import Caches, CacheSettings
from flowdeck.storage.db import UNAVAILABLE
from flowdeck.storage.leases import FenceError
from flowdeck.storage.model import BatchWrite, IssueDraft, RawDraft
from flowdeck.storage.store import Store

log = logging.getLogger("flowdeck.engine")
_KEY_TS = operator.attrgetter("key", "ts")


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


class Engine:
    def __init__(self, config: Config, store: Store, *, clock: Clock | None = None,
                 hub: Hub | None = None, simulator_url: str | None = None,
                 scenario: str | None = None, seed: int = 7) -> None:
        self.config = config
        self.store = store
        self.clock = clock or clock_from_env()  # $FLOWDECK_CLOCK_SPEED: a testing aid
        self.hub = hub or Hub()
        # Options of the ``simulated`` source kind (sources/simulated.py), handed to it
        # unread: a running simulator's URL, else the scenario and seed of one to start.
        self.source_options = {"simulator_url": simulator_url, "scenario": scenario,
                               "seed": seed}
        self.flows = {name: FlowRuntime(name, f, config) for name, f in config.flows.items()}
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="flowdeck-worker")
        # Viewers' reads (through the caches) use their own threads, so a read never
        # waits behind a batch being processed.
        self.reader = ThreadPoolExecutor(2, thread_name_prefix="flowdeck-reader")
        self.http: httpx.AsyncClient | None = None
        self.alerter: Alerter | None = None
        self.sources: SourceContext | None = None  # while started
        self.started = False
        # A node of a cluster (cluster.py, set by the daemon on PostgreSQL): it runs only
        # the flows it holds the lease of, every transaction of a flow fenced by its token.
        self.cluster: Any = None
        self._cache_ticks: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.guard = StoreGuard(config, store, self.clock, self._db, self.emit,
                                self.auto_action, self._notify, self.flows)
        self.failover = Failover(store, self.clock, self.guard, self.emit, self.auto_action,
                                 self._notify)
        self.deferred = DeferredSeries(store, config.store.derived_delay, config.store.retry,
                                       self._db)
        self.scheduler = Scheduler(config, self.clock)
        self.retention = RetentionJob(config, store, self.clock, self._db, self.auto_action)
        self.maintenance = Maintenance(config, self.clock, self.auto_action, store=store,
                                       run_db=self._db)
        self.caches = Caches(cache_settings(config), store=store, reader=self.reader,
                             timer=self.clock.now, emit=self.emit, on_action=self._cache_action,
                             settle=self.deferred.settle)

    # ------------------------------------------------------------ lifecycle

    async def _db(self, fn, *args):
        """Run a store call (or any work on the stage state) on the worker thread, in the
        caller's context (its log lines name the caller's flow and run)."""
        ctx = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(self.worker, ctx.run, fn, *args)

    async def start(self, *, schedule: bool = True, resume: bool = True) -> None:
        loop = asyncio.get_running_loop()
        self.hub.bind(loop)
        self._loop = loop
        self.http = httpx.AsyncClient(http2=False, follow_redirects=True,
                                      limits=httpx.Limits(max_connections=50))
        self.alerter = Alerter(self.config.alerts, self.http, self._alert_done)
        self.alerter.bind(loop)
        self.sources = SourceContext(
            config=self.config, http=self.http, clock=self.clock,
            log=lambda message: self.emit("log", None, message=redact(message)),
            options=self.source_options)
        now = self.clock.now_ms()
        for rt in self.flows.values():
            rt.version_id = await self._db(
                self.store.pipeline_version, rt.name, rt.cfg.model_dump(mode="json"),
                rt.chain.versions(), now)
            for src in rt.cfg.sources:
                rt.fetchers[src.name] = await SOURCES[src.kind](src, self.sources)
            await self._db(self._warm_detectors, rt)
            await self._db(self._warm_order, rt)
            await self._db(self.failover.load_state, rt)
        await self.maintenance.restore()  # operator windows a restart would lose
        await self.caches.start()
        self._cache_ticks = loop.create_task(self._cache_stats())
        self.started = True
        self.deferred.start(loop)
        if self.cluster is not None:  # takes its share of flows over (each resumed)
            await self.cluster.start()
        elif resume:
            await self.resume()
        _freeze_startup_heap()
        if schedule and self.config.retention.enabled:
            self.retention.start(loop)
        if schedule:
            self.maintenance.start(loop)
            self.scheduler.start(self.flows.values(), self.scheduled_run, self._retry_store)

    async def scheduled_run(self, name: str) -> RunSummary | None:
        """A scheduled run, unless a maintenance window pauses the flow; in a muting
        window it runs as trigger ``maintenance`` (outside SLA figures and alerts)."""
        st = self.maintenance.state(name)
        if st is not None and st["mode"] == "pause":
            self.maintenance.skipped[name] = self.maintenance.skipped.get(name, 0) + 1
            return None
        if self.cluster is not None and not self.cluster.may_run(name, self.clock.now_ms()):
            return None  # another node's, or the slot its previous owner already ran
        return await self.run_flow(name, "schedule" if st is None else "maintenance")

    def _warm_detectors(self, rt: FlowRuntime) -> None:
        for spec in rt.cfg.detect:
            hist = self.store.recent_values(rt.name, spec.metric,
                                            rt.chain.detector.history_points(spec.metric))
            rt.chain.detector.warm(spec.metric, hist)
        # The resolver's source agreement, from the last hours' stored contributions.
        since = self.clock.now_ms() - AGREEMENT_HISTORY_MS
        rt.chain.resolver.warm((r["key"], r["ts_ms"], r["contributions"])
                               for r in self.store.records_since(rt.name, since))

    def _warm_order(self, rt: FlowRuntime) -> None:
        """What is stored per key (its newest timestamp): out-of-order is relative to it."""
        rt.chain.collector.stored({r["key"]: r["ts_ms"] for r in self.store.latest(rt.name)})

    async def _retry_store(self) -> None:
        """The store's retry timer (StoreGuard.retry), its runs waited for at stop."""
        await self.guard.retry(self.flows.values(), lambda name: self.scheduler.tracked(
            self.run_flow(name, "spool", fetch=False)))

    def pause(self, name: str) -> bool:
        """Stop scheduling a flow (a run in progress finishes). False if it was paused."""
        rt = self.flows[name]
        if rt.paused:
            return False
        rt.paused = True
        self.scheduler.pause(name)
        self.emit("flow_state", name, state="paused")
        return True

    def resume_flow(self, name: str) -> bool:
        rt = self.flows[name]
        if not rt.paused:
            return False
        rt.paused = False
        self.scheduler.resume(name)
        self.emit("flow_state", name, state=rt.state())
        return True

    def next_run_ms(self, name: str) -> int | None:
        return self.scheduler.next_run_ms(name)

    async def stop(self) -> None:
        """Finish the batch in progress, then release everything."""
        await self.scheduler.stop()
        await self.retention.stop()
        await self.maintenance.stop()
        for rt in self.flows.values():  # manual runs and replays in progress
            async with rt.lock:
                pass
        if self.cluster is not None:  # released at once: another node takes them over
            await self.cluster.stop()
        for rt in self.flows.values():
            for f in rt.fetchers.values():
                await f.close()
        await self.deferred.stop()
        if self._cache_ticks is not None:
            self._cache_ticks.cancel()
            self._cache_ticks = None
        await self.caches.stop()
        if self.alerter is not None:
            await self.alerter.drain()
        if self.http is not None:
            await self.http.aclose()
        if self.sources is not None:  # what source kinds share (a simulator they started)
            await self.sources.close()
            self.sources = None
        self.worker.shutdown(wait=True)
        self.reader.shutdown(wait=True)
        self.started = False

    # ------------------------------------------------------------ events and actions

    def emit(self, type_: str, flow_name: str | None, /, **data: Any) -> None:
        self.hub.publish(Event(type=type_, ts=self.clock.now(), flow=flow_name, data=data))

    def _notify(self, issue: dict) -> None:
        """An issue just opened: to the alerter's webhooks (not in a maintenance window)."""
        if self.alerter is not None and not self.maintenance.mutes(issue.get("flow")):
            self.alerter.notify(issue)

    async def auto_action(self, flow: str, action: str, *, reason: str, outcome: str = "ok",
                          source: str | None = None, actor: str = "auto",
                          duration_ms: float | None = None, detail: dict | None = None) -> None:
        """Record a recovery action (automatic or operator) and announce it. While the store
        is away the row is held and written, with its own time, when it answers."""
        reason = redact(reason)
        await self.guard.write(
            self.store.add_action, ts_ms=self.clock.now_ms(), action=action, actor=actor,
            reason=reason, outcome=outcome, flow=flow, source=source, duration_ms=duration_ms,
            detail=detail)
        self.emit("action", flow, action=action, actor=actor, reason=reason, outcome=outcome,
                  source=source)

    async def _alert_done(self, flow: str | None, action: str, reason: str, outcome: str) -> None:
        await self.auto_action(flow, action, reason=reason, outcome=outcome)

    def reset_breaker(self, flow: str, source: str) -> str:
        return self.failover.reset_breaker(self.flows[flow], source)

    # ------------------------------------------------------------ runs

    async def run_flow(self, name: str, trigger: str = "manual", *,
                       fetch: bool = True) -> RunSummary:
        """One run. ``fetch=False`` only commits and processes what the store could not
        take before (the spool retry)."""
        rt = self.flows[name]
        if self.cluster is not None and not self.cluster.holds(name):
            return self._not_held(rt, trigger)
        async with rt.lock:
            rt.running = True
            try:
                with logs.context(flow=name), self._fenced(name):
                    return await self._run(rt, trigger, fetch)
            except FenceError as exc:  # the lease was lost mid-run: nothing more written
                log.warning("%s", exc)
                self.cluster.drop(name, "a transaction was refused by its fence")
                return self._not_held(rt, trigger, str(exc))
            finally:
                rt.running = False

    def _fenced(self, name: str):
        """Every transaction of ``name`` checks this node's lease (in a cluster)."""
        return contextlib.nullcontext() if self.cluster is None else self.cluster.fence(name)

    def _not_held(self, rt: FlowRuntime, trigger: str, error: str | None = None) -> RunSummary:
        summary = RunSummary(rt.name, None, trigger, self.clock.now_ms(),
                             finished_ms=self.clock.now_ms(), status="failed")
        owner = self.cluster.owner(rt.name)
        summary.error = error or (f"flow {rt.name} runs on node {owner}" if owner
                                  else f"node {self.cluster.node} holds no lease on {rt.name}")
        return summary

    async def take_over(self, name: str) -> int:
        """This node has just acquired ``name``'s lease (cluster.py): rebuild its stage
        state from the store as another node left it, commit what this node spooled for
        it, process its pending raw payloads (committed, never processed: not fetched
        again). Returns when its next scheduled run is due (epoch ms): the previous
        owner's last scheduled run's slot is not run again."""
        rt = self.flows[name]
        with logs.context(flow=name), self._fenced(name):
            async with rt.lock:
                rt.chain = StageChain(name, rt.cfg, self.config)
                await self._db(self._warm_detectors, rt)
                await self._db(self._warm_order, rt)
                await self._db(self.failover.load_state, rt)
                runs = await self._db(self.store.recent_runs, name, 20)
            await self.guard.drain_spool(rt)
            rows = await self._db(self.store.pending_raw, name)
            if rows:
                await self._reprocess(rt, rows, "resume", replay=False)
        last = next((r["started_ms"] for r in runs
                     if r["trigger"] in ("schedule", "maintenance")), None)
        return 0 if last is None else self.scheduler.slot_after(name, last)

    async def run_all_once(self) -> list[RunSummary]:
        return list(await asyncio.gather(*(self.run_flow(n, "once") for n in self.flows)))

    async def _run(self, rt: FlowRuntime, trigger: str, fetch: bool = True) -> RunSummary:
        guard = self.guard
        started = self.clock.now_ms()
        try:  # the first write of a run: while the store is away, this is the probe
            run_id = await self._db(self.store.start_run, rt.name, trigger, started)
        except UNAVAILABLE as exc:
            guard.failed(exc)
            run_id = None
        logs.set_run(run_id)
        summary = RunSummary(rt.name, run_id, trigger, started)
        self.emit("run_started", rt.name, run_id=run_id, trigger=trigger)
        try:
            backlog = False
            if run_id is not None:  # the store answers: held writes first, then the spool
                guard.down_since = None
                if await guard.flush_held():
                    committed = await guard.drain_spool(rt)
                    if guard.down_since is None and rt.store_down_since is not None:
                        await guard.outage_over(rt, committed)
                    backlog = committed > 0 or rt.resume_pending
            enabled = [s for s in rt.cfg.sources if s.enabled]
            hold = guard.fetch_hold(rt) if fetch else None
            if hold is not None:  # it could keep nothing fetched: do not take it
                await guard.hold_fetch(rt, hold, summary)
                fetch = False
            results = await self.failover.fetch_sources(rt, summary) if fetch else {}
            payloads: list[RawDraft] = []
            spool = guard.spools[rt.name]
            fetched_now: list[tuple[RawDraft, dict]] = []  # in fetch order
            for src_name, fetched in results.items():
                info = summary.sources.setdefault(src_name, {"payloads": 0})
                if isinstance(fetched, FetchError):
                    info["error"] = fetched.message
                    continue
                for f in fetched:
                    f.fetched_ms = self.clock.now_ms()
                    fetched_now.append((f, info))
            committed_ids = None
            if fetched_now and guard.down_since is None and not len(spool):
                # All of the run's payloads in one transaction, committed before any
                # processing (raw first); while the spool holds older ones, keep the order.
                try:
                    committed_ids = await self._db(functools.partial(
                        self.store.insert_raws, rt.name, [f for f, _ in fetched_now],
                        run_id=run_id))
                except UNAVAILABLE as exc:
                    guard.failed(exc)  # nothing of it was committed: spool it all
            if committed_ids is None:
                for f, _ in fetched_now:
                    await guard.buffer(rt, f, summary)
            else:
                for (f, info), (raw_id, new) in zip(fetched_now, committed_ids, strict=True):
                    if not new and await guard.attempt(False, self.store.raw_processed, raw_id):
                        rt.health[f.source].unchanged += 1
                        info["unchanged"] = info.get("unchanged", 0) + 1
                        continue
                    info["payloads"] += 1
                    f.raw_id = raw_id
                    payloads.append(f)
            if backlog and guard.down_since is None:
                # Everything committed and not yet processed, in order: what the spool just
                # committed, what a store failure left half done, and this run's payloads.
                rows = await guard.attempt(None, self.store.pending_raw, rt.name)
                if rows is not None:
                    rt.resume_pending = False
                    payloads = self._payloads(rt, rows)
            if payloads and guard.down_since is None:
                try:
                    await self._db(self._process, rt, payloads, summary, False)
                    await self._after_write(rt, summary)
                except UNAVAILABLE as exc:
                    guard.failed(exc)
            if payloads and guard.down_since is not None:
                rt.resume_pending = True  # committed, not processed: the next good run does
            errors = [s for s, i in summary.sources.items() if "error" in i]
            answered = [s for s in results if not isinstance(results[s], FetchError)]
            if fetch and enabled and not answered:
                summary.status = "failed"
                summary.error = redact("; ".join(f"{s}: {i.get('error') or i.get('skipped')}"
                                                 for s, i in summary.sources.items()))
            elif summary.all_quarantined:
                summary.status = "failed"
                summary.error = (f"every record was quarantined ({summary.quarantined}); "
                                 "nothing stored")
            elif errors:
                summary.status = "partial"
            if guard.down_since is not None:
                await guard.note_outage(rt, summary)
            if fetch:
                await self.failover.after_run(rt, answered, summary)
        except Exception as exc:
            log.exception("run %s of %s failed", run_id, rt.name)
            summary.status = "failed"
            summary.error = redact(f"{type(exc).__name__}: {exc}")
        summary.finished_ms = self.clock.now_ms()
        if run_id is not None:
            await guard.write(self.store.finish_run, run_id, summary.status, summary.as_dict(),
                              summary.finished_ms, summary.error)
        else:
            await guard.write(guard.late_run, rt.name, trigger, started, summary.status,
                              summary.as_dict(), summary.finished_ms, summary.error)
        rt.account(summary)
        self.emit("run_finished", rt.name, **summary.as_dict())
        return summary

    def _payloads(self, rt: FlowRuntime, rows: list[dict]) -> list[RawDraft]:
        """Stored raw rows (pending, replayed) of sources the flow still has."""
        known = {s.name for s in rt.cfg.sources}
        return [RawDraft(r["source"], r["body"], r["fetched_ms"], r["content_type"],
                         truncated=r["truncated"], raw_id=r["id"])
                for r in rows if r["source"] in known]

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

    # ------------------------------------------------------------ processing (worker thread)

    def _check_paths(self, rt: FlowRuntime, payload: RawDraft, batch: Batch) -> list[IssueDraft]:
        """The first payload with items from a source: field and unit paths that match
        nothing in it are logged and raised as one warning issue (``flowdeck check --sample``
        says the same before a run)."""
        if not any(isinstance(i, dict) for i in batch.items):
            return []  # nothing to compare against yet (empty or unreadable): next payload
        rt.paths_checked.add(payload.source)
        src = next((s for s in rt.cfg.sources if s.name == payload.source), None)
        if src is None:
            return []
        warnings = unmatched_paths(batch, src)
        if not warnings:
            return []
        for w in warnings:
            log.warning("flow %s: %s", rt.name, w)
        return [IssueDraft(
            flow=rt.name, kind="config", severity="warning", source=payload.source,
            title=f"{payload.source}: {len(warnings)} field path(s) match nothing in its "
                  "payload",
            fingerprint=f"config:{rt.name}:{payload.source}:unmatched_paths",
            detail={"warnings": warnings}, raw_ids=[payload.raw_id] if payload.raw_id else [])]

    def _check_detect_keys(self, rt: FlowRuntime, merged: Batch) -> list[IssueDraft]:
        """Detection keeps its state per key: if the first run with enough records gives
        every record a key of its own (an event feed keyed by event id), nothing will ever
        be detected; said once, as a warning issue, instead of silently doing nothing."""
        if len(merged.records) < 20:
            return []  # too few to tell
        rt.paths_checked.add("detect:keys")
        if len({r.key for r in merged.records}) < len(merged.records):
            return []
        text = (f"detection keeps its state per key, and each of the {len(merged.records)} "
                "records of the first run has a key of its own: nothing will be detected; "
                "name the series with 'series: FIELD'")
        log.warning("flow %s: %s", rt.name, text)
        return [IssueDraft(flow=rt.name, kind="config", severity="warning",
                           title=f"{rt.name}: every record is its own series; detection "
                                 "cannot learn",
                           fingerprint=f"config:{rt.name}:detect_keys",
                           detail={"warnings": [text]})]

    @_gc_paused
    def _process(self, rt: FlowRuntime, payloads: list[RawDraft], summary: RunSummary,
                 replay: bool) -> None:
        """Run the stages over a run's payloads and commit the result in one transaction."""
        if not payloads:
            return
        now = self.clock.now_ms()
        st = summary.stages
        chain = rt.chain
        merged = Batch(rt.name, None, None, now)
        raw_status = []
        seen_pairs: dict[str, list[tuple[str, int]]] = {}
        quarantine = []
        issues: list[IssueDraft] = []
        for p in payloads:
            summary.payloads += 1
            batch, n_items = chain.collect(p, now, replay=replay, stats=st)
            if p.source not in rt.paths_checked:
                issues.extend(self._check_paths(rt, p, batch))
            pairs = seen_pairs.get(p.source)
            if pairs is None:
                pairs = seen_pairs[p.source] = []
            pairs.extend(map(_KEY_TS, batch.records))  # (key, ts) tuples, made in C
            chain.refine(batch, now, stats=st)
            raw_status.append({"raw_id": p.raw_id, "processed_ms": now,
                               "version_id": rt.version_id, "records_in": n_items,
                               "records_out": len(batch.records),
                               "outcome": "ok" if not batch.quarantine else (
                                   "partial" if batch.records else "rejected")})
            quarantine.extend(batch.quarantine)
            issues.extend(batch.issues)
            merged.records.extend(batch.records)
        if quarantine:
            issues.append(self._quarantine_issue(rt, quarantine, everything=not merged.records))
        if "detect:keys" not in rt.paths_checked and rt.cfg.detect and rt.cfg.series is None:
            issues.extend(self._check_detect_keys(rt, merged))
        chain.merge(merged, now, functools.partial(self.store.contributions, rt.name), stats=st)
        bucket = chain.resolver.bucket
        for d in issues:  # quality issues named records by source timestamp: use the window
            d.record_keys = [(k, bucket(ts)) for k, ts in d.record_keys]
        issues.extend(merged.issues)
        # The series points are the records' values of the flow's metrics: the store folds
        # them into the roll-ups a key at a time (BatchWrite.metrics).
        write = BatchWrite(rt.name, raw_status=raw_status, quarantine=quarantine, issues=issues,
                           metrics=tuple(rt.metrics))
        flow, version_id = rt.name, rt.version_id
        add_record = write.records.append
        newest: dict[str, int] = {}  # newest timestamp per key (collect's order check)
        anomalies = 0
        for r in merged.records:
            data, key, ts = r.data, r.key, r.ts
            add_record({
                "flow": flow, "key": key, "ts_ms": ts, "data": data,
                "quality": r.quality, "anomaly_score": r.anomaly, "anomalous": r.anomalous,
                "flags": r.flags, "sources": r.sources, "contributions": r.contrib or {},
                "raw_ids": r.raw_ids, "version_id": version_id, "updated_ms": now})
            if r.anomalous:
                anomalies += 1
            if ts > newest.get(key, ts - 1):
                newest[key] = ts
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
            last = {}
            for r in merged.records:
                last[r.key] = r
            self._publish_stored(rt, Event(
                type="records", ts=self.clock.now(), flow=rt.name,
                data={"count": len(merged.records), "latest": [
                    {"key": r.key, "ts_ms": r.ts, "data": r.data, "quality": r.quality,
                     "anomaly_score": r.anomaly, "anomalous": r.anomalous, "flags": r.flags,
                     "sources": r.sources} for r in last.values()]}))

        t = time.perf_counter()
        defer = self.deferred.active
        try:
            counts = self.store.write_batch(write, now, stored=publish_records, defer=defer)
        except Exception:
            # The batch is not complete in the store (its records may be, its raw status is
            # not): let the next fetch bring these records again (collect would otherwise
            # drop them as duplicates of what it has seen); every write repeats idempotently.
            if not replay:
                for source, pairs in seen_pairs.items():
                    chain.collector.forget(source, pairs)
            raise
        if defer:
            self.deferred.written()
        chain.collector.stored(newest)
        if quarantine and not merged.records:
            summary.all_quarantined = True
        summary.changed_keys.update(newest)  # every stored record's key
        ss = st["store"]
        ss.records_in += len(write.records)
        ss.records_out += len(write.records)
        ss.seconds += time.perf_counter() - t
        summary.quarantined += len(quarantine)
        summary.issues_raised += len(issues)
        summary.issues_opened += counts["issues_opened"]
        if self.alerter is not None and not self.maintenance.mutes(rt.name):
            for issue in counts["opened"]:
                self.alerter.notify(issue)
        summary.conflicts += sum(1 for d in issues if d.kind == "conflict")
        summary.anomalies += anomalies
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

    def process_payloads(self, name: str, payloads: list[RawDraft],
                         trigger: str = "direct") -> RunSummary:
        """Process already-committed payloads (``raw_id`` set) synchronously (benchmarks,
        tools).

        Call it from one thread at a time, and not while the engine is running flows.
        """
        rt = self.flows[name]
        summary = RunSummary(name, None, trigger, self.clock.now_ms())
        self._process(rt, payloads, summary, False)
        summary.finished_ms = self.clock.now_ms()
        return summary

    def _quarantine_issue(self, rt: FlowRuntime, rows, everything: bool = False) -> IssueDraft:
        reasons: dict[str, int] = {}
        for q in rows:
            reasons[q.reason] = reasons.get(q.reason, 0) + 1
        sources = sorted({q.source for q in rows})
        text = ", ".join(f"{n} {r}" for r, n in sorted(reasons.items()))
        # A run that stored nothing says so (the run itself is failed).
        return IssueDraft(
            flow=rt.name, kind="quarantine", severity="error" if len(rows) > 10 else "warning",
            title=(f"every item quarantined ({len(rows)}), nothing stored, from "
                   if everything else f"{len(rows)} item(s) quarantined from ")
                  + f"{', '.join(sources)}: {text}",
            fingerprint=f"quarantine:{rt.name}:{','.join(sources)}",
            source=sources[0] if len(sources) == 1 else None,
            detail={"reasons": reasons, "examples": [q.message[:200] for q in rows[:5]]},
            raw_ids=sorted({q.raw_id for q in rows}))

    # ------------------------------------------------------------ resume and replay

    async def resume(self) -> list[RunSummary]:
        """Process raw payloads that were committed but never processed (after a crash)."""
        out = []
        for rt in self.flows.values():
            await self.guard.drain_spool(rt)  # payloads buffered before a crash or a stop
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
        with self._fenced(rt.name):
            return await self._reprocess_fenced(rt, rows, trigger, replay)

    async def _reprocess_fenced(self, rt: FlowRuntime, rows: list[dict], trigger: str,
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

    def snapshot(self) -> EngineSnapshot:
        """A plain picture of the engine (flows, stages, sources) for the console and status."""
        flows: dict[str, FlowSnapshot] = {}
        for name, rt in self.flows.items():
            spool = self.guard.spools[name]
            flows[name] = {
                "state": rt.state(), "paused": rt.paused, "running": rt.running,
                "maintenance": self.maintenance.state(name),
                "runs": rt.runs, "failed_runs": rt.failed_runs,
                "last_success_ms": rt.last_success_ms, "next_run_ms": self.next_run_ms(name),
                "last_run": rt.last_run.as_dict() if rt.last_run else None,
                "totals": {k: v.as_dict() for k, v in rt.totals.items()},
                "throughput": list(rt.throughput),
                "mode": rt.cfg.recovery.mode, "incident": rt.incident, "stale": rt.incident,
                "primary": rt.primary, "pinned": rt.pinned, "active": rt.active,
                "store": {"available": self.guard.down_since is None,
                          "down_since_ms": rt.store_down_since,
                          "buffered": len(spool),
                          "buffered_bytes": spool.bytes,
                          "dropped": spool.dropped,
                          "reason": None if self.guard.down_since is None
                          else self.guard.reason,
                          "error": None if self.guard.down_since is None
                          else redact(self.guard.error or ""),
                          "write_errors": dict(self.guard.write_errors),
                          "spool_refused": spool.refused,
                          "outage": self.guard.outages.get(name),
                          "fetches_paused": self.guard.fetches_held.get(name, 0)},
                # a source's health keys come from SourceHealth.as_dict (a plain dict)
                "sources": {s.name: cast(SourceSnapshot, {
                                "kind": s.kind, "priority": s.priority, "enabled": s.enabled,
                                **rt.health[s.name].as_dict(),
                                "breaker": rt.breakers[s.name].as_dict()})
                            for s in rt.cfg.sources},
            }
        rows, age = self.deferred.owed()
        # storage sits below pipeline.core, so the caches hand over a plain dict of this shape
        caches = cast(CacheSnapshot, self.caches.snapshot())
        return {"ts": self.clock.now(), "flows": flows, "caches": caches,
                # series points and raw status that runs still owe the store (derived_delay)
                "series_owed": {"rows": rows, "age_s": age},
                # database size and rows per table as of the last retention pass
                "storage": self.retention.snapshot(),
                # this node, the cluster's nodes and leases (None: not in a cluster)
                "cluster": None if self.cluster is None else self.cluster.snapshot()}


def cache_settings(config: Config) -> CacheSettings:
    """The storage layer's cache settings from the ``cache:`` section of the config."""
    c = config.cache
    return CacheSettings(l1_ttl=c.l1.ttl, l1_size=c.l1.size, l1_stale=c.l1.stale,
                         redis_url=c.redis_url, namespace=c.namespace, l2_ttl=c.l2.ttl,
                         l2_timeout=c.l2.timeout, http=c.http_policies(),
                         prewarm_keys=c.prewarm)
