"""The database locked or unreachable: fetched payloads are buffered, then committed in order.

Nothing fetched is lost, nothing is stored twice, and the outage shows as recovery
actions and a closed issue. SQLite: another connection holds BEGIN EXCLUSIVE.
PostgreSQL: the test's own database refuses connections and its sessions are ended.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from support.recovery import fast_config, fast_config_text, issues_of, sequence

from flowdeck.pipeline.demo.catalogue import NETWORKS
from flowdeck.pipeline.engine.engine import Engine
from flowdeck.storage.model import RawDraft
from flowdeck.storage.store import Store

STATIONS = set().union(*NETWORKS.values())


@contextlib.contextmanager
def sqlite_locked(path: Path):
    con = sqlite3.connect(path, isolation_level=None, timeout=5)
    con.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        con.execute("ROLLBACK")
        con.close()


@contextlib.contextmanager
def postgres_unavailable(url: str):
    name = url.rsplit("/", 1)[1]
    admin_url = url.rsplit("/", 1)[0] + "/test"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = :name AND pid <> pg_backend_pid()"),
                         {"name": name})
        yield
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin.dispose()


def assert_no_gap_no_duplicate(store: Store, flow: str = "weather") -> list[int]:
    rows = list(store.records_since(flow))
    pairs = [(r["key"], r["ts_ms"]) for r in rows]
    assert len(pairs) == len(set(pairs)), "a record is stored twice"
    minutes = sorted({ts for _, ts in pairs})
    assert minutes == list(range(minutes[0], minutes[-1] + 60_000, 60_000)), "a minute is missing"
    for m in minutes:
        assert {k for k, ts in pairs if ts == m} == STATIONS, f"stations missing at {m}"
    return minutes


async def outage_scenario(store: Store, clock, outage, spool_dir: Path) -> None:
    engine = Engine(fast_config(), store, clock=clock)
    engine.guard.spools["weather"].folder = spool_dir  # where the test can look
    await engine.start(schedule=False)
    try:
        for _ in range(2):
            assert (await engine.run_flow("weather")).status == "ok"
            clock.advance(60)
        before = assert_no_gap_no_duplicate(store)
        with outage():
            for _ in range(3):  # three minutes of new observations, fetched while it is away
                s = await engine.run_flow("weather")
                assert s.status == "partial" and s.buffered == 3
                assert "store unavailable" in s.error
                snap = engine.snapshot()["flows"]["weather"]
                assert snap["state"] == "degraded" and snap["store"]["available"] is False
                clock.advance(60)
            assert len(list(spool_dir.glob("*.spool"))) == 9  # on disk: a crash keeps them
        s = await engine.run_flow("weather")
        assert s.status == "ok" and s.buffered == 0
        snap = engine.snapshot()["flows"]["weather"]
        errors = snap["store"].pop("write_errors")  # locked (SQLite), unavailable (PostgreSQL)
        assert sum(errors.values()) == 3 and set(errors) <= {"locked", "unavailable"}
        assert snap["store"] == {"available": True, "down_since_ms": None, "buffered": 0,
                                 "buffered_bytes": 0, "dropped": 0, "reason": None,
                                 "error": None, "spool_refused": None, "outage": None,
                                 "fetches_paused": 0}
    finally:
        await engine.stop()
    assert not list(spool_dir.glob("*.spool"))
    after = assert_no_gap_no_duplicate(store)
    assert after[-1] - before[-1] == 4 * 60_000  # the outage's minutes are all there
    names = [a for a, _, _ in sequence(store)]
    assert names.count("store_unavailable") == 1 and names.count("store_recovered") == 1
    assert names.index("store_unavailable") < names.index("store_recovered")
    recovered = next(a for a in store.actions("weather") if a["action"] == "store_recovered")
    assert "9 buffered payload(s) committed" in recovered["reason"]
    closed = issues_of(store, "store_unavailable", "weather")
    assert len(closed) == 1 and closed[0]["state"] == "resolved"
    # The runs during the outage are on record too, written when the store came back.
    runs = sorted(store.recent_runs("weather"), key=lambda r: r["started_ms"])
    statuses = [r["status"] for r in runs]
    assert statuses == ["ok", "ok", "partial", "partial", "partial", "ok"]


async def test_sqlite_locked_payloads_are_buffered_and_committed(tmp_path, clock):
    path = tmp_path / "flowdeck.db"
    store = Store(f"sqlite:///{path}", busy_timeout=0.2)
    try:
        await outage_scenario(store, clock, lambda: sqlite_locked(path), tmp_path / "spool")
    finally:
        store.close()


async def test_postgres_unavailable_payloads_are_buffered_and_committed(pg_url, tmp_path, clock):
    store = Store(pg_url)
    try:
        await outage_scenario(store, clock, lambda: postgres_unavailable(pg_url),
                              tmp_path / "spool")
    finally:
        store.close()


async def test_buffered_payloads_survive_a_restart(tmp_path, clock):
    path = tmp_path / "flowdeck.db"
    store = Store(f"sqlite:///{path}", busy_timeout=0.2)
    try:
        engine = Engine(fast_config(), store, clock=clock)
        await engine.start(schedule=False)
        try:
            await engine.run_flow("weather")
            clock.advance(60)
            with sqlite_locked(path):
                assert (await engine.run_flow("weather")).buffered == 3
        finally:
            await engine.stop()  # as good as a crash: the buffer is only on disk now
        spooled = list(Path(f"{path}.spool", "weather").glob("*.spool"))
        assert len(spooled) == 3
        again = Engine(fast_config(), store, clock=clock)
        await again.start(schedule=False)  # resumes: commits and processes the spool
        await again.stop()
        assert not list(Path(f"{path}.spool", "weather").glob("*.spool"))
        minutes = assert_no_gap_no_duplicate(store)
        assert len(minutes) == 6  # five minutes per poll, one poll a minute later
    finally:
        store.close()


def test_a_full_spool_refuses_and_counts(tmp_path):
    from flowdeck.pipeline.engine.spool import RawSpool

    spool = RawSpool(tmp_path / "s", max_bytes=1000)
    assert spool.add(RawDraft("a", b"x" * 400, 1))
    assert not spool.add(RawDraft("a", b"y" * 700, 2))
    assert spool.dropped == 1 and len(spool) == 1
    reopened = RawSpool(tmp_path / "s", max_bytes=1000)  # what a restart finds
    (entry,) = reopened.entries()
    assert entry.body == b"x" * 400 and entry.fetched_ms == 1 and entry.source == "a"
    assert reopened.add(RawDraft("a", b"z", 3))
    assert [e.spool_seq for e in reopened.entries()] == [1, 2]


def test_a_spool_file_in_the_format_of_before_is_read(tmp_path):
    """The on-disk format is one JSON header line, a newline, the body: a file an older
    flowdeck left behind (written by hand here, byte for byte) is read and removed."""
    from flowdeck.pipeline.engine.spool import RawSpool

    folder = tmp_path / "s"
    folder.mkdir()
    body = b'{"station": "A", "t": 1}'
    header = {"source": "metnet", "fetched_ms": 1795521600000,
              "content_type": "application/json", "status_code": 200, "truncated": False,
              "size": len(body)}
    (folder / "000000000007.spool").write_bytes(json.dumps(header).encode() + b"\n" + body)
    spool = RawSpool(folder, max_bytes=10_000)
    assert len(spool) == 1 and spool.bytes == len(json.dumps(header)) + 1 + len(body)
    (entry,) = spool.entries()
    assert (entry.source, entry.body, entry.fetched_ms, entry.content_type,
            entry.status_code, entry.truncated, entry.spool_seq) == (
        "metnet", body, 1795521600000, "application/json", 200, False, 7)
    assert spool.add(RawDraft("metnet", b"[]", 2, "application/json", 200))
    again = RawSpool(folder, max_bytes=10_000).entries()
    assert [(e.spool_seq, e.body) for e in again] == [(7, body), (8, b"[]")]
    head = (folder / "000000000008.spool").read_bytes().partition(b"\n")[0]
    assert json.loads(head) == {"source": "metnet", "fetched_ms": 2,
                                "content_type": "application/json", "status_code": 200,
                                "truncated": False, "size": 2}
    spool.remove(entry)
    assert not (folder / "000000000007.spool").exists() and len(spool) == 1


@pytest.fixture(autouse=True)
def _isolate_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a PostgreSQL spool defaults to ./flowdeck-spool


RETRY_FLOW = """
store: {{retry: 200ms, busy_timeout: 200ms}}
flows:
  meters:
    schedule: {{cron: "0 0 1 1 *"}}
    key: id
    sources:
      - {{name: dump, kind: file, path: {path}, format: jsonl,
          fields: {{id: id, ts: ts, value: value}}, timestamp: {{format: epoch_ms}}}}
    fields:
      id: {{type: str, required: true}}
      value: {{type: float}}
