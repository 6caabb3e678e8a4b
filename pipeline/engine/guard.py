"""The store guard: notices when the database is away, holds the engine's bookkeeping
writes until it answers, buffers fetched payloads in each flow's raw spool (spool.py)
meanwhile, and commits them, oldest first, once it answers again (DESIGN.md section 8:
raw first, nothing lost)."""

from __future__ import annotations

import errno
import functools
import logging
import os
import re
import resource
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowdeck.pipeline.config import Config
from flowdeck.pipeline.core.clock import Clock
from flowdeck.pipeline.core.redact import redact
from flowdeck.pipeline.engine.spool import RawSpool
from flowdeck.storage.db import UNAVAILABLE, sqlite_file
from flowdeck.storage.model import IssueDraft, RawDraft

if TYPE_CHECKING:
    from flowdeck.pipeline.engine.flow import FlowRuntime, RunSummary
    from flowdeck.storage.store import Store

log = logging.getLogger("flowdeck.engine")

MAX_HELD = 10_000  # bookkeeping writes held while the store is away


def _short(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def write_error_reason(exc: BaseException) -> str:
    """Why a store write failed, as a metric label: ``disk_full`` (ENOSPC, EDQUOT, EFBIG
    past the file size limit, SQLite's "database or disk is full", PostgreSQL's "No space
    left on device"), ``locked``, ``io_error`` (EIO, SQLite's "disk I/O error") or
    ``unavailable`` (anything else: unreachable, refused, timed out). SQLite says "disk
    I/O error" for EFBIG too: :func:`file_size_limit_hit` tells that case apart."""
    for e in (exc, getattr(exc, "orig", None), exc.__cause__):
        if isinstance(e, OSError):
            if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                return "disk_full"
            if e.errno == errno.EIO:
                return "io_error"
    text = str(getattr(exc, "orig", None) or exc).lower()
    if ("disk is full" in text or "no space left" in text or "disk full" in text
            or "file too large" in text):
        return "disk_full"
    if "disk i/o error" in text:
        return "io_error"
    if "locked" in text or "busy" in text:
        return "locked"
    return "unavailable"


def file_size_limit() -> int | None:
    """This process's RLIMIT_FSIZE (the soft limit) in bytes, None if unlimited."""
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return None if soft == resource.RLIM_INFINITY else int(soft)


def file_size_limit_hit(paths: Iterable[str | Path], slack: int = 65_536) -> str | None:
    """Which of these files can grow no more under the file size limit, said as an
    operator reads it; None if none (or no limit). A write past RLIMIT_FSIZE fails with
    EFBIG (SIGXFSZ is ignored, as Python does), which SQLite reports as a disk I/O error:
    for whoever runs the daemon it is a full disk."""
    limit = file_size_limit()
    if limit is None:
        return None
    for p in paths:
        try:
            size = os.path.getsize(p)
        except OSError:
            continue
        if size + slack >= limit:
            return (f"{Path(p).name} is {size} bytes, at the file size limit "
                    f"(RLIMIT_FSIZE {limit} bytes)")
    return None


def store_files(store: Store) -> list[str]:
    """A SQLite store's files (database, WAL, rollback journal); none for PostgreSQL."""
    engine = getattr(store, "engine", None)
    path = sqlite_file(engine) if engine is not None else None
    return [path, path + "-wal", path + "-journal"] if path else []


def spool_root(config: Config, store: Store) -> Path | None:
    """store.spool_dir, else next to a SQLite file, else ./flowdeck-spool/<database>;
    None (memory only) for an in-memory database."""
    if config.store.spool_dir:
        return Path(os.path.expanduser(config.store.spool_dir))
    url = getattr(getattr(store, "engine", None), "url", None)
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


class StoreGuard:
    """Whether the store answers, the writes held while it does not, and the spools."""

    def __init__(self, config: Config, store: Store, clock: Clock,
                 db: Callable[..., Awaitable[Any]], emit: Callable[..., None],
                 action: Callable[..., Awaitable[None]], notify: Callable[[dict], None],
                 flows: Iterable[str]) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.db = db  # runs a store call on the engine's worker thread
        self.emit = emit
        self.action = action  # Engine.auto_action
        self.notify = notify  # an issue just opened, to the alerter
        self.down_since: int | None = None  # the store is unavailable since then
        self.error: str | None = None
        self.reason: str | None = None  # write_error_reason of the failure, while down
        self.write_errors: dict[str, int] = {}  # failed store calls since start, by reason
        # per flow, while its outage lasts: the store_unavailable action and issue whose
        # rows are held until the store takes writes, for the snapshot and /readyz
        self.outages: dict[str, dict[str, Any]] = {}
        self.fetches_held: dict[str, int] = {}  # runs that did not fetch, per flow
        self._fetch_held_noted: set[str] = set()
        self._held: deque = deque()  # bookkeeping writes waiting for the store, in order
        self.held_dropped = 0
        root = spool_root(config, store)
        self.spools = {name: RawSpool(root / name if root else None, config.store.spool_max)
                       for name in flows}

    def failed(self, exc: BaseException) -> None:
        """A store call met the store unavailable."""
        self.error = _short(exc)
        self.reason = write_error_reason(exc)
        if self.reason == "io_error":  # EFBIG, as SQLite says it: a full disk to the operator
            hit = file_size_limit_hit(store_files(self.store))
            if hit is not None:
                self.reason = "disk_full"
                self.error = f"{self.error}: {hit}"
        self.write_errors[self.reason] = self.write_errors.get(self.reason, 0) + 1
        if self.down_since is None:
            self.down_since = self.clock.now_ms()
            log.warning("store unavailable (%s): %s", self.reason, self.error)
            self.emit("log", None, message=f"store unavailable ({self.error}): raw "
                                           "payloads are buffered until it answers")

    async def write(self, fn, *args, **kw):
        """A bookkeeping write (actions, issues, source state, runs): while the store is
        away it is held, in order, and written when the store answers again."""
        call = functools.partial(fn, *args, **kw)
        if self.down_since is None:
            try:
                return await self.db(call)
            except UNAVAILABLE as exc:
                self.failed(exc)
        if len(self._held) >= MAX_HELD:
            self._held.popleft()
            self.held_dropped += 1
        self._held.append(call)
        return None

    async def attempt(self, default, fn, *args, **kw):
        """A store call that can be skipped while the store is away."""
        if self.down_since is not None:
            return default
        try:
            return await self.db(functools.partial(fn, *args, **kw))
        except UNAVAILABLE as exc:
            self.failed(exc)
            return default

    async def flush_held(self) -> bool:
        """The held writes, in order; False if the store fails again."""
        while self._held:
            # Taken before the await: two flows' runs flush at once, and must neither write
            # the same held call twice nor pop one the other already wrote.
            call = self._held.popleft()
            try:
                await self.db(call)
            except UNAVAILABLE as exc:
                self._held.appendleft(call)
                self.failed(exc)
                return False
        return True

    def late_run(self, flow: str, trigger: str, started_ms: int, status: str, stats: dict,
                 finished_ms: int, error: str | None) -> None:
        """Record a run that happened while the store was away."""
        self.store.finish_run(self.store.start_run(flow, trigger, started_ms), status, stats,
                              finished_ms, error)

    async def drain_spool(self, rt: FlowRuntime) -> int:
        """Commit the flow's spooled payloads to the raw store, oldest first."""
        spool = self.spools[rt.name]
        if not len(spool):
            return 0
        n = 0
        for e in await self.db(spool.entries):
            try:
                await self.db(functools.partial(
                    self.store.insert_raw, rt.name, e.source, e.body, e.fetched_ms,
                    content_type=e.content_type, status_code=e.status_code,
                    truncated=e.truncated))
            except UNAVAILABLE as exc:
                self.failed(exc)
                break
            await self.db(spool.remove, e)
            n += 1
        return n

    async def buffer(self, rt: FlowRuntime, draft: RawDraft, summary: RunSummary) -> None:
        """Keep a fetched payload the store could not take in the flow's spool."""
        spool = self.spools[rt.name]
        if await self.db(spool.add, draft):
            summary.buffered += 1
            return
        if not rt.spool_full_noted:
            rt.spool_full_noted = True
            if spool.refused == "disk_full":
                why = (f"the raw spool's disk is full ({spool.refused_error}; "
                       f"{spool.bytes} of store.spool_max {spool.max_bytes} bytes used)")
            elif spool.refused == "io_error":
                why = f"the raw spool cannot be written ({spool.refused_error})"
            else:
                why = (f"the raw spool is full ({spool.bytes} bytes, store.spool_max "
                       f"{spool.max_bytes})")
            await self.action(rt.name, "spool_full", source=draft.source, outcome="failed",
                              reason=f"{why}: new payloads are dropped until the store "
                                     "answers")

    def fetch_hold(self, rt: FlowRuntime) -> str | None:
        """Why the flow should not fetch now (None: it should): the store takes no writes
        and the spool can take no more, so what it fetched would be dropped."""
        spool = self.spools[rt.name]
        if self.down_since is None or spool.can_take():
            return None
        if spool.refused in ("disk_full", "io_error"):
            return f"the raw spool's disk is full ({spool.refused_error})"
        return f"the raw spool is full ({spool.bytes} bytes, store.spool_max {spool.max_bytes})"

    async def hold_fetch(self, rt: FlowRuntime, why: str, summary: RunSummary) -> None:
        """A run that does not fetch: counted, and said once per outage."""
        self.fetches_held[rt.name] = self.fetches_held.get(rt.name, 0) + 1
        summary.error = (f"fetch paused: {why}, and the store takes no writes"
                         + (f"; {summary.error}" if summary.error else ""))
        if rt.name not in self._fetch_held_noted:
            self._fetch_held_noted.add(rt.name)
            log.warning("%s: fetching paused until the store or the spool can take data: %s",
                        rt.name, why)
            await self.action(rt.name, "fetch_paused", outcome="failed",
                              reason=f"fetching paused: {why} and the database takes no "
                                     "writes; it resumes when either can keep data")

    async def note_outage(self, rt: FlowRuntime, summary: RunSummary) -> None:
        """A run met the store away: say so once per outage, and in the run's summary."""
        if rt.store_down_since is None:
            rt.store_down_since = self.down_since or self.clock.now_ms()
            where = self.spools[rt.name].folder or "memory"
            reason = (f"database unavailable ({self.error}): fetched payloads are "
                      f"buffered in {where}, retried every {self.config.store.retry:g}s")
            self.outages[rt.name] = {  # viewers see it: redacted as the action row is
                "since_ms": rt.store_down_since, "reason": self.reason,
                "error": redact(self.error or ""),
                "action": {"action": "store_unavailable", "outcome": "failed",
                           "ts_ms": self.clock.now_ms(), "reason": redact(reason)},
                "issue": {"kind": "store_unavailable", "severity": "error",
                          "title": redact(f"database unavailable: {self.error}")}}
            await self.action(rt.name, "store_unavailable", outcome="failed", reason=reason)
            self.emit("issue", rt.name, kind="store_unavailable", severity="error",
                      title=f"database unavailable: {self.error}", key=None, source=None)
            self.emit("flow_state", rt.name, state=rt.state())
        if summary.status == "ok":
            summary.status = "partial"
        spooled = len(self.spools[rt.name])
        summary.error = (f"store unavailable ({self.error}): {spooled} payload(s) "
                         "buffered") + (f"; {summary.error}" if summary.error else "")

    async def outage_over(self, rt: FlowRuntime, committed: int) -> None:
        """The store answers again and the flow's buffer is committed: say so, and record
        the outage as an issue that is already closed."""
        down, rt.store_down_since = rt.store_down_since, None
        self.outages.pop(rt.name, None)
        self._fetch_held_noted.discard(rt.name)
        rt.spool_full_noted = False
        now = self.clock.now_ms()
        fp = f"store_unavailable:{rt.name}"
        dropped = self.spools[rt.name].dropped
        res = await self.write(self.store.raise_issues, [IssueDraft(
            flow=rt.name, kind="store_unavailable", severity="error",
            title=f"the database was unavailable for {(now - down) / 1000:.0f}s "
                  f"({self.error}); {committed} buffered payload(s) committed",
            fingerprint=fp, detail={"since_ms": down, "until_ms": now, "committed": committed,
                                    "dropped": dropped})], down)
        for issue in (res[0] if res else []):
            self.notify(issue)
        await self.write(self.store.resolve_by_fingerprint, rt.name, fp, "auto", now)
        await self.action(rt.name, "store_recovered", outcome="ok",
                          duration_ms=float(now - down),
                          reason=f"database answers again after {(now - down) / 1000:.0f}s:"
                                 f" {committed} buffered payload(s) committed"
                                 + (f", {dropped} dropped (spool full)" if dropped else ""))
        self.emit("flow_state", rt.name, state=rt.state())

    async def retry(self, flows: Iterable[FlowRuntime],
                    run: Callable[[str], Awaitable[Any]]) -> None:
        """The retry timer: commit buffered payloads even when no run is due. ``run`` is
        a run of a flow that only commits and processes (no fetch)."""
        for rt in flows:
            if rt.lock.locked():
                continue
            if len(self.spools[rt.name]) or rt.store_down_since is not None or rt.resume_pending:
                try:
                    await run(rt.name)
                except Exception:
                    log.exception("spool retry of %s failed", rt.name)


