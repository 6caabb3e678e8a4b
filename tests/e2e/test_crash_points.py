"""Crash points, CI tier (issue 15, item 2): a real daemon SIGKILLed at 10 points.

Mid-migration, before and after the raw commit, mid records upsert, between the records
commit and the deferred series write, mid series write, mid spool write (the store held
away by a lock), and random moments; after each, a restart, ready again and a good run.
Then what it stored is compared with a daemon that ran the same time uninterrupted
(tests/support/crashes.py says how). The long run (>= 50 kills) is
``tests/soak/crash_points.py``.
"""

from __future__ import annotations

from support.crashes import NAMED, plan, run_campaign


def test_ten_crash_points_lose_and_duplicate_nothing(tmp_path):
    kills = plan(10, seed=15)
    assert {k.point for k in kills} >= {"mid_migration", *NAMED, "random"}
    out = run_campaign(tmp_path, kills, progress=print)
    print(out.summary())
    assert not out.problems, "\n".join(out.problems)
    assert out.exit_codes == [-9] * len(kills)  # every kill was a SIGKILL at its point
    assert len(out.ready_s) == len(kills)  # ready again after every one
    c = out.compared
    assert c["records"] > 0 and c["series"] > 0 and c["rollups"] > 0
    assert c["lost"] == 0 and c["duplicated"] == 0 and c["different"] == 0
