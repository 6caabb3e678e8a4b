"""Backup and restore time for a store of N records (1,000,000 in the full run): the
figures behind the RPO/RTO in docs/operations.md (was tests/soak/backup_timing.py).

*SQLite*: the database is filled through the store's own write path (records, latest, a
series metric, so roll-ups too) in batches of 10,000, then ``flowdeck backup`` and
``flowdeck restore`` run as subprocesses, timed by the wall clock: the backup once with
nothing writing and once while a writer commits a batch of 100 records every 50 ms;
the restore of the backup taken under writes into a new file.

*PostgreSQL* (when the server at ``$FLOWDECK_BENCH_PG`` answers; full run only, or
``--pg``): the same fill into a fresh database, ``pg_dump -Fc`` idle and under the same
writer, ``pg_restore`` into a second fresh database whose ``records`` count is checked
against the source; both databases dropped. ``details.backup.pg``.

Figures (seconds per million records; in ``--quick`` from 30,000 records, scaled
linearly past what the same commands take on an empty database, which the baseline
column says: an estimate, the full run measures):

- ``backup_s_per_1m_records``: ``flowdeck backup`` while the writer commits (target
  < 60 s), read against the same backup with nothing writing;
- ``restore_s_per_1m_records``: ``flowdeck restore`` into a new file, the larger part of
  the RTO (target < 60 s), read against the idle backup of the same database.

    .venv/bin/python -m bench.backup [--records N] [--dir D] [--pg [USER@HOST:PORT]]
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
from typing import Any

from bench.common import PG_ADMIN, REPO, Figure, Options, log

T = 1_795_521_600_000
FLOWDECK = [sys.executable, "-m", "flowdeck.console.cli"]


def rec(i: int) -> dict:
    return {"flow": "fx", "key": f"K{i % 500:03d}", "ts_ms": T + (i // 500) * 60_000,
            "data": {"pair": f"K{i % 500:03d}", "rate": 1.0 + (i % 97) / 100},
            "quality": 0.97, "anomaly_score": 0.0, "anomalous": False, "flags": [],
            "sources": ["q"], "contributions": {"q": {"rate": 1.0}}, "raw_ids": [i // 500],
            "version_id": 1, "updated_ms": T}


def fill(url: str, n: int) -> float:
    from flowdeck.storage.model import BatchWrite
    from flowdeck.storage.store import Store

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
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "PYTHONPATH": str(REPO)})
    return time.perf_counter() - t0


def start_writer(url: str, first: int) -> tuple[threading.Event, threading.Thread, list[int]]:
    """A writer committing 100 records every 50 ms until the event is set."""
    from flowdeck.storage.model import BatchWrite
    from flowdeck.storage.store import Store

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


def sqlite_run(n: int, root: Path) -> dict[str, Any]:
    db = root / "live.db"
    url = f"sqlite:///{db}"
    fill_s = fill(url, n)
    wal = Path(f"{db}-wal")
    size = db.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    idle = timed(FLOWDECK + ["backup", str(root / "idle.bak"), "--db", url, "--force"])
    stop, th, written = start_writer(url, n)
    try:
        busy = timed(FLOWDECK + ["backup", str(root / "busy.bak"), "--db", url, "--force"])
    finally:
        stop.set()
        th.join()
    restore = timed(FLOWDECK + ["restore", str(root / "busy.bak"), "--db",
                                f"sqlite:///{root / 'new.db'}", "--force"])
    from flowdeck.storage.store import Store

    restored = Store(f"sqlite:///{root / 'new.db'}", check=False)
    try:
        got = restored.count("records")
    finally:
        restored.close()
    if got < n:
        raise RuntimeError(f"the restored database has {got} records, the source had {n} "
                           "before the backup began")
    return {"store": "sqlite", "records": n, "db_bytes": size, "fill_s": round(fill_s, 1),
            "backup_idle_s": round(idle, 2), "backup_under_writes_s": round(busy, 2),
            "records_written_during_backup": written[0],
            "backup_bytes": (root / "busy.bak").stat().st_size, "restore_s": round(restore, 2),
            "restored_records": got}


def pg_run(server: str, n: int, root: Path) -> dict[str, Any]:
    """PostgreSQL: fill, pg_dump -Fc (idle and under writes), pg_restore, verify, drop."""
    from sqlalchemy import create_engine, text

    from flowdeck.storage.store import Store

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
        idle_dump = timed(["pg_dump", "-Fc", "-f", str(dump), f"{libpq}/{src}"])
        stop, th, written = start_writer(url, n)
        try:
            busy_dump = timed(["pg_dump", "-Fc", "-f", str(root / "busy.dump"),
                               f"{libpq}/{src}"])
        finally:
            stop.set()
            th.join()
        restore = timed(["pg_restore", "--no-owner", "-d", f"{libpq}/{dst}", str(dump)])
        restored = Store(f"postgresql+psycopg://{server}/{dst}", check=False)
        try:
            got = restored.count("records")  # the idle dump holds exactly the n filled
        finally:
            restored.close()
        if got != n:
            raise RuntimeError(f"restored database has {got} records, the dump held {n}")
        return {"store": "postgresql", "records": n, "db_bytes": size,
                "fill_s": round(fill_s, 1), "dump_idle_s": round(idle_dump, 2),
                "dump_under_writes_s": round(busy_dump, 2),
                "records_written_during_dump": written[0],
                "dump_bytes": dump.stat().st_size, "restore_s": round(restore, 2),
                "restored_records": got}
    finally:
        with admin.connect() as conn:
            for db in (src, dst):
                conn.execute(text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
        admin.dispose()


def _pg_server() -> str | None:
    """USER@HOST:PORT of $FLOWDECK_BENCH_PG if it answers and pg_dump is installed."""
    import shutil

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    if shutil.which("pg_dump") is None or shutil.which("pg_restore") is None:
        return None
    u = make_url(PG_ADMIN)
    server = f"{u.username or 'postgres'}@{u.host or '127.0.0.1'}:{u.port or 5432}"
    try:
        eng = create_engine(f"postgresql+psycopg://{server}/postgres",
                            connect_args={"connect_timeout": 3})
        with eng.connect() as conn:
            conn.execute(text("SELECT 1"))
        eng.dispose()
    except Exception:
        return None
    return server


def fixed_s(root: Path) -> tuple[float, float]:
    """What ``flowdeck backup`` and ``restore`` cost whatever the size: the same commands
    on a database with the schema and no rows (interpreter, imports, schema check,
    quick_check, fsync, rename)."""
    from flowdeck.storage.store import Store

    url = f"sqlite:///{root / 'empty.db'}"
    Store(url).close()
    backup = timed(FLOWDECK + ["backup", str(root / "empty.bak"), "--db", url, "--force"])
    restore = timed(FLOWDECK + ["restore", str(root / "empty.bak"), "--db",
                                f"sqlite:///{root / 'empty2.db'}", "--force"])
    return backup, restore


def run(opts: Options) -> tuple[list[Figure], dict]:
    n = opts.n(1_000_000, 30_000, least=10_000)
    with tempfile.TemporaryDirectory(prefix="flowdeck-bench-backup-") as tmp:
        sq = sqlite_run(n, Path(tmp))
        log(f"   sqlite: {json.dumps(sq)}")
        fixed = fixed_s(Path(tmp)) if n != 1_000_000 else (0.0, 0.0)
        details: dict[str, Any] = {"sqlite": sq, "scaled_from_records": n,
                                   "empty_backup_s": round(fixed[0], 2),
                                   "empty_restore_s": round(fixed[1], 2)}
        if not opts.quick:
            server = _pg_server()
            if server is None:
                details["pg"] = None
                details["pg_reason"] = f"no PostgreSQL (or pg_dump) at {PG_ADMIN}"
            else:
                pg_root = Path(tmp) / "pg"
                pg_root.mkdir()
                details["pg"] = pg_run(server, n, pg_root)
                log(f"   postgresql: {json.dumps(details['pg'])}")
    per = 1_000_000 / n

    def scaled(seconds: float, fixed: float) -> float:  # the fixed cost is paid once
        return fixed + max(0.0, seconds - fixed) * per

    how = ("measured at 1,000,000" if n == 1_000_000 else
           f"{n:,} records scaled to 1,000,000 past the commands' cost on an empty "
           f"database, {fixed[0]:.1f} s and {fixed[1]:.1f} s: an estimate")
    idle = scaled(sq["backup_idle_s"], fixed[0])
    figs = [
        Figure("backup_s_per_1m_records", scaled(sq["backup_under_writes_s"], fixed[0]),
               "< 60", f"the idle backup of the same database: {idle:.1f} s ({how})",
               unit="s"),
        Figure("restore_s_per_1m_records", scaled(sq["restore_s"], fixed[1]), "< 60",
               f"the idle backup of the same database: {idle:.1f} s ({how})", unit="s"),
    ]
    return figs, details


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.backup")
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--pg", nargs="?", const="postgres@127.0.0.1:5432", default=None,
                    metavar="USER@HOST:PORT", help="measure PostgreSQL (pg_dump/pg_restore)")
    args = ap.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="flowdeck-backup-"))
    out = pg_run(args.pg, args.records, root) if args.pg else sqlite_run(args.records, root)
    print(json.dumps({**out, "dir": str(root)}))


if __name__ == "__main__":
    main()