"""


async def test_the_retry_timer_commits_the_buffer_without_waiting_for_a_run(tmp_path):
    import asyncio
    import json
    import time

    from flowdeck.pipeline.config import parse_config

    data = tmp_path / "meters.jsonl"
    data.write_text(json.dumps({"id": "m1", "ts": int(time.time() * 1000), "value": 1}) + "\n")
    cfg = parse_config(RETRY_FLOW.format(path=data), str(tmp_path / "flow.yaml"))
    path = tmp_path / "flowdeck.db"
    store = Store(f"sqlite:///{path}", busy_timeout=cfg.store.busy_timeout)
    engine = Engine(cfg, store)
    try:
        await engine.start(schedule=True)
        for _ in range(100):  # the first scheduled run, at start
            if engine.flows["meters"].runs:
                break
            await asyncio.sleep(0.05)
        data.write_text(json.dumps({"id": "m2", "ts": int(time.time() * 1000), "value": 2}) + "\n")
        with sqlite_locked(path):
            assert (await engine.run_flow("meters")).buffered == 1
        # No run is due for a year: the retry timer commits and processes the buffer.
        for _ in range(100):
            if store.count("records", flow="meters") == 2:
                break
            await asyncio.sleep(0.1)
        assert store.count("records", flow="meters") == 2
        assert len(engine.guard.spools["meters"]) == 0
        assert "store_recovered" in [a for a, _, _ in sequence(store, "meters")]
    finally:
        await engine.stop()
        store.close()


@pytest.mark.postgres
async def test_the_snapshot_keeps_its_last_picture_while_the_store_is_away(pg_url, clock,
                                                                         tmp_path):
    from flowdeck.pipeline.serve.control import LocalControl

    store = Store(pg_url)
    engine = Engine(fast_config(), store, clock=clock)
    engine.guard.spools["weather"].folder = tmp_path / "spool"
    await engine.start(schedule=False)
    control = LocalControl(engine)
    try:
        await engine.run_flow("weather")
        before = await control.snapshot()
        assert before["store_error"] is None and before["latest"]["weather"]
        await engine.caches.purge(layer="l1")  # so the next read has to reach the database
        with postgres_unavailable(pg_url):
            during = await control.snapshot()
        assert "OperationalError" in during["store_error"]
        assert during["latest"]["weather"] == before["latest"]["weather"]
        assert during["runs"] == before["runs"] and during["issues"] == before["issues"]
        after = await control.snapshot()
        assert after["store_error"] is None
    finally:
        await engine.stop()
        store.close()


async def test_values_shown_before_a_failed_series_write_are_stored_and_completed_later(
        tmp_path, clock):
    """A run's values reach viewers once its records are committed, before its series: a
    viewer is never shown a value the store does not have, and a failure after that
    leaves the payloads unprocessed, so the next start completes the run once. Each run
    writes its own series here (derived_delay 0); written for many runs at once, the same
    failure is in test_deferred_series.py."""
    db = tmp_path / "flowdeck.db"
    store = Store(f"sqlite:///{db}")
    config = fast_config(fast_config_text() + "store: {derived_delay: 0}\n")
    engine = Engine(config, store, clock=clock)
    shown = engine.hub.subscribe(types={"records"})
    await engine.start(schedule=False)
    try:
        assert (await engine.run_flow("weather")).status == "ok"
        clock.advance(60)
        shown.drain()
        con = sqlite3.connect(db)
        con.execute("CREATE TRIGGER refuse_series BEFORE INSERT ON series_1m "
                    "BEGIN SELECT RAISE(ABORT, 'series refused'); END")
        con.commit()
        s = await engine.run_flow("weather")
        assert s.status == "failed" and "series refused" in s.error
    finally:
        await engine.stop()
    rows = [r for ev in shown.drain() for r in ev.data["latest"]]
    assert rows, "the run's values were published"
    latest = {r["key"]: r for r in store.latest("weather")}
    for r in rows:  # every value shown is stored
        assert latest[r["key"]]["ts_ms"] == r["ts_ms"]
        assert latest[r["key"]]["data"] == r["data"]
    key, ts = rows[0]["key"], rows[0]["ts_ms"]
    minute = ts - ts % 60_000
    # its point is its record's value (stored); its roll-up is what failed
    assert ts in dict(store.history("weather", key, "temperature"))
    assert minute not in dict(store.history("weather", key, "temperature", step_ms=60_000))
    assert store.pending_raw("weather"), "the payloads wait to be processed again"

    con.execute("DROP TRIGGER refuse_series")
    con.commit()
    con.close()
    engine = Engine(config, store, clock=clock)
    await engine.start(schedule=False)  # resumes what was committed and not processed
    await engine.stop()
    assert not store.pending_raw("weather")
    assert ts in dict(store.history("weather", key, "temperature"))
    assert minute in dict(store.history("weather", key, "temperature", step_ms=60_000))
    assert_no_gap_no_duplicate(store)
    store.close()
