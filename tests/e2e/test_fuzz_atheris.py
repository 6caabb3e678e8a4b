"""The atheris (libFuzzer) target for the collect path, for a bounded time (issue 15, item 1).

``tests/soak/fuzz_collect.py`` feeds coverage-guided bytes to every demo source's collect
path; here it runs for ``FLOWDECK_ATHERIS_SECONDS`` (default 30) and must find no input
that makes an exception escape the stages. The soak runs it longer.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris", reason="atheris has no wheel for this platform or Python")

TARGET = Path(__file__).resolve().parents[1] / "soak" / "fuzz_collect.py"
SECONDS = int(os.environ.get("FLOWDECK_ATHERIS_SECONDS", "30"))


def test_the_collect_path_survives_coverage_guided_fuzzing(tmp_path):
    corpus = tmp_path / "corpus"
    res = subprocess.run(
        [sys.executable, str(TARGET), str(corpus), f"-max_total_time={SECONDS}",
         "-rss_limit_mb=2048", "-timeout=10"],
        cwd=tmp_path, capture_output=True, text=True, timeout=SECONDS + 120)
    tail = res.stderr[-3000:]
    crashes = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(
        ("crash-", "timeout-", "oom-", "leak-")))
    assert res.returncode == 0 and not crashes, f"{crashes}\n{tail}"
    done = [line for line in res.stderr.splitlines() if line.startswith("Done ")]
    assert done, tail
    print(f"atheris collect path: {done[-1]}; corpus {len(list(corpus.iterdir()))} inputs")
