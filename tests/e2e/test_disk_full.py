"""Disk full (issue 15, item 3, in part): the SQLite file and its spool on a 3 MB tmpfs
that fills up mid-run, under a real `flowdeck daemon`.

What is checked here: the daemon says so while it lasts (its log at once, flow states
degraded, ``/readyz`` 503 with ``store_unavailable: disk full``, ``flowdeck_store_up`` 0 and
``flowdeck_store_write_errors_total{reason="disk_full"}`` on ``/metrics``, the held
``store_unavailable`` action in the flows' store state), no run dies with a traceback (two
were found this way: the spool's ENOSPC escaping the run, and two flows flushing the held
writes at once), and when space returns it recovers by itself (``/readyz`` 200 again,
``store_recovered``, the held action and issue rows written, new records stored).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sqlite3
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from support.crashes import MINUTE, Proc, compare, http_json, write_config
from support.disk import small_tmpfs


@pytest.fixture
def small_disk(tmp_path):
    with small_tmpfs(tmp_path, "3m") as mnt:
        yield mnt


def _actions(url: str) -> list[str]:
    return [a["action"] for a in http_json(url + "/api/actions?limit=200")[1].get("actions", [])]


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _ready(url: str) -> tuple[int, dict]:
    code, body = _get(url + "/readyz")
    return code, json.loads(body or b"{}")


def _metric(url: str, name: str) -> float | None:
    for line in _get(url + "/metrics")[1].decode().splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def _records_since(db: Path, ms: int) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute("SELECT count(*) FROM records WHERE updated_ms > ?",
                            (ms,)).fetchone()[0]
    finally:
        conn.close()


def _wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout}s")
        time.sleep(0.25)


def test_a_full_disk_is_said_survived_and_recovered_from(tmp_path, small_disk):
    db = small_disk / "full.db"
    log = tmp_path / "daemon.log"
    d = Proc(write_config(tmp_path), db, log=log)
    try:
        assert d.ready() is not None, log.read_text()
        d.wait_success_after(int(time.time() * 1000))
        st = os.statvfs(small_disk)
        filler = small_disk / "filler"
        filler.write_bytes(b"\0" * max(0, st.f_bavail * st.f_frsize - 200_000))
        # The daemon says so at once in its log and flow states; the action and issue
        # rows are bookkeeping writes, held until the store takes writes again.
        _wait(lambda: "store unavailable (disk_full): database or disk is full"
              in log.read_text(), 120,
              "the daemon never said the disk was full")
        _wait(lambda: any(f.get("state") in ("degraded", "failing")
                          for f in d.flows().values()), 60, "no flow shown degraded")
        # Not ready while writes fail, though reads still answer; the reason is given.
        _wait(lambda: _ready(d.url)[0] == 503, 60, "/readyz not 503 on a full disk")
        code, body = _ready(d.url)
        assert body["reason"] == "store_unavailable: disk full", body
        assert body["store_outage"]["reason"] == "disk_full"
        assert _metric(d.url, "flowdeck_store_up") == 0
        assert _metric(d.url, 'flowdeck_store_write_errors_total{reason="disk_full"}') >= 1
        # The outage in the engine's state now, before its rows can be written.
        _wait(lambda: any((f.get("store") or {}).get("outage") for f in d.flows().values()),
              60, "no flow shows the held store_unavailable action")
        outage = next(f["store"]["outage"] for f in d.flows().values()
                      if (f.get("store") or {}).get("outage"))
        assert outage["action"]["action"] == "store_unavailable"
        assert "disk is full" in outage["action"]["reason"]
        assert "store_unavailable" not in _actions(d.url)  # its row waits for the store
        time.sleep(3)  # a few runs against the full disk
        filler.unlink()
        freed_ms = int(time.time() * 1000)
        _wait(lambda: "store_recovered" in _actions(d.url), 120,
              "no store_recovered action after space returned")
        d.wait_success_after(freed_ms + 1000)
        _wait(lambda: _ready(d.url)[0] == 200, 60, "/readyz not 200 after recovery")
        assert _metric(d.url, "flowdeck_store_up") == 1
        assert "store_unavailable" in _actions(d.url)
        issues = http_json(d.url + "/api/issues?state=all&limit=1000")[1]["issues"]
        assert any(i["kind"] == "store_unavailable" for i in issues)
        # New data (a new minute of it) is stored again.
        _wait(lambda: _records_since(db, freed_ms) > 0, 150,
              "no record stored after space returned")
    finally:
        code = d.stop()
    assert code == 0
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    assert "disk is full" in text
    assert not list(Path(small_disk).glob("full.db.spool/*/*.tmp"))


def _file_size_limit(limit: int):
    """A child's preexec_fn: RLIMIT_FSIZE, and SIGXFSZ ignored so a write past it fails
    with EFBIG instead of killing the process."""
    def pre() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    return pre


def test_a_file_size_limit_is_said_as_a_full_disk_and_loses_nothing(tmp_path):
    """The daemon started under RLIMIT_FSIZE a little above its database's size: once the
    file reaches it, SQLite's writes fail (EFBIG, which SQLite reports as a disk I/O
    error), and the daemon says so as for a full disk, spools what it fetches (each spool
    file is far below the limit), and after a restart without the limit the store holds
    what a daemon that never met the limit stored, minute for minute."""
    config = write_config(tmp_path)
    clean_db, db = tmp_path / "clean.db", tmp_path / "crash.db"
    clean = Proc(config, clean_db, log=tmp_path / "clean.log")
    try:
        assert clean.ready() is not None
        first_ms = int(time.time() * 1000)
        d0 = Proc(config, db, log=tmp_path / "first.log")  # the schema and a first run
        assert d0.ready() is not None
        d0.wait_success_after(int(time.time() * 1000))
        assert d0.stop() == 0
        limit = db.stat().st_size + 96 * 1024
        log = tmp_path / "limited.log"
        d = Proc(config, db, log=log, preexec_fn=_file_size_limit(limit))
        try:
            assert d.ready() is not None, log.read_text()
            _wait(lambda: "store unavailable (disk_full)" in log.read_text(), 240,
                  "the daemon never said the file size limit was reached")
            outage_ms = int(time.time() * 1000)
            assert f"at the file size limit (RLIMIT_FSIZE {limit} bytes)" in log.read_text()
            _wait(lambda: _ready(d.url)[0] == 503, 60, "/readyz not 503 at the size limit")
            code, body = _ready(d.url)
            assert body["reason"] == "store_unavailable: disk full", body
            assert _metric(d.url, "flowdeck_store_up") == 0
            assert _metric(d.url, 'flowdeck_store_write_errors_total{reason="disk_full"}') >= 1
            outage = next(f["store"]["outage"] for f in d.flows().values()
                          if (f.get("store") or {}).get("outage"))
            assert "RLIMIT_FSIZE" in outage["action"]["reason"]
            # Fetching goes on into the spool (files far below the limit) for over a
            # minute, so new minutes of data are fetched while the store takes nothing.
            time.sleep(75)
            spooled = list((tmp_path / "crash.db.spool").glob("*/*.spool"))
            assert spooled, "nothing was spooled while the store took no writes"
            assert _ready(d.url)[0] == 503
        finally:
            assert d.stop() == 0
        text = log.read_text()
        assert "Traceback" not in text, text[-3000:]
        assert "dropped" not in text, text[-3000:]
        # Without the limit, the spool is committed and processed; nothing is missing.
        again = Proc(config, db, log=tmp_path / "after.log")
        assert again.ready() is not None
        mark = int(time.time() * 1000) + 500
        again.wait_success_after(mark)
        _wait(lambda: not list((tmp_path / "crash.db.spool").glob("*/*.spool")), 120,
              "the spool was never committed")
        # Compared below: minutes both have fully seen, which end three minutes before the
        # last poll (the slowest source serves two minutes behind): past the outage's.
        time.sleep(max(0.0, outage_ms / 1000 + 4 * 60 - time.time()))
        mark = int(time.time() * 1000)
        again.wait_success_after(mark)
        clean.wait_success_after(mark)
        last_ms = mark
        assert again.stop() == 0
    finally:
        clean.stop()
    lo = (first_ms // MINUTE) * MINUTE - 3 * MINUTE
    hi = (last_ms // MINUTE) * MINUTE - 3 * MINUTE
    compared, problems = compare(clean_db, db, tmp_path, lo, hi)
    print("file size limit", limit, "spooled", len(spooled), compared)
    assert not problems, "\n".join(problems)
    assert compared["records"] > 0 and hi > outage_ms  # the outage's minutes are compared
    assert compared["lost"] == 0 and compared["duplicated"] == 0
