"""`flowdeck backup DEST` and `flowdeck restore SRC`: a consistent copy of a SQLite store
while the daemon writes, and putting one back.

Backup uses SQLite's online backup API in one step: it reads one snapshot of the database
(a read transaction; in WAL mode the daemon's writes go on meanwhile) into ``DEST.partial``,
which is checked (``PRAGMA quick_check``), synced and renamed to ``DEST``: a backup that
exists is complete. PostgreSQL is refused with the tools made for it (pg_dump,
pg_basebackup), which do the same job better than a copy through flowdeck could.

Restore reads the backup's Alembic revision first: one this flowdeck does not know (a
newer flowdeck wrote it) is refused; an older known one is restored and named, to be
brought up with ``flowdeck db upgrade``. The copy goes to a temporary file next to the
target and is renamed over it, so a failed restore leaves the target as it was. The
daemon must be stopped while its database is restored (a running one keeps the old file
open).
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from flowdeck.console.cli import common
from flowdeck.console.cli.common import EXIT_OK, EXIT_USAGE, CliError

PG_HINT = ("flowdeck backup copies SQLite databases; for PostgreSQL use its own tools: "
           "pg_dump -Fc -f flowdeck.dump URL (a consistent logical copy while flowdeck "
           "writes; restore with pg_restore -d URL flowdeck.dump), or pg_basebackup with WAL "
           "archiving for point-in-time recovery (docs/operations.md)")


def add_parsers(sub) -> None:
    p = sub.add_parser("backup", help="a consistent online copy of a SQLite database")
    p.add_argument("dest", metavar="DEST", help="the backup file to write")
    common.add_common(p)
    p.add_argument("--force", action="store_true", help="replace DEST if it exists")
    p.set_defaults(fn=cmd_backup)
    p = sub.add_parser("restore", help="put a backup back (the daemon stopped)")
    p.add_argument("src", metavar="SRC", help="a file written by flowdeck backup")
    common.add_common(p)
    p.add_argument("--force", action="store_true", help="replace the database if it exists")
    p.set_defaults(fn=cmd_restore)


def _sqlite_path(args, what: str) -> Path:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from flowdeck.storage.db import resolve_url

    config = common.config(args) if getattr(args, "config", None) else None
    url = resolve_url(args.db, config.store.url if config else None)
    try:
        u = make_url(url)
    except ArgumentError:
        raise CliError(f"not a database URL: {url!r}", EXIT_USAGE) from None
    if u.get_backend_name() == "postgresql":
        raise CliError(PG_HINT if what == "backup" else PG_HINT.replace(
            "flowdeck backup copies", "flowdeck restore puts back"), EXIT_USAGE)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        raise CliError(f"{what} needs a SQLite file or PostgreSQL URL, not {url!r}", EXIT_USAGE)
    return Path(u.database).expanduser().resolve()


def _revision(path: Path) -> str | None:
    conn = sqlite3.connect(path, timeout=30)
    try:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.DatabaseError as exc:
        raise CliError(f"{path} is not a flowdeck database ({exc})") from None
    finally:
        conn.close()
    return row[0] if row else None


def _copy(src: Path, dest: Path) -> dict:
    """src -> dest.partial (one snapshot), checked and synced, renamed to dest."""
    tmp = dest.with_name(dest.name + ".partial")
    for p in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
        p.unlink(missing_ok=True)
    t0 = time.perf_counter()
    source = sqlite3.connect(src, timeout=30)  # reads only (read-only WAL needs its -shm)
    target = sqlite3.connect(tmp)
    try:
        source.backup(target)  # pages=-1: the whole database from one read transaction
        target.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        ok = target.execute("PRAGMA quick_check").fetchone()[0]
        try:  # the records the blocks hold (migration 0007); a table of rows before it
            records = target.execute(
                "SELECT coalesce(sum(n), 0) FROM record_blocks").fetchone()[0]
        except sqlite3.OperationalError:
            records = target.execute("SELECT count(*) FROM records").fetchone()[0]
    finally:
        target.close()
        source.close()
    if ok != "ok":
        tmp.unlink(missing_ok=True)
        raise CliError(f"the copy of {src} failed its check: {ok}")
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, dest)
    dfd = os.open(dest.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return {"seconds": time.perf_counter() - t0, "bytes": dest.stat().st_size,
            "records": records}


def cmd_backup(args) -> int:
    src = _sqlite_path(args, "backup")
    dest = Path(args.dest).expanduser().resolve()
    if not src.is_file():
        raise CliError(f"no database at {src}")
    if dest == src:
        raise CliError("the backup must go to another file than the database", EXIT_USAGE)
    if dest.exists() and not args.force:
        raise CliError(f"{dest} exists (--force replaces it)", EXIT_USAGE)
    if not dest.parent.is_dir():
        raise CliError(f"no such folder: {dest.parent}", EXIT_USAGE)
    rev = _revision(src)
    out = _copy(src, dest)
    print(f"backup of {src} at revision {rev}: {dest} ({out['bytes']} bytes, "
          f"{out['records']} records) in {out['seconds']:.2f}s")
    return EXIT_OK


def cmd_restore(args) -> int:
    from alembic.script import ScriptDirectory

    from flowdeck.storage.db import MIGRATIONS, head_revision

    src = Path(args.src).expanduser().resolve()
    if not src.is_file():
        raise CliError(f"no backup at {src}", EXIT_USAGE)
    target = _sqlite_path(args, "restore")
    rev = _revision(src)
    head = head_revision()
    known = {s.revision for s in ScriptDirectory(str(MIGRATIONS)).walk_revisions()}
    if rev is None or rev not in known:
        raise CliError(f"{src} is at schema revision {rev or 'none'}, which this flowdeck does "
                       f"not know (a newer flowdeck wrote it, or it is not a flowdeck backup); "
                       "refusing to restore it")
    if target == src:
        raise CliError("the backup is the database itself", EXIT_USAGE)
    if target.exists() and not args.force:
        raise CliError(f"{target} exists (stop the daemon; --force replaces it)", EXIT_USAGE)
    if not target.parent.is_dir():
        raise CliError(f"no such folder: {target.parent}", EXIT_USAGE)
    out = _copy(src, target)
    for p in (Path(f"{target}-wal"), Path(f"{target}-shm")):
        p.unlink(missing_ok=True)  # the old file's, not the restored one's
    note = "" if rev == head else f"; run flowdeck db upgrade to bring it from {rev} to {head}"
    print(f"restored {src} (revision {rev}) to {target}: {out['records']} records in "
          f"{out['seconds']:.2f}s{note}")
    return EXIT_OK
