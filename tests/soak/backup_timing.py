"""Backup and restore time for a SQLite store of N records (default 1,000,000): the
figures behind the RPO/RTO in docs/operations.md. A script, not a test (pytest does not
collect it): `python tests/soak/backup_timing.py [--records N] [--dir D]`.

The database is filled through the store's own write path (records, latest, one series
metric, so roll-ups too) in batches of 10,000, then `flowdeck backup` and `flowdeck
restore` run as subprocesses, timed by the wall clock, once idle and once while a
writer commits a batch of 100 records every 50 ms. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from flowdeck.storage.model import BatchWrite
from flowdeck.storage.store import Store

T = 1_795_521_600_000
FLOWDECK = [sys.executable, "-m", "flowdeck.console.cli"]


def rec(i: int) -> dict:
    return {"flow": "fx", "key": f"K{i % 500:03d}", "ts_ms": T + (i // 500) * 60_000,
            "data": {"pair": f"K{i % 500:03d}", "rate": 1.0 + (i % 97) / 100},
            "quality": 0.97, "anomaly_score": 0.0, "anomalous": False, "flags": [],
            "sources": ["q"], "contributions": {"q": {"rate": 1.0}}, "raw_ids": [i // 500],
            "version_id": 1, "updated_ms": T}


def fill(url: str, n: int) -> float:
    t0 = time.perf_counter()
    store = Store(url)
    try:
        for start in range(0, n, 10_000):
            rows = [rec(i) for i in range(start, min(n, start + 10_000))]
            series = [("fx", r["key"], "rate", r["ts_ms"], r["data"]["rate"]) for r in rows]
            store.write_batch(BatchWrite("fx", records=rows, series=series), T)
    finally:
        store.close()
    return time.perf_counter() - t0


def timed(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(FLOWDECK + argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="flowdeck-backup-"))
    db = root / "live.db"
    url = f"sqlite:///{db}"
    fill_s = fill(url, args.records)
    size = db.stat().st_size + (os.path.getsize(f"{db}-wal") if os.path.exists(f"{db}-wal") else 0)
    idle_backup = timed(["backup", str(root / "idle.bak"), "--db", url, "--force"])
    stop = threading.Event()
    written = [0]

    def writer() -> None:
        store = Store(url)
        i = args.records
        try:
            while not stop.is_set():
                store.write_batch(BatchWrite("fx", records=[rec(i + j) for j in range(100)]), T)
                i += 100
                written[0] += 100
                time.sleep(0.05)
        finally:
            store.close()

    th = threading.Thread(target=writer, daemon=True)
    th.start()
    time.sleep(0.5)
    busy_backup = timed(["backup", str(root / "busy.bak"), "--db", url, "--force"])
    stop.set()
    th.join()
    restore = timed(["restore", str(root / "busy.bak"), "--db", f"sqlite:///{root / 'new.db'}",
                     "--force"])
    print(json.dumps({
        "records": args.records, "db_bytes": size, "fill_s": round(fill_s, 1),
        "backup_idle_s": round(idle_backup, 2), "backup_under_writes_s": round(busy_backup, 2),
        "records_written_during_backup": written[0],
        "backup_bytes": (root / "busy.bak").stat().st_size, "restore_s": round(restore, 2),
        "dir": str(root)}))


if __name__ == "__main__":
    main()
