"""Crash points, CI tier (issue 15, item 2): a real daemon SIGKILLed at 10 points.

Mid-migration, before and after the raw commit, mid records upsert, between the records
commit and the deferred series write, mid series write, mid spool write (the store held
away by a lock), and random moments; after each, a restart, ready again and a good run.
Then what it stored is compared with a daemon that ran the same time uninterrupted
(tests/support/crashes.py says how). The long run (>= 50 kills) is
``tests/soak/crash_points.py`` (``--pg`` for PostgreSQL).

The same on PostgreSQL: each daemon in a database of its own, made for the run and dropped
after it; the store is kept away for the mid-spool kill by refusing connections.
"""

from __future__ import annotations

import pytest
from support.crashes import NAMED, plan, run_campaign
from support.services import PG_ADMIN_URL, need_service


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_ten_crash_points_lose_and_duplicate_nothing(tmp_path, backend):
    kills = plan(10, seed=15)
    assert {k.point for k in kills} >= {"mid_migration", *NAMED, "random"}
    if backend == "postgresql":
        need_service("PostgreSQL", "127.0.0.1", 5432)
    out = run_campaign(tmp_path, kills, progress=print,
                       pg_admin=PG_ADMIN_URL if backend == "postgresql" else None)
    print(out.summary())
    assert not out.problems, "\n".join(out.problems)
    assert out.exit_codes == [-9] * len(kills)  # every kill was a SIGKILL at its point
    assert len(out.ready_s) == len(kills)  # ready again after every one
    c = out.compared
    assert c["records"] > 0 and c["series"] > 0 and c["rollups"] > 0
    assert c["lost"] == 0 and c["duplicated"] == 0 and c["different"] == 0
