"""Retention on SQLite and PostgreSQL with an injected clock: old rows go in small steps,
what open issues, kept records' lineage and unprocessed payloads need stays, roll-ups
stay exact, space is given back, and the statistics say so."""

from __future__ import annotations

import asyncio
import os
import sqlite3

from sqlalchemy import delete, select

from flowdeck.pipeline.config import parse_config
from flowdeck.pipeline.core.clock import ManualClock
from flowdeck.pipeline.engine.retention import RetentionJob
from flowdeck.storage import schema as s
from flowdeck.storage.db import sqlite_file
from flowdeck.storage.model import BatchWrite, IssueDraft, QuarantineRow

T = 1_795_521_600_000  # 2026-11-24T12:00:00Z, a whole hour
MIN, HOUR, DAY = 60_000, 3_600_000, 86_400_000
NOW = T + 40 * DAY

CONFIG = """
flows:
  fx:
    key: pair
    sources:
      - {name: q, kind: file, path: "/nonexistent/*.json", fields: {pair: p, ts: t}}
    fields:
      pair: {type: str}
      rate: {type: float}
  kept:
    key: pair
    retention: {keep_forever: [records]}
    sources:
      - {name: q, kind: file, path: "/nonexistent/*.json", fields: {pair: p, ts: t}}
    fields:
      pair: {type: str}
      rate: {type: float}
retention:
  issues_resolved: 30d
  actions: 30d
  runs: 30d
  batch: 3
"""


def rec(flow: str, key: str, ts: int, raw_id: int, rate: float = 1.0) -> dict:
    return {"flow": flow, "key": key, "ts_ms": ts, "data": {"pair": key, "rate": rate},
            "quality": 1.0, "anomaly_score": 0.0, "anomalous": False, "flags": [],
            "sources": ["q"], "contributions": {}, "raw_ids": [raw_id], "version_id": None,
            "updated_ms": ts}


def status(raw_id: int, ts: int) -> dict:
    return {"raw_id": raw_id, "outcome": "ok", "processed_ms": ts, "version_id": None,
            "records_in": 1, "records_out": 1}


def payload(store, body: bytes, ts: int, flow: str = "fx") -> int:
    return store.insert_raw(flow, "q", body, ts)[0]


def fill(store) -> dict:
    """40 days of history in miniature: old rows at T, recent ones a day before NOW."""
    ids = {}
    ids["old"] = payload(store, b"old", T)
    ids["issue"] = payload(store, b"named by an open issue", T)
    ids["pending"] = payload(store, b"never processed", T)
    ids["quarantined"] = payload(store, b"quarantined", T)
    ids["recent"] = payload(store, b"recent", NOW - DAY)
    ids["kept_flow"] = payload(store, b"kept flow", T, flow="kept")
    # A's series: two hours of points, a record each (a point is its record's value)
    old_series = [("fx", "A", "rate", T + i * MIN, float(i)) for i in range(120)]
    store.write_batch(BatchWrite(
        "fx", records=[rec("fx", "A", T + i * MIN, ids["old"], float(i)) for i in range(120)]
        + [rec("fx", "B", T, ids["issue"]), rec("fx", "C", T + MIN, ids["old"])],
        series=old_series, raw_status=[status(ids["old"], T), status(ids["issue"], T),
                                       status(ids["quarantined"], T)],
        quarantine=[QuarantineRow("fx", "q", ids["quarantined"], 0, "validate", "invalid",
                                  "rate: not a number")],
        issues=[IssueDraft("fx", "conflict", "warning", "B disagrees", "conflict:fx:B",
                           key="B", record_keys=[("B", T)], raw_ids=[ids["issue"]]),
                IssueDraft("fx", "anomaly", "info", "over", "anomaly:fx:A", key="A")]), T)
    store.write_batch(BatchWrite(
        "fx", records=[rec("fx", "A", NOW - DAY, ids["recent"], 5.0)],
        series=[("fx", "A", "rate", NOW - DAY, 5.0)],
        raw_status=[status(ids["recent"], NOW - DAY)]), NOW - DAY)
    store.write_batch(BatchWrite("kept", records=[rec("kept", "K", T, ids["kept_flow"])],
                                 raw_status=[status(ids["kept_flow"], T)]), T)
    (resolved,) = [i for i in store.issues(flow="fx") if i["fingerprint"] == "anomaly:fx:A"]
    store.set_issue_state(resolved["id"], "resolved", "op", T)
    for i in range(5):
        store.add_action(ts_ms=T + i, action="retry", actor="auto", reason="r", outcome="ok",
                         flow="fx")
    store.add_action(ts_ms=NOW - DAY, action="retry", actor="auto", reason="r", outcome="ok",
                     flow="fx")
    run = store.start_run("fx", "schedule", T)
    store.finish_run(run, "ok", {}, T + 100)
    store.start_run("fx", "schedule", T + 200)  # still running: stays
    return ids


