"""Why a store write failed, as the metric label and /readyz reason say it: real errors
from a real SQLite (``PRAGMA max_page_count`` makes SQLite answer SQLITE_FULL, "database
or disk is full", as a full disk does) and real OS errors."""

from __future__ import annotations

import errno
import sqlite3

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from flowdeck.pipeline.engine.guard import write_error_reason
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
                                              (errno.EFBIG, "io_error"),
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
