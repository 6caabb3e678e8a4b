"""The simulated clock a whole daemon can run on ($FLOWDECK_CLOCK_SPEED): its mapping to
the wall, the environment that makes it, and schedules read on it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from flowdeck.pipeline.core.clock import ScaledClock, SystemClock, clock_from_env
from flowdeck.pipeline.engine.scheduler import clocked

NOV1 = datetime(2026, 11, 1, tzinfo=UTC).timestamp()


class Wall:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_a_scaled_clock_runs_speed_times_the_wall_from_its_start():
    wall = Wall(1_000.0)
    clock = ScaledClock(3600, NOV1, wall=wall)
    assert clock.now() == NOV1
    wall.t += 2.5  # two and a half wall seconds: two and a half simulated hours
    assert clock.now() == NOV1 + 9000
    assert clock.utcnow() == datetime(2026, 11, 1, 2, 30, tzinfo=UTC)
    assert clock.to_wall(NOV1 + 3600) == 1_001.0 and clock.from_wall(1_001.0) == NOV1 + 3600
    assert clock.wall_seconds(600) == pytest.approx(1 / 6)


def test_the_environment_makes_one_and_an_anchor_shares_it():
    assert isinstance(clock_from_env({}), SystemClock)
    c = clock_from_env({"FLOWDECK_CLOCK_SPEED": "100", "FLOWDECK_CLOCK_START":
                        "2026-11-01T00:00:00Z", "FLOWDECK_CLOCK_ANCHOR": "5000"})
    assert isinstance(c, ScaledClock) and c.speed == 100
    assert c.to_wall(NOV1) == 5000 and c.from_wall(5010) == NOV1 + 1000  # same for all
    with pytest.raises(ValueError, match="FLOWDECK_CLOCK_SPEED"):
        clock_from_env({"FLOWDECK_CLOCK_SPEED": "fast"})
    with pytest.raises(ValueError, match="FLOWDECK_CLOCK_SPEED"):
        clock_from_env({"FLOWDECK_CLOCK_SPEED": "0"})


def test_schedules_fire_on_simulated_time():
    clock = ScaledClock(600, NOV1, anchor=1_000.0)

    def at_wall(w: float) -> datetime:
        return datetime.fromtimestamp(w, tz=UTC)

    every = clocked(IntervalTrigger(minutes=20, start_date=at_wall(NOV1)), clock)
    first = every.get_next_fire_time(None, at_wall(1_000.0))
    nxt = every.get_next_fire_time(first, at_wall(1_000.0))
    assert (nxt - first).total_seconds() == pytest.approx(2.0)  # 20 simulated min = 2 s
    # a cron at 03:00 simulated: 3 h after the start = 18 wall seconds after the anchor
    cron = clocked(CronTrigger.from_crontab("0 3 * * *", timezone="UTC"), clock)
    fire = cron.get_next_fire_time(None, at_wall(1_000.0))
    assert fire.timestamp() == pytest.approx(1_018.0)
    # on the wall's clock a trigger is left as it is
    plain = IntervalTrigger(minutes=20)
    assert clocked(plain, SystemClock()) is plain
