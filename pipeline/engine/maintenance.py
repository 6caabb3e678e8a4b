"""Maintenance windows: configured ones (``maintenance:``, a cron and a duration) and ones
an operator starts now, per flow, in one of two modes:

- ``pause``: scheduled runs are skipped (a manual run still runs);
- ``mute``: runs go on with the trigger ``maintenance`` (so they count for no SLA or
  availability figure, which count schedule/once/manual runs, nor for ``flowdeck_runs``),
  and no alert webhook is sent for issues opened meanwhile.

``tick`` (every few seconds, from the engine) notices windows that began or ended and
records each change as a recovery action (``maintenance_start`` / ``maintenance_end``,
actor ``auto`` for configured windows, the operator's for theirs).

An operator's window survives a restart: ``tick`` keeps each flow's in the store (the
flow's ``source_state`` row of the reserved source ``:maintenance``, which no source
name can be: mode, start, end, actor), and ``restore`` at the engine's start takes back
the ones still running (so stop works on them, and they end when due) and records the
end of one that ran out while the daemon was stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flowdeck.pipeline.config import Config
from flowdeck.pipeline.core.clock import Clock
from flowdeck.pipeline.core.shapes import MaintenanceState

log = logging.getLogger("flowdeck.maintenance")
TICK = 5.0
MIN_TICK = 0.05  # on a fast simulated clock (wall seconds)
STATE_SOURCE = ":maintenance"  # source_state row of a flow's operator window (not a name)


@dataclass
class Manual:
    mode: str
    start_ms: int
    until_ms: int
    actor: str


class Maintenance:
    def __init__(self, config: Config, clock: Clock,
                 record: Callable[..., Awaitable[None]] | None = None, *,
                 store: Any = None, run_db: Callable[..., Awaitable[Any]] | None = None
                 ) -> None:
        from apscheduler.triggers.cron import CronTrigger

        self.config = config
        self.clock = clock
        self._record = record
        self._store = store  # where operator windows are kept (None: not kept)
        self._run_db = run_db
        self._kept: dict[str, tuple | None] = {}  # flow -> the window the store holds
        self.windows = [(w, CronTrigger.from_crontab(w.cron, timezone="UTC"))
                        for w in config.maintenance]
        self.manual: dict[str, Manual] = {}
        self.skipped: dict[str, int] = {}  # scheduled runs a pause window skipped, per flow
        self._seen: dict[str, MaintenanceState | None] = {}
        self._task: asyncio.Task | None = None

    # ------------------------------------------------------------ what is on

    def _scheduled(self, flow: str, now_ms: int) -> list[MaintenanceState]:
        out: list[MaintenanceState] = []
        for i, (w, trigger) in enumerate(self.windows):
            if w.flows and flow not in w.flows:
                continue
            dur = int(w.duration * 1000)
            since = datetime.fromtimestamp((now_ms - dur) / 1000, tz=UTC)
            start = trigger.get_next_fire_time(None, since)
            if start is None:
                continue
            start_ms = int(start.timestamp() * 1000)
            if start_ms <= now_ms < start_ms + dur:
                out.append({"mode": w.mode, "name": w.name or f"window {i + 1}",
                            "start_ms": start_ms, "until_ms": start_ms + dur,
                            "actor": "auto"})
        return out

    def state(self, flow: str, now_ms: int | None = None) -> MaintenanceState | None:
        """The window a flow is in now (pause wins over mute), or None."""
        now_ms = self.clock.now_ms() if now_ms is None else now_ms
        on = self._scheduled(flow, now_ms)
        m = self.manual.get(flow)
        if m is not None:
            if m.until_ms <= now_ms:
                del self.manual[flow]
            else:
                on.append({"mode": m.mode, "name": "operator", "start_ms": m.start_ms,
                           "until_ms": m.until_ms, "actor": m.actor})
        if not on:
            return None
        on.sort(key=lambda w: (w["mode"] != "pause", -w["until_ms"]))
        return on[0]

    def pauses(self, flow: str) -> bool:
        st = self.state(flow)
        return st is not None and st["mode"] == "pause"

    def mutes(self, flow: str | None) -> bool:
        """Alerts of this flow are held back now (a paused flow raises none anyway)."""
        return flow is not None and self.state(flow) is not None

    # ------------------------------------------------------------ operator

    def start_now(self, flow: str, seconds: float, mode: str, actor: str) -> MaintenanceState:
        now = self.clock.now_ms()
        self.manual[flow] = Manual(mode, now, now + int(seconds * 1000), actor)
        st = self.state(flow, now)
        assert st is not None
        return st

    def stop_now(self, flow: str) -> bool:
        return self.manual.pop(flow, None) is not None

    # ------------------------------------------------------------ changes

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._task is None:
            self._task = loop.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("maintenance check failed")
            await asyncio.sleep(max(MIN_TICK, self.clock.wall_seconds(TICK)))

    # ------------------------------------------------------------ kept across restarts

    async def _db(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._run_db is not None:
            return await self._run_db(fn, *args)
        return await asyncio.to_thread(fn, *args)

    @staticmethod
    def _key(m: Manual | None) -> tuple | None:
        return None if m is None else (m.mode, m.start_ms, m.until_ms, m.actor)

    async def restore(self) -> list[str]:
        """At start: take back the operator windows a previous run kept that are still
        on; record the end of those that ran out meanwhile. The flows restored."""
        if self._store is None:
            return []
        try:
            states = await self._db(self._store.source_states)
        except Exception as exc:  # the store away: windows are not restored, runs go on
            log.warning("maintenance windows not restored: %s", exc)
            return []
        now = self.clock.now_ms()
        restored = []
        for (flow, source), st in states.items():
            w = (st or {}).get("window") if source == STATE_SOURCE else None
            if not w or flow not in self.config.flows:
                continue
            m = Manual(str(w["mode"]), int(w["start_ms"]), int(w["until_ms"]),
                       str(w["actor"]))
            self._kept[flow] = self._key(m)
            if m.until_ms > now:
                self.manual[flow] = m
                self._seen[flow] = self.state(flow, now)  # its start is recorded already
                restored.append(flow)
                continue
            ended: MaintenanceState = {"mode": m.mode, "name": "operator",
                                       "start_ms": m.start_ms, "until_ms": m.until_ms,
                                       "actor": m.actor}
            until = datetime.fromtimestamp(m.until_ms / 1000, tz=UTC)
            await self._note(flow, "maintenance_end", ended,
                             f"maintenance ({m.mode}, operator) ended at "
                             f"{until:%Y-%m-%d %H:%M}Z while the daemon was stopped")
        if restored:
            log.warning("maintenance windows restored: %s", ", ".join(sorted(restored)))
        await self._keep()
        return restored

    async def _keep(self) -> None:
        """Write each flow's operator window to the store where it changed."""
        if self._store is None:
            return
        for flow in self.config.flows:
            m = self.manual.get(flow)
            key = self._key(m)
            if self._kept.get(flow) == key:
                continue
            window = None if m is None else {"mode": m.mode, "start_ms": m.start_ms,
                                             "until_ms": m.until_ms, "actor": m.actor}
            try:
                await self._db(self._store.save_source_state, flow, STATE_SOURCE,
                               {"window": window}, self.clock.now_ms())
            except Exception as exc:  # the store away: the next tick writes it
                log.warning("maintenance window of %s not kept: %s", flow, exc)
                continue
            self._kept[flow] = key

    async def tick(self) -> list[tuple[str, str]]:
        """Record windows that began or ended since the last tick: [(flow, action)];
        keep operator windows in the store."""
        changes = []
        for flow in self.config.flows:
            now = self.state(flow)
            before = self._seen.get(flow)
            key_now = None if now is None else (now["name"], now["start_ms"], now["mode"])
            key_before = None if before is None else (before["name"], before["start_ms"],
                                                      before["mode"])
            if key_now == key_before:
                continue
            self._seen[flow] = now
            if before is not None:
                changes.append((flow, "maintenance_end"))
                await self._note(flow, "maintenance_end", before,
                                 f"maintenance ({before['mode']}, {before['name']}) ended")
            if now is not None:
                changes.append((flow, "maintenance_start"))
                until = datetime.fromtimestamp(now["until_ms"] / 1000, tz=UTC)
                await self._note(flow, "maintenance_start", now,
                                 f"maintenance ({now['mode']}, {now['name']}) until "
                                 f"{until:%Y-%m-%d %H:%M}Z")
        await self._keep()
        return changes

    async def _note(self, flow: str, action: str, st: MaintenanceState, reason: str) -> None:
        if self._record is not None:
            detail: dict[str, Any] = dict(st)
            await self._record(flow, action, reason=reason, actor=st["actor"], detail=detail)
