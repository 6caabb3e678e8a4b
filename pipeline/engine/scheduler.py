"""The schedule: one APScheduler job per flow (its ``every`` or ``cron``) and the store's
retry timer; pausing and resuming a flow's job, its next run, and waiting for the runs
in progress at stop."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from flowdeck.pipeline.config import Config
from flowdeck.pipeline.core.clock import Clock, ScaledClock

if TYPE_CHECKING:
    from flowdeck.pipeline.engine.flow import FlowRuntime

log = logging.getLogger("flowdeck.engine")


@functools.cache
def _clock_trigger_class() -> type:
    from apscheduler.triggers.base import BaseTrigger

    class ClockTrigger(BaseTrigger):
        """A trigger read on a simulated clock (``ScaledClock``): APScheduler asks with
        wall times, the wrapped trigger answers in the clock's time, so an ``every: 5m``
        or a cron fires every 5 simulated minutes or at simulated cron times."""

        __slots__ = ("inner", "clock")

        def __init__(self, inner: Any, clock: Clock) -> None:
            self.inner = inner
            self.clock = clock

        def _sim(self, dt: datetime) -> datetime:
            return datetime.fromtimestamp(self.clock.from_wall(dt.timestamp()), tz=UTC)

        def get_next_fire_time(self, previous_fire_time, now):
            prev = None if previous_fire_time is None else self._sim(previous_fire_time)
            nxt = self.inner.get_next_fire_time(prev, self._sim(now))
            if nxt is None:
                return None
            return datetime.fromtimestamp(self.clock.to_wall(nxt.timestamp()), tz=UTC)

    return ClockTrigger


def clocked(trigger: Any, clock: Clock) -> Any:
    """``trigger`` as it fires on ``clock``: itself on the wall's clock, wrapped on a
    simulated one."""
    return _clock_trigger_class()(trigger, clock) if isinstance(clock, ScaledClock) else trigger


class Scheduler:
    def __init__(self, config: Config, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self.aps = None  # the AsyncIOScheduler while started
        self._tasks: set[asyncio.Task] = set()  # scheduled runs in progress

    async def tracked(self, run: Awaitable[Any]) -> Any:
        """Await ``run`` as a run that ``stop`` waits for."""
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            return await run
        finally:
            if task is not None:
                self._tasks.discard(task)

    def start(self, flows: Iterable[FlowRuntime], run: Callable[[str], Awaitable[Any]],
              retry: Callable[[], Awaitable[None]]) -> None:
        """Run ``run(flow name)`` on each flow's schedule (from now) and ``retry()``
        every store.retry seconds."""
        from apscheduler.schedulers.asyncio import AsyncIOScheduler
        from apscheduler.triggers.cron import CronTrigger
        from apscheduler.triggers.interval import IntervalTrigger

        self.aps = AsyncIOScheduler(timezone="UTC")
        runtimes = {rt.name: rt for rt in flows}

        async def scheduled(name: str) -> None:
            if runtimes[name].paused:
                return
            try:
                await self.tracked(run(name))
            except Exception:  # a run must never kill the scheduler
                log.exception("run of %s failed", name)

        for name, rt in runtimes.items():
            sch = rt.cfg.schedule
            if sch.every is not None:
                trigger = IntervalTrigger(seconds=sch.every, jitter=sch.jitter or None)
            else:
                trigger = CronTrigger.from_crontab(sch.cron, timezone="UTC")
            self.aps.add_job(scheduled, clocked(trigger, self.clock), args=[name], id=name,
                             name=name, max_instances=1, coalesce=True,
                             misfire_grace_time=max(1, int(sch.every or 60)),
                             next_run_time=datetime.fromtimestamp(
                                 self.clock.to_wall(self.clock.now()), tz=UTC))
        self.aps.add_job(retry, IntervalTrigger(seconds=self.config.store.retry),
                         id="flowdeck:store-retry", name="store retry", max_instances=1,
                         coalesce=True)
        self.aps.start()

    def pause(self, name: str) -> None:
        if self.aps is not None and self.aps.get_job(name):
            self.aps.pause_job(name)

    def resume(self, name: str) -> None:
        if self.aps is not None and self.aps.get_job(name):
            self.aps.resume_job(name)

    def slot_after(self, name: str, started_ms: int) -> int:
        """When the run after one that started at ``started_ms`` (on any node) is due,
        epoch ms: a node taking a flow over does not run the slot its previous owner
        already ran. An interval's next slot is one interval later (less a tenth, for
        the nodes' different phases and clocks); a cron's is its next fire time."""
        sch = self.config.flows[name].schedule
        if sch.every is not None:
            return started_ms + int(sch.every * 900)
        from datetime import UTC, datetime, timedelta

        from apscheduler.triggers.cron import CronTrigger

        after = datetime.fromtimestamp(started_ms / 1000, UTC) + timedelta(seconds=1)
        nxt = CronTrigger.from_crontab(sch.cron, timezone="UTC").get_next_fire_time(None, after)
        return started_ms if nxt is None else int(nxt.timestamp() * 1000) - 1000

    def next_run_ms(self, name: str) -> int | None:
        if self.aps is None:
            return None
        job = self.aps.get_job(name)
        if job is None or job.next_run_time is None:
            return None
        return int(self.clock.from_wall(job.next_run_time.timestamp()) * 1000)

    async def stop(self) -> None:
        """No new runs; let the ones in progress finish (shutting the scheduler down
        first would cancel them mid-batch), then stop it."""
        if self.aps is None:
            return
        self.aps.pause()
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        self.aps.shutdown(wait=False)
        self.aps = None
