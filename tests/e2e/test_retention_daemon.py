"""A real `flowdeck daemon` on a compressed clock holds its database at a steady size.

Six simulated days in about a minute ($FLOWDECK_CLOCK_SPEED=8640): the bundled demo's two
flows poll the in-process simulator every 30 simulated minutes through every stage into
SQLite, and the retention job (a pass every simulated hour) keeps raw payloads 6 h
(lineage: as long as the records naming them), records and runs 1 day, series 12 h,
minute roll-ups 36 h and hour roll-ups 2 days. Every 6 simulated hours the test reads
what `flowdeck db stats` reads and every record inside its window (bench/retention.py's
``run_month``, the same run as the benchmark's month). The windows are full after two
days; the size and the rows then stop growing: the last two days against the two before
them (within 30 %; without retention the records grow by half). And no record still
inside its window ever goes. Nothing here is timed.
"""

from __future__ import annotations

import statistics

import pytest

from bench.retention import MonthPlan, curve_table, run_month

pytestmark = pytest.mark.slow

QUARTER = 6 * 3600.0  # one sample every 6 simulated hours
WINDOWS = {"raw": 1, "records": 4, "series": 2, "series_1m": 6, "series_1h": 8,
           "quarantine": 4, "actions": 4, "issues_resolved": 4, "runs": 4}  # in quarters


def mean(rows: list[dict], key) -> float:
    return statistics.fmean(key(r) for r in rows)


def test_six_simulated_days_hold_a_steady_size(tmp_path):
    plan = MonthPlan(units=24, unit_s=QUARTER, speed=8640.0, every_s=1800.0,
                     pass_every_units=1 / 6, windows=WINDOWS)
    month = run_month(plan, tmp_path)
    curve = month["curve"]
    table = curve_table(curve, "6h")
    assert month["daemon_rc"] == 0, open(month["log"]).read()[-3000:]
    assert len(curve) == 24, table
    assert month["lost_in_window"] == 0, table

    middle, last = curve[8:16], curve[16:24]  # days 3-4 and days 5-6
    # data arrived all along (the first sample may come before the daemon's first run)
    assert all(r["records_in_window"] > 0 for r in curve[1:]), table
    for table_name in ("records", "series_1m", "raw_payloads", "runs"):  # points: in records
        then = mean(middle, lambda r, t=table_name: r["rows"][t])
        now = mean(last, lambda r, t=table_name: r["rows"][t])
        assert then > 0, (table_name, table)
        # not growing (a drop is the busy machine fitting fewer runs in, not retention:
        # what retention may not take is checked record by record, lost_in_window)
        assert now / then - 1 < 0.3, (table_name, then, now, table)
    then, now = mean(middle, lambda r: r["size_bytes"]), mean(last, lambda r: r["size_bytes"])
    assert now / then - 1 < 0.3, (then, now, table)
    # without retention the records would have grown six-fold from day 1 to day 6
    assert curve[-1]["rows"]["records"] < 1.5 * curve[3]["rows"]["records"], table
