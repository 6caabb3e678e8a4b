"""The fault soak, long: every bundled scenario's faults cycling under a real daemon.

    .venv/bin/python tests/soak/fault_soak.py [--seconds 3600] [--slot 8] [--dir DIR]

Prints RSS and fds every minute, then the figures (tests/support/faultsoak.py says what
is checked) and exits 1 on any problem. The CI tier is tests/e2e/test_soak_faults.py.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for support.*

from support.faultsoak import run_soak  # noqa: E402
from support.recovery import daemon_config_text  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3600)
    ap.add_argument("--slot", type=float, default=8.0, help="seconds each fault lasts a cycle")
    ap.add_argument("--dir", type=Path, default=None, help="keep the database and log here")
    args = ap.parse_args()
    folder = args.dir or Path(tempfile.mkdtemp(prefix="flowdeck-fault-soak-"))
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    res = run_soak(folder, args.seconds, config_text=daemon_config_text(), slot_s=args.slot,
                   progress=lambda m: print(m, flush=True))
    print(f"\n{res.summary()}\nin {time.monotonic() - t0:.0f}s; files in {folder}")
    for p in res.problems:
        print("PROBLEM:", p)
    return 1 if res.problems else 0


if __name__ == "__main__":
    sys.exit(main())
