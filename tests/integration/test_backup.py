"""flowdeck backup while a writer commits, restore into a new file, every record there;
unknown schema revisions and PostgreSQL refused with a clear line."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from flowdeck.console.cli import main
from flowdeck.storage.db import head_revision
from flowdeck.storage.model import BatchWrite
from flowdeck.storage.store import Store

T = 1_795_521_600_000


def rec(i: int) -> dict:
    return {"flow": "fx", "key": f"K{i % 50}", "ts_ms": T + i * 1000, "data": {"v": i},
            "quality": 1.0, "anomaly_score": 0.0, "anomalous": False, "flags": [],
            "sources": ["q"], "contributions": {}, "raw_ids": [], "version_id": None,
            "updated_ms": T}


class Writer(threading.Thread):
    """Commits batches of 20 records until stopped; ``committed`` is what returned."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.store = Store(url)
        self.stop = threading.Event()
        self.committed = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                n = self.committed
                self.store.write_batch(BatchWrite("fx", records=[rec(n + j) for j in range(20)]),
                                       T)
                self.committed = n + 20
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.store.close()


def keys_in(path) -> set[int]:
    conn = sqlite3.connect(path)
    try:
        return {(ts - T) // 1000 for (ts,) in conn.execute("SELECT ts_ms FROM records")}
    finally:
        conn.close()


def test_backup_while_writing_then_restore_has_every_committed_record(tmp_path, capsys):
    db = tmp_path / "live.db"
    url = f"sqlite:///{db}"
    Store(url).close()
    writer = Writer(url)
    writer.start()
    try:
        while writer.committed < 2000 and writer.error is None:
            threading.Event().wait(0.01)
        before = writer.committed  # committed before the backup began: all must be in it
        assert main(["backup", str(tmp_path / "b1.db"), "--db", url]) == 0
        after_first = writer.committed
        assert main(["backup", str(tmp_path / "b2.db"), "--db", url]) == 0
    finally:
        writer.stop.set()
        writer.join(timeout=30)
    assert writer.error is None
    assert writer.committed > after_first > before  # the writer went on during the backups
    out = capsys.readouterr().out
    assert f"at revision {head_revision()}" in out
    b1 = keys_in(tmp_path / "b1.db")
    assert set(range(before)) <= b1  # nothing committed before it is missing
    assert b1 == set(range(len(b1)))  # a consistent cut: whole batches, no gap
    assert len(b1) % 20 == 0

    restored = tmp_path / "restored.db"
    assert main(["restore", str(tmp_path / "b2.db"), "--db", f"sqlite:///{restored}"]) == 0
    store = Store(f"sqlite:///{restored}", create_if_empty=False)  # the schema check passes
    try:
        assert store.count("records") == len(keys_in(tmp_path / "b2.db")) >= after_first
    finally:
        store.close()
    assert "restored" in capsys.readouterr().out
    # an existing database is not replaced unless told to
    assert main(["restore", str(tmp_path / "b1.db"), "--db", f"sqlite:///{restored}"]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["restore", str(tmp_path / "b1.db"), "--db", f"sqlite:///{restored}",
                 "--force"]) == 0
    assert keys_in(restored) == b1


def test_a_backup_of_an_unknown_revision_is_refused(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'a.db'}"
    Store(url).close()
    assert main(["backup", str(tmp_path / "b.db"), "--db", url]) == 0
    conn = sqlite3.connect(tmp_path / "b.db")
    conn.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    conn.commit()
    conn.close()
    capsys.readouterr()
    rc = main(["restore", str(tmp_path / "b.db"), "--db", f"sqlite:///{tmp_path / 'new.db'}"])
    err = capsys.readouterr().err
    assert rc == 1 and "revision 9999_from_the_future, which this flowdeck does not know" in err
    assert not (tmp_path / "new.db").exists()
    (tmp_path / "junk.db").write_bytes(b"not a database at all" * 100)
    rc = main(["restore", str(tmp_path / "junk.db"), "--db", f"sqlite:///{tmp_path / 'n.db'}"])
    assert rc == 1 and "not a flowdeck database" in capsys.readouterr().err


@pytest.mark.parametrize("cmd", ["backup", "restore"])
def test_postgresql_is_refused_with_its_own_tools(tmp_path, capsys, cmd):
    (tmp_path / "x.db").write_bytes(b"")
    rc = main([cmd, str(tmp_path / "x.db"), "--db", "postgresql://postgres@127.0.0.1/test"])
    err = capsys.readouterr().err
    assert rc == 2 and "pg_dump -Fc" in err and "pg_basebackup" in err