def rows(store, table, *cols, **where):
    """Rows of ``table``; a series or roll-up table's flow, key and metric are its series'
    (series_keys), as the store names them."""
    k = s.series_keys
    names = ("flow", "key", "metric")

    def col(c):
        return k.c[c] if "sid" in table.c and c in names else table.c[c]

    q = select(*[col(c) for c in cols])
    if "sid" in table.c:
        q = q.select_from(table.join(k, k.c.id == table.c.sid))
    for c, v in where.items():
        q = q.where(col(c) == v)
    with store.engine.connect() as conn:
        return sorted(tuple(r) for r in conn.execute(q))


def job_for(store, clock) -> RetentionJob:
    config = parse_config(CONFIG)

    async def run_db(fn, *args):
        return await asyncio.to_thread(fn, *args)

    recorded = []

    async def record(flow, action, **kw):
        recorded.append((action, kw))
        store.add_action(ts_ms=clock.now_ms(), action=action, actor="auto", reason=kw["reason"],
                         outcome=kw["outcome"], flow=flow, detail=kw.get("detail"))

    job = RetentionJob(config, store, clock, run_db, record)
    job.recorded = recorded  # type: ignore[attr-defined]
    return job


async def test_a_pass_deletes_old_rows_and_keeps_what_is_still_needed(store):
    ids = fill(store)
    rollups_before = (rows(store, s.series_1m, "key", "bucket_ms", "n", "sum", "min", "max"),
                      rows(store, s.series_1h, "key", "bucket_ms", "n", "sum", "min", "max"))
    # one minute whose roll-up is missing: its points must wait for it
    with store.engine.begin() as conn:
        conn.execute(delete(s.series_1m).where(s.series_1m.c.bucket_ms == T + 5 * MIN))
    clock = ManualClock(NOW / 1000)
    job = job_for(store, clock)
    result = await job.run_pass()

    assert result["error"] is None
    # records, and with them their series points: 30 days; the one an open issue names
    # stays, and the one whose point's minute has no roll-up; a flow keeping records
    # forever too
    assert rows(store, s.records, "flow", "key", "ts_ms") == [
        ("fx", "A", T + 5 * MIN), ("fx", "A", NOW - DAY), ("fx", "B", T), ("kept", "K", T)]
    assert store.history("fx", "A", "rate") == [(T + 5 * MIN, 5.0), (NOW - DAY, 5.0)]
    # roll-ups themselves untouched
    assert rows(store, s.series_1h, "key", "bucket_ms", "n", "sum", "min", "max")[:2] == \
        rollups_before[1][:2]
    assert rows(store, s.series_1m, "key", "bucket_ms", "n", "sum", "min", "max") == [
        r for r in rollups_before[0] if r[1] != T + 5 * MIN]
    # raw: unprocessed, issue-named and recent stay; the quarantined one went after its item
    assert rows(store, s.raw_payloads, "id") == sorted(
        [(ids["issue"],), (ids["pending"],), (ids["recent"],), (ids["kept_flow"],)])
    assert rows(store, s.raw_status, "raw_id") == sorted(
        [(ids["issue"],), (ids["recent"],), (ids["kept_flow"],)])
    assert rows(store, s.quarantine, "id") == []
    assert [i["state"] for i in store.issues(flow="fx")] == ["open"]
    assert [a["ts_ms"] for a in store.actions("fx")] == [NOW - DAY]
    assert rows(store, s.runs, "started_ms") == [(T + 200,)]
    assert result["deleted"] == {"records": 120, "raw": 2, "quarantine": 1,
                                 "issues_resolved": 1, "actions": 5, "runs": 1}
    assert result["steps"] > 40  # batch: 3 -> many short transactions, not one long one
    # the pass is recorded as a recovery action, and the statistics follow it
    (action, kw), = job.recorded
    assert action == "retention" and kw["outcome"] == "ok" and "120 records" in kw["reason"]
    snap = job.snapshot()
    assert snap["last_pass"] == result
    assert snap["tables"]["records"] == {"rows": 4, "oldest_ms": T, **(
        {"bytes": snap["tables"]["records"]["bytes"]} if store.dialect == "postgresql" else {})}
    assert "series" not in snap["tables"]  # no table of its own (migration 0006)
    assert snap["size_bytes"] > 0 and snap["backend"] == store.dialect

    # the same moment again: nothing more to do, and nothing recorded
    again = await job.run_pass()
    assert again["deleted"] == {} and len(job.recorded) == 1


