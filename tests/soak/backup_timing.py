"""Backup and restore time for a SQLite store of N records (default 1,000,000): the
figures behind the RPO/RTO in docs/operations.md. A script, not a test (pytest does not
collect it): `python tests/soak/backup_timing.py [--records N] [--dir D] [--pg [URL]]`.

The database is filled through the store's own write path (records, latest, one series
metric, so roll-ups too) in batches of 10,000, then `flowdeck backup` and `flowdeck
restore` run as subprocesses, timed by the wall clock, once idle and once while a
writer commits a batch of 100 records every 50 ms. Prints one JSON object.

With `--pg` (default server postgresql://postgres@127.0.0.1:5432) the same fill goes into
a fresh PostgreSQL database, then `pg_dump -Fc` and `pg_restore` into a second fresh
database are timed the same way (idle, and the dump once more under the same writer), the
restored `records` count is checked against the source, and both databases are dropped.
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


def start_writer(url: str, first: int) -> tuple[threading.Event, threading.Thread, list[int]]:
    """A writer committing 100 records every 50 ms until the event is set."""
    stop = threading.Event()
    written = [0]

    def writer() -> None:
        store = Store(url)
        i = first
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
    return stop, th, written


def timed_tool(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def pg_main(server: str, n: int, root: Path) -> None:
    """PostgreSQL: fill, pg_dump -Fc (idle and under writes), pg_restore, verify, drop."""
    from sqlalchemy import create_engine, text

    tag = f"{os.getpid()}_{int(time.time())}"
    src, dst = f"flowdeck_bt_src_{tag}", f"flowdeck_bt_dst_{tag}"
    admin = create_engine(f"postgresql+psycopg://{server}/postgres", isolation_level="AUTOCOMMIT")
    libpq = f"postgresql://{server}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{src}"'))
        conn.execute(text(f'CREATE DATABASE "{dst}"'))
    try:
        url = f"postgresql+psycopg://{server}/{src}"
        fill_s = fill(url, n)
        with admin.connect() as conn:
            size = conn.execute(text(f"SELECT pg_database_size('{src}')")).scalar_one()
        dump = root / "idle.dump"
        idle_dump = timed_tool(["pg_dump", "-Fc", "-f", str(dump), f"{libpq}/{src}"])
        stop, th, written = start_writer(url, n)
        busy_dump = timed_tool(["pg_dump", "-Fc", "-f", str(root / "busy.dump"), f"{libpq}/{src}"])
        stop.set()
        th.join()
        restore = timed_tool(["pg_restore", "--no-owner", "-d", f"{libpq}/{dst}", str(dump)])
        source = Store(url, check=False)
        restored = Store(f"postgresql+psycopg://{server}/{dst}", check=False)
        try:
            # the idle dump is the one restored: it holds exactly the n filled records
            want, got = n, restored.count("records")
            source_now = source.count("records")
        finally:
            source.close()
            restored.close()
        if got != want:
            raise SystemExit(f"restored database has {got} records, the dump held {want}")
        print(json.dumps({
            "store": "postgresql", "records": n, "db_bytes": size, "fill_s": round(fill_s, 1),
            "dump_idle_s": round(idle_dump, 2), "dump_under_writes_s": round(busy_dump, 2),
            "records_written_during_dump": written[0], "source_records_after": source_now,
            "dump_bytes": dump.stat().st_size, "restore_s": round(restore, 2),
            "restored_records": got, "dir": str(root)}))
    finally:
        with admin.connect() as conn:
            for db in (src, dst):
                conn.execute(text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
        admin.dispose()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--pg", nargs="?", const="postgres@127.0.0.1:5432", default=None,
                    metavar="USER@HOST:PORT", help="measure PostgreSQL (pg_dump/pg_restore)")
    args = ap.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="flowdeck-backup-"))
    if args.pg:
        pg_main(args.pg, args.records, root)
        return
    db = root / "live.db"
    url = f"sqlite:///{db}"
    fill_s = fill(url, args.records)
    size = db.stat().st_size + (os.path.getsize(f"{db}-wal") if os.path.exists(f"{db}-wal") else 0)
    idle_backup = timed(["backup", str(root / "idle.bak"), "--db", url, "--force"])
    stop, th, written = start_writer(url, args.records)
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
