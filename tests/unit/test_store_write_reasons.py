"""Why a store write failed, as the metric label and /readyz reason say it: real errors
from a real SQLite (``PRAGMA max_page_count`` makes SQLite answer SQLITE_FULL, "database
or disk is full", as a full disk does) and real OS errors."""

from __future__ import annotations

import errno
import sqlite3

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from flowdeck.pipeline.engine.guard import file_size_limit_hit, write_error_reason
from flowdeck.pipeline.engine.spool import RawSpool
from flowdeck.storage.model import RawDraft


def test_sqlite_full_is_disk_full(tmp_path):
    eng = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with eng.begin() as conn:
        conn.execute(text("CREATE TABLE t (b BLOB)"))
    with pytest.raises(OperationalError) as info, eng.begin() as conn:
        conn.execute(text("PRAGMA max_page_count = 3"))
        for _ in range(100):
            conn.execute(text("INSERT INTO t VALUES (randomblob(4000))"))
    eng.dispose()
    assert "database or disk is full" in str(info.value)
    assert write_error_reason(info.value) == "disk_full"


def test_sqlite_locked_is_locked(tmp_path):
    path = tmp_path / "x.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (a)")
    holder.execute("BEGIN EXCLUSIVE")
    eng = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.05})
    try:
        with pytest.raises(OperationalError) as info, eng.begin() as conn:
            conn.execute(text("INSERT INTO t VALUES (1)"))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        eng.dispose()
    assert write_error_reason(info.value) == "locked"


@pytest.mark.parametrize(("code", "reason"), [(errno.ENOSPC, "disk_full"),
                                              (errno.EDQUOT, "disk_full"),
                                              (errno.EIO, "io_error"),
                                              (errno.EFBIG, "disk_full"),
                                              (errno.ECONNREFUSED, "unavailable")])
def test_os_errors(code, reason):
    assert write_error_reason(OSError(code, "x")) == reason


def test_the_spool_says_its_bound_refused(tmp_path):
    spool = RawSpool(tmp_path / "s", max_bytes=1000)
    assert spool.add(RawDraft("a", b"x" * 400, 1)) and spool.refused is None
    assert not spool.add(RawDraft("a", b"y" * 700, 2))
    assert spool.refused == "spool_max" and not spool.can_take()
    (entry,) = spool.entries()
    spool.remove(entry)  # committed once the store answered: room again
    assert spool.can_take()
    assert spool.add(RawDraft("a", b"y" * 700, 3)) and spool.refused is None


# A child with a small RLIMIT_FSIZE (SIGXFSZ ignored, so writes fail with EFBIG) fills a
# SQLite file in WAL mode, then says what the guard would.
_CHILD = """
import os, resource, signal, sqlite3, sys
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError
from flowdeck.pipeline.engine.guard import file_size_limit_hit, write_error_reason
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, resource.RLIM_INFINITY))
db = sys.argv[1]
eng = create_engine("sqlite:///" + db)
with eng.begin() as conn:
    conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    conn.execute(text("CREATE TABLE t (b BLOB)"))
try:
    for _ in range(1000):
        with eng.begin() as conn:
            conn.execute(text("INSERT INTO t VALUES (randomblob(4000))"))
    print("no error")
except OperationalError as exc:
    print(str(exc.orig))
    print(write_error_reason(exc))
    print(file_size_limit_hit([db, db + "-wal"]))
try:
    open(db + ".big", "wb").write(b"x" * 400_000)
except OSError as exc:
    print(write_error_reason(exc))
"""


def test_past_the_file_size_limit_sqlite_says_io_error_and_the_guard_says_disk_full(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "x.db")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    error, reason, hit, efbig = out.stdout.splitlines()
    assert error == "disk I/O error"  # SQLITE_IOERR_WRITE: no word of the limit
    assert reason == "io_error"
    assert "at the file size limit (RLIMIT_FSIZE 300000 bytes)" in hit
    assert efbig == "disk_full"
    assert file_size_limit_hit([tmp_path / "x.db"]) is None  # this process has no limit


def test_the_spool_refuses_a_payload_past_the_file_size_limit_as_a_full_disk(tmp_path):
    import subprocess
    import sys

    child = (
        "import resource, signal, sys\n"
        "from pathlib import Path\n"
        "from flowdeck.pipeline.engine.spool import RawSpool\n"
        "from flowdeck.storage.model import RawDraft\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.RLIM_INFINITY))\n"
        "s = RawSpool(Path(sys.argv[1]), max_bytes=10**9)\n"
        "print(s.add(RawDraft('a', b'x' * 50_000, 1)))\n"
        "print(s.add(RawDraft('a', b'y' * 200_000, 2)), s.refused, s.refused_error)\n"
        "print(s.can_take(), len(s), [p.name for p in Path(sys.argv[1]).iterdir()])\n")
    out = subprocess.run([sys.executable, "-c", child, str(tmp_path / "spool")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    kept, refused, after = out.stdout.splitlines()
    assert kept == "True"
    assert refused == "False disk_full File too large (RLIMIT_FSIZE 100000 bytes)"
    assert after == "False 1 ['000000000001.spool']"  # no .tmp left behind