async def test_roll_ups_go_only_once_their_hour_is_written_and_never_mid_hour(store):
    ids = fill(store)
    clock = ManualClock((T + 90 * DAY + 30 * MIN) / 1000)  # 90 days and half an hour on
    job = job_for(store, clock)
    await job.run_pass()
    # series_1m keeps 90 days: the cutoff rounds down to the hour, so all of T's hour stays
    assert {b for (b,) in rows(store, s.series_1m, "bucket_ms")} >= {T + i * MIN
                                                                     for i in range(60)}
    clock.advance(2 * HOUR / 1000)
    await job.run_pass()
    assert rows(store, s.series_1m, "bucket_ms") == [(NOW - DAY,)]
    assert rows(store, s.series_1h, "bucket_ms", flow="fx") == [(T,), (T + HOUR,),
                                                                (NOW - DAY - (NOW - DAY) % HOUR,)]
    assert (ids["pending"],) in rows(store, s.raw_payloads, "id")


async def test_sqlite_gives_the_space_back(sqlite_store):
    store = sqlite_store
    big = b"x" * 4000
    for i in range(300):
        rid = payload(store, big + str(i).encode(), T + i)
        store.write_batch(BatchWrite("fx", raw_status=[status(rid, T + i)]), T + i)
    clock = ManualClock(NOW / 1000)
    job = job_for(store, clock)
    before = await job.measure()
    assert before["auto_vacuum"] == "incremental"  # a new file starts so
    result = await job.run_pass()
    wal_before = 300 * 4000  # at least the payloads' pages went through the WAL
    assert result["deleted"]["raw"] == 300
    assert result["vacuum"]["mode"] == "incremental" and result["vacuum"]["freed_pages"] > 250
    assert job.snapshot()["tables"]["raw_payloads"]["rows"] == 0
    # the WAL, which held every deleted page, is given back too (no reader was in the way;
    # what was written after the pass, its action, is a frame or two)
    assert result["vacuum"]["wal_truncated"] is True
    assert os.path.getsize(sqlite_file(store.engine) + "-wal") < min(64_000, wal_before / 10)


async def test_a_reader_in_the_way_keeps_the_wal_and_nothing_waits(sqlite_store):
    store = sqlite_store
    for i in range(50):
        rid = payload(store, b"y" * 4000 + str(i).encode(), T + i)
        store.write_batch(BatchWrite("fx", raw_status=[status(rid, T + i)]), T + i)
    path = sqlite_file(store.engine)
    reader = sqlite3.connect(path)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM raw_payloads").fetchone()  # an old snapshot
        result = await job_for(store, ManualClock(NOW / 1000)).run_pass()
    finally:
        reader.close()
    assert result["deleted"]["raw"] == 50 and result["error"] is None
    assert result["vacuum"]["wal_truncated"] is False  # tried, did not wait for the reader
    assert os.path.getsize(path + "-wal") > 0


async def test_metrics_and_db_stats_show_the_storage(tmp_path, capsys):
    from support.feed import http_get, rows_for, start_rig

    from flowdeck.console.cli import main

    rig = await start_rig(tmp_path)
    try:
        await rig.ingest("bench", rows_for(["KAAA", "KBBB"]))
        result = await rig.engine.retention.run_pass()
        assert result["error"] is None
        _, _, body = await asyncio.to_thread(http_get, rig.http_url + "/metrics")
    finally:
        await rig.close()
    text = body.decode()
    assert 'flowdeck_db_rows{table="records"} 2.0' in text
    assert 'flowdeck_db_rows{table="raw_payloads"} 1.0' in text
    assert 'flowdeck_db_oldest_timestamp_seconds{table="records"}' in text
    assert "flowdeck_db_size_bytes " in text
    assert "flowdeck_retention_last_pass_ok 1.0" in text
    assert "flowdeck_retention_last_pass_timestamp_seconds " in text
    assert "flowdeck_store_up 1.0" in text
    assert 'flowdeck_spool_max_bytes{flow="bench"} 2.68435456e+08' in text
    assert 'flowdeck_runs_total{flow="bench",status="ok"} 1.0' in text
    assert main(["db", "stats", "--db", f"sqlite:///{tmp_path / 'feed.db'}"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("sqlite database, ") and "auto_vacuum incremental" in out
    (line,) = [ln for ln in out.splitlines() if ln.startswith("records ")]
    assert line.split()[1] == "2"
    assert "last retention pass: none recorded" in out  # nothing was old enough to delete
