"""Crash-point soak: SIGKILL a real `flowdeck daemon` at >= 50 chosen and random points.

    .venv/bin/python tests/soak/crash_points.py [--kills 50] [--seed 15] [--dir DIR] [--pg [URL]]

Prints one line per kill, then the summary (records, series and roll-ups compared with a
clean run, lost / duplicated, ready-after-restart p50 / p95) and exits 1 on any problem.
The harness is tests/support/crashes.py; the CI tier is tests/e2e/test_crash_points.py.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for support.*

from support.crashes import plan, run_campaign  # noqa: E402
from support.services import PG_ADMIN_URL  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=50)
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--dir", type=Path, default=None, help="keep the databases and logs here")
    ap.add_argument("--settle", type=float, default=0.0,
                    help="seconds both daemons run after the last kill")
    ap.add_argument("--pg", nargs="?", const=PG_ADMIN_URL, default=None, metavar="ADMIN_URL",
                    help="on PostgreSQL: two databases made on this server for the run "
                         "(default FLOWDECK_TEST_PG or postgres@127.0.0.1:5432/test)")
    args = ap.parse_args()
    folder = args.dir or Path(tempfile.mkdtemp(prefix="flowdeck-crash-"))
    folder.mkdir(parents=True, exist_ok=True)
    kills = plan(args.kills, args.seed)
    t0 = time.monotonic()
    out = run_campaign(folder, kills, settle_s=args.settle,
                       progress=lambda m: print(m, flush=True), pg_admin=args.pg)
    print(f"\n{out.summary()}\nin {time.monotonic() - t0:.0f}s; files in {folder}")
    for p in out.problems:
        print("PROBLEM:", p)
    return 1 if out.problems else 0


if __name__ == "__main__":
    sys.exit(main())
