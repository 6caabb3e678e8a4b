"""`python -m bench --quick --json` as a person runs it: one JSON object with every figure.

Run at a reduced scale (FLOWDECK_BENCH_SCALE) so it stays short; it asserts the shape of
the result, never a speed: each figure is a number, or null with the reason in `notes`.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KEYS = [
    "pipeline_records_per_s", "pipeline_ratio_vs_floor", "pipeline_pg_records_per_s",
    "bytewax_ratio", "feed_p99_ms_at_10k", "broadcast_ratio_1000_viewers",
    "stalled_viewer_cost", "l1_hit_ns", "console_key_to_paint_ms_at_10k", "rss_growth_soak",
    "detect_us_per_record_metric", "retention_size_growth_last_week",
    "backup_s_per_1m_records", "restore_s_per_1m_records",
]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[dict, str, Path]:
    out = tmp_path_factory.mktemp("bench") / "result.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=900,
        env={**os.environ, "FLOWDECK_BENCH_SCALE": "0.05"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, f"stdout is not one JSON object: {proc.stdout[:500]!r}"
    return json.loads(lines[0]), proc.stderr, out


def test_every_figure_is_a_number_or_null_with_a_reason(quick_run) -> None:
    result, _err, _out = quick_run
    for key in KEYS:
        assert key in result, f"{key} missing from the result"
        value = result[key]
        if value is None:
            reason = result["notes"].get(key)
            assert isinstance(reason, str) and reason.strip(), f"{key} is null without a reason"
        else:
            assert isinstance(value, int | float) and not isinstance(value, bool), (key, value)
            assert math.isfinite(value), (key, value)
        assert result["targets"][key], key


def test_the_run_records_where_it_ran(quick_run) -> None:
    result, _err, _out = quick_run
    env = result["environment"]
    assert env["cores"] == os.cpu_count()
    assert env["python"] == sys.version.split()[0]
    assert env["cpu"] and env["git_rev"]
    for lib in ("sqlalchemy", "textual", "websockets", "orjson"):
        assert env["libraries"][lib], lib
    assert result["quick"] is True and result["scale"] == 0.05


def test_the_table_goes_to_stderr_and_the_file_matches_stdout(quick_run) -> None:
    result, err, out = quick_run
    assert "figure" in err and "target" in err
    for key in KEYS:
        assert key in err, f"{key} is not in the printed table"
    saved = json.loads(out.read_text())
    assert {k: saved[k] for k in KEYS} == {k: result[k] for k in KEYS}
