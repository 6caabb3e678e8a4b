"""The Store on SQLite and PostgreSQL: schema checks, raw payloads, records, roll-ups, issues."""

from __future__ import annotations

import contextlib
import time

import pytest
from sqlalchemy import column, inspect, select, table, text

from flowdeck.console.cli import main as cli_main
from flowdeck.storage import schema as s
from flowdeck.storage.db import (
    StoreError,
    alembic_config,
    check_schema,
    current_revision,
    head_revision,
    make_engine,
)
from flowdeck.storage.model import BatchWrite, IssueDraft, QuarantineRow, RawDraft
from flowdeck.storage.store import Store

T = 1_795_521_600_000  # 2026-11-24T12:00:00Z, a whole hour
MIN = 60_000
HOUR = 3_600_000


def rec(key: str, ts: int, now: int = T, **data) -> dict:
    return {
        "flow": "fx",
        "key": key,
        "ts_ms": ts,
        "data": {"pair": key, **data},
        "quality": 0.9,
        "anomaly_score": 0.0,
        "anomalous": False,
        "flags": [],
        "sources": ["fxquote"],
        "contributions": {"fxquote": {"v": data}},
        "raw_ids": [],
        "version_id": None,
        "updated_ms": now,
    }


def point(key: str, ts: int, value: float, metric: str = "rate", flow: str = "fx") -> dict:
    return {"flow": flow, "key": key, "metric": metric, "ts_ms": ts, "value": value}


def batch_of(pts: list[dict]) -> BatchWrite:
    """A batch of fx records holding the points' values (a point is its record's metric
    value: migration 0006), and the points, as the engine hands both to the store."""
    data: dict[tuple, dict] = {}
    for p in pts:
        data.setdefault((p["key"], p["ts_ms"]), {})[p["metric"]] = p["value"]
    return BatchWrite("fx", records=[rec(k, ts, **d) for (k, ts), d in data.items()],
                      series=pts)


# The series table before revision 0004: a point named by (flow, key, metric) itself.
OLD_SERIES = table("series", column("flow"), column("key"), column("metric"), column("ts_ms"),
                   column("value"))
OLD_ROLLUPS = {name: table(name, *(column(c) for c in ("flow", "key", "metric", "bucket_ms", "n",
                                                       "sum", "min", "max")))
               for name in ("series_1m", "series_1h")}


def rollup(store: Store, table, key: str = "EURUSD", metric: str = "rate") -> dict[int, tuple]:
    k = s.series_keys
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(table.c.bucket_ms, table.c.n, table.c.sum, table.c.min, table.c.max)
            .join(k, k.c.id == table.c.sid)
            .where(k.c.flow == "fx", k.c.key == key, k.c.metric == metric)
            .order_by(table.c.bucket_ms)
        ).all()
    return {int(b): (n, sm, lo, hi) for b, n, sm, lo, hi in rows}


def draft(fingerprint: str = "conflict:fx:EURUSD", raw_ids=(), **kw) -> IssueDraft:
    base = {
        "flow": "fx",
        "kind": "conflict",
        "severity": "warning",
        "title": "sources disagree on EURUSD",
        "fingerprint": fingerprint,
        "key": "EURUSD",
        "raw_ids": list(raw_ids),
    }
    return IssueDraft(**{**base, **kw})


def raw(store: Store, body: bytes, source: str = "fxquote", flow: str = "fx", ts: int = T) -> int:
    raw_id, _ = store.insert_raw(flow, source, body, ts, content_type="application/json")
    return raw_id


# --------------------------------------------------------------------------- schema


def test_schema_is_created_on_an_empty_database_and_checks_again(store):
    head = head_revision()
    assert current_revision(store.engine) == head
    tables = set(inspect(store.engine).get_table_names())
    assert set(s.metadata.tables) <= tables
    assert "alembic_version" in tables
    assert check_schema(store.engine) == head
    assert check_schema(store.engine, create_if_empty=False) == head
    again = Store(store.url)  # a second process opening the same database
    try:
        assert again.ping()
        assert again.count("records") == 0
    finally:
        again.close()


def test_a_schema_flowdeck_does_not_know_is_refused(store):
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'ffff'"))
    with pytest.raises(StoreError) as info:
        Store(store.url)
    assert "ffff" in str(info.value)
    assert "does not know" in str(info.value)
    assert current_revision(store.engine) == "ffff"  # refused, not "fixed"

    # flowdeck's tables without any revision: not created by `flowdeck db upgrade`
    with store.engine.begin() as conn:
        conn.execute(text("DROP TABLE alembic_version"))
    with pytest.raises(StoreError, match="no migration revision"):
        Store(store.url)
    assert current_revision(store.engine) is None  # nothing stamped behind the user's back


def test_db_upgrade_command_prints_the_revision_change(db_url, capsys):
    head = head_revision()
    with pytest.raises(StoreError, match="run: flowdeck db upgrade"):
        Store(db_url, create_if_empty=False)  # an empty database, not to be created
    assert cli_main(["db", "upgrade", "--db", db_url]) == 0
    out = capsys.readouterr().out
    assert out.strip() == f"schema empty -> {head}"
    assert cli_main(["db", "upgrade", "--db", db_url]) == 0
    assert capsys.readouterr().out.strip() == f"schema at {head}"
    engine = make_engine(db_url)
    try:
        assert current_revision(engine) == head
    finally:
        engine.dispose()
    st = Store(db_url, create_if_empty=False)  # the upgraded database is usable as is
    st.close()


@contextlib.contextmanager
def database_at(db_url: str, revision: str):
    """A database migrated only up to an older revision, as a user's might be; the block
    writes into it (a connection in a transaction) what it held before upgrading."""
    from alembic import command

    engine = make_engine(db_url)
    try:
        cfg = alembic_config(engine)
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
        with engine.begin() as conn:
            yield conn
    finally:
        engine.dispose()


def test_upgrading_a_revision_0001_database_keeps_its_history(db_url, capsys):
    """0002 rebuilds the series tables on SQLite: nothing stored before may be lost."""
    with database_at(db_url, "0001") as conn:
        conn.execute(s.records.insert(), [rec("EURUSD", T + 10_000, rate=1.0),
                                          rec("EURUSD", T + 20_000, rate=3.0)])
        conn.execute(OLD_SERIES.insert(), [point("EURUSD", T + 10_000, 1.0),
                                           point("EURUSD", T + 20_000, 3.0)])
        for old in OLD_ROLLUPS.values():
            conn.execute(old.insert(), [{"flow": "fx", "key": "EURUSD", "metric": "rate",
                                           "bucket_ms": T, "n": 2, "sum": 4.0,
                                           "min": 1.0, "max": 3.0}])
    with pytest.raises(StoreError, match="run: flowdeck db upgrade"):
        Store(db_url)
    assert cli_main(["db", "upgrade", "--db", db_url]) == 0
    assert capsys.readouterr().out.strip() == f"schema 0001 -> {head_revision()}"
    st = Store(db_url, create_if_empty=False)
    try:
        assert st.history("fx", "EURUSD", "rate") == [(T + 10_000, 1.0), (T + 20_000, 3.0)]
        assert st.history("fx", "EURUSD", "rate", step_ms=MIN) == [(T, 2.0)]
        st.write_batch(BatchWrite("fx", records=[rec("EURUSD", T + 30_000, rate=5.0)],
                                  series=[point("EURUSD", T + 30_000, 5.0)]), T)
        assert rollup(st, s.series_1m) == pytest.approx({T: (3, 9.0, 1.0, 5.0)})
        assert rollup(st, s.series_1h) == pytest.approx({T: (3, 9.0, 1.0, 5.0)})
    finally:
        st.close()


def test_upgrading_a_revision_0002_database_keeps_its_records(db_url, capsys):
    """0003 rebuilds the records table on SQLite (new unique index): nothing is lost, and
    the upsert still finds the constraint (a second write of the same record updates it)."""
    with database_at(db_url, "0002") as conn:
        conn.execute(s.records.insert(), [rec("EURUSD", T, rate=1.0), rec("GBPUSD", T, rate=2.0)])
    assert cli_main(["db", "upgrade", "--db", db_url]) == 0
    assert capsys.readouterr().out.strip() == f"schema 0002 -> {head_revision()}"
    st = Store(db_url, create_if_empty=False)
    try:
        assert [(r["key"], r["data"]["rate"]) for r in st.records_since("fx")] == [
            ("EURUSD", 1.0), ("GBPUSD", 2.0)]
        st.write_batch(BatchWrite("fx", records=[rec("EURUSD", T, rate=1.5)]), T)
        assert [(r["key"], r["data"]["rate"]) for r in st.records_since("fx")] == [
            ("EURUSD", 1.5), ("GBPUSD", 2.0)]
        # since 0007 the records are blocks, read through a view of the table's rows
        assert "records" in inspect(st.engine).get_view_names()
    finally:
        st.close()


def test_upgrading_a_revision_0003_database_moves_its_series_to_series_ids(db_url, capsys):
    """0004 keys series points by an integer series id: every point of every series
    moves, history, roll-up reads and warm-up values read the same, and the next points
    (new and rewritten) land in the moved series."""
    with database_at(db_url, "0003") as conn:
        conn.execute(s.records.insert(), [
            rec("EURUSD", T, rate=1.0, bid=0.9), rec("EURUSD", T + 10_000, rate=3.0),
            rec("GBPUSD", T + 5_000, rate=2.0),
            {**rec("EURUSD", T, rate=7.0), "flow": "other"}])
        conn.execute(OLD_SERIES.insert(), [
            point("EURUSD", T, 1.0), point("EURUSD", T + 10_000, 3.0),
            point("EURUSD", T, 0.9, metric="bid"), point("GBPUSD", T + 5_000, 2.0),
            point("EURUSD", T, 7.0, flow="other")])
        conn.execute(OLD_ROLLUPS["series_1m"].insert(), [
            {"flow": "fx", "key": "EURUSD", "metric": "rate", "bucket_ms": T, "n": 2,
             "sum": 4.0, "min": 1.0, "max": 3.0},
            {"flow": "fx", "key": "USDJPY", "metric": "rate", "bucket_ms": T, "n": 1,
             "sum": 150.0, "min": 150.0, "max": 150.0}])  # a roll-up whose points are gone
    assert cli_main(["db", "upgrade", "--db", db_url]) == 0
    assert capsys.readouterr().out.strip() == f"schema 0003 -> {head_revision()}"
    st = Store(db_url, create_if_empty=False)
    try:
        assert st.history("fx", "EURUSD", "rate") == [(T, 1.0), (T + 10_000, 3.0)]
        assert st.history("fx", "EURUSD", "bid") == [(T, 0.9)]
        assert st.history("other", "EURUSD", "rate") == [(T, 7.0)]
        assert st.history("fx", "EURUSD", "rate", step_ms=MIN) == [(T, 2.0)]
        assert st.history("fx", "USDJPY", "rate", step_ms=MIN) == [(T, 150.0)]
        assert st.recent_values("fx", "rate", 5) == {
            "EURUSD": [(T, 1.0), (T + 10_000, 3.0)], "GBPUSD": [(T + 5_000, 2.0)]}
        assert st.count("series_keys") == 5
        assert [r["data"]["rate"] for r in st.records_since("fx")] == [1.0, 2.0, 3.0]
        # a rewritten point and a new one in the same minute: the roll-up is recomputed
        st.write_batch(BatchWrite("fx", records=[rec("EURUSD", T + 10_000, rate=5.0),
                                                 rec("EURUSD", T + 20_000, rate=6.0)],
                                  series=[point("EURUSD", T + 10_000, 5.0),
                                          point("EURUSD", T + 20_000, 6.0)]), T)
        assert st.history("fx", "EURUSD", "rate") == [(T, 1.0), (T + 10_000, 5.0),
                                                      (T + 20_000, 6.0)]
        assert rollup(st, s.series_1m) == pytest.approx({T: (3, 12.0, 1.0, 6.0)})
        assert st.count("series_keys") == 5
    finally:
        st.close()


# The series table of revision 0004: points by series id.
SERIES_0004 = table("series", column("sid"), column("ts_ms"), column("value"))


def test_upgrading_a_revision_0004_database_reads_its_points_from_the_records(db_url,
                                                                              capsys):
    """0006 drops the series table (its points are the records' values): history, warm-up
    and roll-ups read the same; a point whose record was already gone goes with the table,
    its roll-up stays; a downgrade rebuilds the points from the records."""
    from alembic import command

    with database_at(db_url, "0004") as conn:
        conn.execute(s.records.insert(), [rec("EURUSD", T, rate=1.0, bid=0.9),
                                          rec("EURUSD", T + 10_000, rate=3.0, bid="n/a")])
        conn.execute(s.series_keys.insert(), [
            {"id": 1, "flow": "fx", "key": "EURUSD", "metric": "rate"},
            {"id": 2, "flow": "fx", "key": "EURUSD", "metric": "bid"},
            {"id": 3, "flow": "fx", "key": "USDJPY", "metric": "rate"}])
        conn.execute(SERIES_0004.insert(), [
            {"sid": 1, "ts_ms": T, "value": 1.0}, {"sid": 1, "ts_ms": T + 10_000, "value": 3.0},
            {"sid": 2, "ts_ms": T, "value": 0.9},
            {"sid": 3, "ts_ms": T, "value": 150.0}])  # its record is gone (retention)
        conn.execute(s.series_1m.insert(), [
            {"sid": 1, "bucket_ms": T, "n": 2, "sum": 4.0, "min": 1.0, "max": 3.0},
            {"sid": 3, "bucket_ms": T, "n": 1, "sum": 150.0, "min": 150.0, "max": 150.0}])
    assert cli_main(["db", "upgrade", "--db", db_url]) == 0
    assert capsys.readouterr().out.strip() == f"schema 0004 -> {head_revision()}"
    st = Store(db_url, create_if_empty=False)
    try:
        assert "series" not in inspect(st.engine).get_table_names()
        assert st.history("fx", "EURUSD", "rate") == [(T, 1.0), (T + 10_000, 3.0)]
        assert st.history("fx", "EURUSD", "bid") == [(T, 0.9)]  # a string is no point
        assert st.history("fx", "EURUSD", "pair") == []  # a string: no point
        assert st.history("fx", "USDJPY", "rate") == []
        assert st.history("fx", "USDJPY", "rate", step_ms=MIN) == [(T, 150.0)]
        assert st.recent_values("fx", "rate", 1) == {"EURUSD": [(T + 10_000, 3.0)]}
        st.write_batch(BatchWrite("fx", records=[rec("EURUSD", T + 20_000, rate=5.0)],
                                  series=[point("EURUSD", T + 20_000, 5.0)]), T)
        assert rollup(st, s.series_1m) == pytest.approx({T: (3, 9.0, 1.0, 5.0)})
        engine = st.engine
        cfg = alembic_config(engine)
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0004")
        with engine.connect() as conn:
            assert sorted(conn.execute(select(SERIES_0004.c.sid, SERIES_0004.c.ts_ms,
                                              SERIES_0004.c.value))) == [
                (1, T, 1.0), (1, T + 10_000, 3.0), (1, T + 20_000, 5.0), (2, T, 0.9)]
    finally:
        st.close()


def test_the_migrated_schema_is_the_one_the_code_declares(store):
    """Migrations and schema.py describe the same tables, indexes and constraints."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with store.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), s.metadata) == []


def test_db_upgrade_with_a_bad_url_is_one_line(capsys):
    assert cli_main(["db", "upgrade", "--db", "mysql://x@127.0.0.1/db"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("flowdeck: ") and "unsupported database" in err
    assert len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------- raw payloads


def test_insert_raw_is_idempotent_by_content_hash(store):
    body = b'{"quotes": []}'
    first = store.insert_raw(
        "fx", "fxquote", body, T, content_type="application/json", status_code=200
    )
    second = store.insert_raw("fx", "fxquote", body, T + 10_000)
    assert second == (first[0], False)
    assert store.count("raw_payloads") == 1
    row = store.get_raw(first[0])
    assert bytes(row["body"]) == body
    assert row["fetched_ms"] == T  # the first copy is kept, untouched
    assert row["size"] == len(body) and row["status_code"] == 200
    # other bytes, or the same bytes from another source, are new payloads
    assert store.insert_raw("fx", "fxquote", body + b" ", T)[0] != first[0]
    assert store.insert_raw("fx", "ecbx", body, T)[0] != first[0]
    assert store.count("raw_payloads") == 3


def test_insert_raw_reports_a_first_insert_as_new(store):
    body = b'{"quotes": []}'
    raw_id, is_new = store.insert_raw("fx", "fxquote", body, T)
    assert is_new is True
    assert store.insert_raw("fx", "ecbx", body, T)[1] is True
    assert store.insert_raw("fx", "fxquote", body, T) == (raw_id, False)


def test_a_runs_payloads_are_committed_together_in_order(store):
    known = store.insert_raw("fx", "fxquote", b"old", T)[0]
    out = store.insert_raws("fx", [
        RawDraft("fxquote", b"a", T + 1, "application/json", 200),
        RawDraft("fxquote", b"old", T + 2),  # already stored: recognised, not new
        RawDraft("ecbx", b"a", T + 3, truncated=True),
        RawDraft("fxquote", b"a", T + 4),  # twice in one run: stored once
    ], run_id=7)
    assert [new for _, new in out] == [True, False, True, False]
    assert out[1][0] == known and out[3][0] == out[0][0]
    assert out[0][0] < out[2][0]  # ids in fetch order
    first, second = store.get_raw(out[0][0]), store.get_raw(out[2][0])
    assert bytes(first["body"]) == b"a" and first["fetched_ms"] == T + 1
    assert first["content_type"] == "application/json" and first["status_code"] == 200
    assert first["run_id"] == 7 and first["truncated"] is False
    assert second["source"] == "ecbx" and second["truncated"] is True
    assert store.count("raw_payloads") == 3
    assert store.insert_raws("fx", []) == []


def test_pending_raw_lists_payloads_never_processed(store):
    a = raw(store, b"a")
    b = raw(store, b"b")
    c = raw(store, b"c")
    w = raw(store, b"w", source="metnet", flow="weather")
    assert [r["id"] for r in store.pending_raw()] == [a, b, c, w]
    store.write_batch(
        BatchWrite(
            "fx",
            raw_status=[
                {
                    "raw_id": b,
                    "outcome": "ok",
                    "processed_ms": T,
                    "version_id": None,
                    "records_in": 5,
                    "records_out": 5,
                }
            ],
        ),
        T,
    )
    assert store.raw_processed(b) and not store.raw_processed(a)
    pending = store.pending_raw("fx")
    assert [r["id"] for r in pending] == [a, c]
    assert bytes(pending[0]["body"]) == b"a"
    assert [r["id"] for r in store.pending_raw("weather")] == [w]


# --------------------------------------------------------------------------- records


def test_a_record_twice_in_one_batch_is_stored_once_and_its_point_counted_once(store):
    """The later of two rows for one record wins (as a second batch's would), on SQLite's
    executemany and PostgreSQL's COPY path alike; its minute counts it once."""
    pts = [point("AUDUSD", T, 0.5), point("AUDUSD", T + 1000, 0.75),
           point("AUDUSD", T, 0.25)]
    store.write_batch(BatchWrite("fx", records=[
        rec("AUDUSD", T, rate=0.5), rec("AUDUSD", T + 1000, rate=0.75),
        rec("AUDUSD", T, now=T + 5, rate=0.25)], series=pts), T)
    assert [(r["ts_ms"], r["data"]["rate"], r["updated_ms"])
            for r in store.records_since("fx")] == [(T, 0.25, T + 5), (T + 1000, 0.75, T)]
    assert store.latest("fx", "AUDUSD")[0]["data"]["rate"] == 0.75
    assert store.history("fx", "AUDUSD", "rate") == [(T, 0.25), (T + 1000, 0.75)]
    assert rollup(store, s.series_1m, "AUDUSD") == pytest.approx({T: (2, 1.0, 0.25, 0.75)})
    # and again, as a replay: nothing changes
    store.write_batch(BatchWrite("fx", records=[rec("AUDUSD", T + 1000, rate=0.75)],
                                 series=pts[1:2]), T)
    assert rollup(store, s.series_1m, "AUDUSD") == pytest.approx({T: (2, 1.0, 0.25, 0.75)})
    assert store.count("records") == 2


def test_records_are_upserted_and_latest_keeps_the_newest(store):
    # the same (flow, key, ts) twice: one row, the second values win
    store.write_batch(BatchWrite("fx", records=[rec("AUDUSD", T, rate=0.65)]), T)
    store.write_batch(BatchWrite("fx", records=[rec("AUDUSD", T, now=T + 5, rate=0.66)]), T + 5)
    rows = list(store.records_since("fx", key="AUDUSD"))
    assert len(rows) == 1
    assert rows[0]["data"]["rate"] == 0.66
    assert rows[0]["updated_ms"] == T + 5
    assert store.get_record(rows[0]["id"])["contributions"] == {"fxquote": {"v": {"rate": 0.66}}}
    assert store.latest("fx", "AUDUSD")[0]["data"]["rate"] == 0.66

    # an older record arriving later does not move `latest` back
    store.write_batch(
        BatchWrite(
            "fx", records=[rec("EURUSD", T + 2 * MIN, rate=1.10), rec("GBPUSD", T, rate=1.27)]
        ),
        T,
    )
    store.write_batch(
        BatchWrite(
            "fx", records=[rec("EURUSD", T + MIN, rate=1.05), rec("GBPUSD", T + MIN, rate=1.28)]
        ),
        T + 1,
    )
    latest = {r["key"]: r for r in store.latest("fx")}
    assert latest["EURUSD"]["ts_ms"] == T + 2 * MIN  # an older late record does not win
    assert latest["EURUSD"]["data"]["rate"] == 1.10
    assert latest["GBPUSD"]["ts_ms"] == T + MIN
    assert latest["GBPUSD"]["data"]["rate"] == 1.28
    # several of one key in one batch: the newest one, whatever the order
    store.write_batch(
        BatchWrite(
            "fx", records=[rec("USDJPY", T + 3 * MIN, rate=151.0), rec("USDJPY", T, rate=150.0)]
        ),
        T + 2,
    )
    assert store.latest("fx", "USDJPY")[0]["data"]["rate"] == 151.0
    assert store.count("records", flow="fx") == 7
    assert store.count("latest", flow="fx") == 4


def test_a_record_reads_back_exactly_as_the_stages_left_it(store):
    """Lineage shows what was stored: values, flags and each source's contribution."""
    data = {"pair": "EURUSD", "rate": 1.0842, "note": "Zürich \"quote\"", "bid": None,
            "levels": [1, 2.5]}
    one = {"fxquote": {"v": data, "ts": T + 1_500, "raw": 7, "q": 0.875, "f": ["clock_skew"]}}
    two = {"fxquote": {"v": {"rate": 1.0}, "ts": T, "raw": 7, "q": 1.0, "f": []},
           "ecbx": {"v": {"rate": 1.2}, "ts": T, "raw": 8, "q": 0.5, "f": ["out_of_order"]}}
    rows = [{**rec("EURUSD", T), "data": data, "contributions": one, "flags": ["clock_skew"],
             "raw_ids": [7], "anomalous": True, "anomaly_score": 0.93},
            {**rec("GBPUSD", T), "contributions": two, "sources": ["fxquote", "ecbx"],
             "raw_ids": [7, 8]}]
    store.write_batch(BatchWrite("fx", records=rows), T)
    got = {r["key"]: r for r in store.records_since("fx")}
    assert got["EURUSD"]["data"] == data
    assert got["EURUSD"]["contributions"] == one
    assert got["EURUSD"]["flags"] == ["clock_skew"] and got["EURUSD"]["raw_ids"] == [7]
    assert got["EURUSD"]["anomalous"] is True and got["EURUSD"]["anomaly_score"] == 0.93
    assert got["GBPUSD"]["contributions"] == two
    assert got["GBPUSD"]["sources"] == ["fxquote", "ecbx"]
    assert store.contributions("fx", [("EURUSD", T), ("GBPUSD", T)]) == {
        ("EURUSD", T): one, ("GBPUSD", T): two}
    assert store.latest("fx", "EURUSD")[0]["data"] == data


def test_a_one_source_record_is_stored_once_and_read_back_whole(store):
    """A record read by one source stores its contribution as "row" (not a second copy
    of its data); every read rebuilds the same contribution. One whose contribution the
    row cannot rebuild (another quality, two sources) keeps it as written."""
    data = {"pair": "EURUSD", "rate": 1.25, "bid": 1}
    one = {**rec("EURUSD", T), "data": data, "quality": 0.75, "flags": ["clock_skew"],
           "raw_ids": [7], "contributions": {"fxquote": {"v": data, "ts": T, "raw": 7,
                                                         "q": 0.75, "f": ["clock_skew"]}}}
    other_q = {**rec("GBPUSD", T), "raw_ids": [8], "contributions": {
        "fxquote": {"v": {"pair": "GBPUSD"}, "ts": T, "raw": 8, "q": 0.5, "f": []}}}
    store.write_batch(BatchWrite("fx", records=[one, other_q]), T)
    with store.engine.connect() as conn:
        stored = dict(conn.execute(select(s.records.c.key, s.records.c.contributions)).all())
    assert stored["EURUSD"] == "row"
    assert stored["GBPUSD"] == other_q["contributions"]
    by_key = {r["key"]: r for r in store.records_since("fx")}
    assert by_key["EURUSD"]["contributions"] == one["contributions"]
    assert by_key["GBPUSD"]["contributions"] == other_q["contributions"]
    assert store.get_record(by_key["EURUSD"]["id"])["contributions"] == one["contributions"]
    assert store.contributions("fx", [("EURUSD", T), ("GBPUSD", T)]) == {
        ("EURUSD", T): one["contributions"], ("GBPUSD", T): other_q["contributions"]}


def test_series_rollups_hold_count_sum_min_max_and_survive_rewrites(store):
    pts = [
        point("EURUSD", T + 10_000, 1.0),
        point("EURUSD", T + 40_000, 3.0),
        point("EURUSD", T + MIN + 5_000, 2.0),
        point("GBPUSD", T + 20_000, 10.0),
    ]
    store.write_batch(batch_of(pts), T)
    one_min = {T: (2, 4.0, 1.0, 3.0), T + MIN: (1, 2.0, 2.0, 2.0)}
    assert rollup(store, s.series_1m) == pytest.approx(one_min)
    assert rollup(store, s.series_1h) == pytest.approx({T: (3, 6.0, 1.0, 3.0)})
    assert rollup(store, s.series_1m, "GBPUSD") == pytest.approx({T: (1, 10.0, 10.0, 10.0)})

    store.write_batch(batch_of(pts), T)  # a replay: nothing double-counted
    assert rollup(store, s.series_1m) == pytest.approx(one_min)
    assert rollup(store, s.series_1h) == pytest.approx({T: (3, 6.0, 1.0, 3.0)})
    assert len(store.history("fx", "EURUSD", "rate")) == 3 and store.count("records") == 4

    # a corrected value and a late point in the same hour
    store.write_batch(
        batch_of([point("EURUSD", T + 40_000, 5.0), point("EURUSD", T + 30 * MIN, 4.0)]),
        T,
    )
    assert rollup(store, s.series_1m) == pytest.approx(
        {T: (2, 6.0, 1.0, 5.0), T + MIN: (1, 2.0, 2.0, 2.0), T + 30 * MIN: (1, 4.0, 4.0, 4.0)}
    )
    assert rollup(store, s.series_1h) == pytest.approx({T: (4, 12.0, 1.0, 5.0)})
    # the next hour is a bucket of its own
    store.write_batch(batch_of([point("EURUSD", T + HOUR + 1, 7.0)]), T)
    assert rollup(store, s.series_1h) == pytest.approx(
        {T: (4, 12.0, 1.0, 5.0), T + HOUR: (1, 7.0, 7.0, 7.0)}
    )


def test_history_and_recent_values_read_the_series(store):
    pts = [point("EURUSD", T + i * 20_000, float(i)) for i in range(9)]  # 3 minutes, 3 per minute
    pts.append(point("EURUSD", T + 5_000, 99.0, metric="other"))
    pts.append(point("GBPUSD", T + 5_000, 99.0))
    store.write_batch(batch_of(pts), T)
    raw_hist = store.history("fx", "EURUSD", "rate")
    assert raw_hist == [(T + i * 20_000, float(i)) for i in range(9)]
    assert store.history("fx", "EURUSD", "rate", since_ms=T + MIN) == raw_hist[3:]
    assert store.history("fx", "EURUSD", "rate", limit=2) == raw_hist[-2:]  # newest, in order
    assert store.history("fx", "EURUSD", "rate", step_ms=MIN) == [
        (T, 1.0),
        (T + MIN, 4.0),
        (T + 2 * MIN, 7.0),
    ]
    assert store.history("fx", "EURUSD", "rate", step_ms=HOUR) == [(T, 4.0)]
    assert store.history("fx", "EURUSD", "missing") == []

    # recent_values (detector warm-up): the newest N per key, oldest first
    pts = [
        point(k, T + i * MIN, float(i) + (100 if k == "GBPUSD" else 0), metric="mid")
        for k in ("EURUSD", "GBPUSD")
        for i in range(6)
    ]
    pts.append(point("USDJPY", T, 150.0, metric="mid"))
    pts.append(point("EURUSD", T, 0.5, metric="other"))
    store.write_batch(batch_of(pts), T)
    got = store.recent_values("fx", "mid", 3)
    assert got == {
        "EURUSD": [(T + 3 * MIN, 3.0), (T + 4 * MIN, 4.0), (T + 5 * MIN, 5.0)],
        "GBPUSD": [(T + 3 * MIN, 103.0), (T + 4 * MIN, 104.0), (T + 5 * MIN, 105.0)],
        "USDJPY": [(T, 150.0)],
    }
    before = store.recent_values("fx", "mid", 2, before_ms=T + 2 * MIN)
    assert before["EURUSD"] == [(T, 0.0), (T + MIN, 1.0)]
    assert store.recent_values("weather", "mid", 3) == {}


# --------------------------------------------------------------------------- quarantine


def test_quarantine_is_unique_by_raw_and_item_and_replayed_marks_it(store):
    r1 = raw(store, b"one")
    r2 = raw(store, b"two")

    def q(raw_id, item, message="rate: not a number"):
        return QuarantineRow(
            "fx", "fxquote", raw_id, item, "validate", "wrong_type", message, {"rate": "n/a"}
        )

    store.write_batch(BatchWrite("fx", quarantine=[q(r1, 0), q(r1, 1), q(r2, 0)]), T)
    store.write_batch(BatchWrite("fx", quarantine=[q(r1, 0, "rate: still not a number")]), T + 1)
    rows = store.quarantined("fx")
    assert len(rows) == 3
    by = {(r["raw_id"], r["item"]): r for r in rows}
    assert by[(r1, 0)]["message"] == "rate: still not a number"
    assert by[(r1, 0)]["record"] == {"rate": "n/a"}

    store.write_batch(BatchWrite("fx", replayed=[(r1, 0), (r1, 1)]), T + 2)
    assert [(r["raw_id"], r["item"]) for r in store.quarantined("fx")] == [(r2, 0)]
    done = store.quarantined("fx", "replayed")
    assert {(r["raw_id"], r["item"]) for r in done} == {(r1, 0), (r1, 1)}
    assert all(r["replayed_ms"] == T + 2 and r["state"] == "replayed" for r in done)
    assert len(store.quarantined("fx", None)) == 3


# --------------------------------------------------------------------------- issues


def test_same_fingerprint_twice_is_one_issue_with_count_two(store):
    c1 = store.write_batch(BatchWrite("fx", issues=[draft(raw_ids=[3, 1])]), T)
    c2 = store.write_batch(
        BatchWrite(
            "fx", issues=[draft(raw_ids=[2, 3], severity="error", title="still disagreeing")]
        ),
        T + 10,
    )
    assert (c1["issues_opened"], c1["issues_updated"]) == (1, 0)
    assert (c2["issues_opened"], c2["issues_updated"]) == (0, 1)
    issues = store.issues(flow="fx")
    assert len(issues) == 1
    i = issues[0]
    assert i["count"] == 2
    assert i["raw_ids"] == [1, 2, 3]
    assert (i["first_ms"], i["last_ms"]) == (T, T + 10)
    assert i["state"] == "open"
    assert i["severity"] == "error" and i["title"] == "still disagreeing"
    # another fingerprint is another issue
    store.raise_issues([draft("conflict:fx:GBPUSD", key="GBPUSD")], T + 20)
    assert len(store.issues(flow="fx")) == 2
    assert store.open_issue_counts() == {("fx", "error"): 1, ("fx", "warning"): 1}


def test_issue_states_and_a_resolved_issue_does_not_swallow_a_new_occurrence(store):
    # set_issue_state: acknowledged issues still count occurrences
    store.raise_issues([draft("quarantine:fx:ecbx")], T)
    iid = store.issues(flow="fx")[0]["id"]
    acked = store.set_issue_state(iid, "acknowledged", "carol", T + 7)
    assert (acked["state"], acked["actor"], acked["updated_ms"]) == ("acknowledged", "carol", T + 7)
    assert store.issues(state="acknowledged")[0]["id"] == iid
    assert store.issues(state=["open", "resolved"]) == []  # (none yet)
    store.raise_issues(
        [draft("quarantine:fx:ecbx")], T + 8
    )  # an acknowledged issue still counts occurrences
    assert store.get_issue(iid)["count"] == 2
    assert store.get_issue(iid)["state"] == "acknowledged"
    assert store.set_issue_state(iid + 1000, "resolved", "carol", T) is None

    # a resolved issue stays closed: the next occurrence opens a new issue
    def conflicts():
        return [i for i in store.issues(flow="fx") if i["fingerprint"] == "conflict:fx:EURUSD"]

    store.raise_issues([draft(raw_ids=[1])], T)
    old = conflicts()[0]
    resolved = store.set_issue_state(old["id"], "resolved", "alice", T + 5)
    assert resolved["state"] == "resolved" and resolved["actor"] == "alice"
    c = store.write_batch(BatchWrite("fx", issues=[draft(raw_ids=[2])]), T + 10)
    assert c["issues_opened"] == 1
    assert len(conflicts()) == 2
    new = next(i for i in conflicts() if i["id"] != old["id"])
    assert (new["state"], new["count"], new["raw_ids"]) == ("open", 1, [2])
    assert store.get_issue(old["id"])["state"] == "resolved"
    assert store.get_issue(old["id"])["count"] == 1
    assert store.get_issue(iid)["state"] == "acknowledged"  # the other issue is untouched


def test_muted_issue_reopens_when_its_mute_has_expired(store):
    store.raise_issues([draft()], T)
    iid = store.issues(flow="fx")[0]["id"]
    store.set_issue_state(iid, "muted", "bob", T + 1, muted_until_ms=T + 1000)
    store.raise_issues([draft()], T + 500)  # still muted: counted, stays quiet
    i = store.get_issue(iid)
    assert (i["state"], i["count"]) == ("muted", 2)
    assert store.open_issue_counts() == {}
    store.raise_issues([draft()], T + 2000)  # the mute has run out
    i = store.get_issue(iid)
    assert (i["state"], i["count"]) == ("open", 3)
    assert len(store.issues(flow="fx")) == 1
    assert store.open_issue_counts() == {("fx", "warning"): 1}

    # muted with no end: stays muted however late the next occurrence comes
    store.set_issue_state(iid, "muted", "bob", T + 3000)
    store.raise_issues([draft()], T + 10 * HOUR)
    i = store.get_issue(iid)
    assert (i["state"], i["count"]) == ("muted", 4)


# --------------------------------------------------------------------------- actions


def test_actions_are_listed_newest_first_and_by_flow(store):
    ids = [
        store.add_action(
            ts_ms=T,
            action="retry",
            actor="auto",
            reason="timeout",
            outcome="ok",
            flow="fx",
            source="fxquote",
            duration_ms=12.5,
        ),
        store.add_action(
            ts_ms=T + 1,
            action="pause",
            actor="alice",
            reason="maintenance",
            outcome="ok",
            flow="weather",
        ),
        store.add_action(
            ts_ms=T + 2,
            action="breaker_open",
            actor="auto",
            reason="5 failures",
            outcome="failed",
            flow="fx",
            source="ecbx",
            detail={"failures": 5},
        ),
    ]
    assert ids == sorted(ids)
    assert [a["id"] for a in store.actions()] == ids[::-1]
    fx = store.actions("fx")
    assert [a["action"] for a in fx] == ["breaker_open", "retry"]
    assert fx[0]["detail"] == {"failures": 5}
    assert fx[1]["duration_ms"] == 12.5 and fx[1]["source"] == "fxquote"
    assert [a["id"] for a in store.actions(limit=1)] == [ids[-1]]


def test_a_writing_store_checkpoints_its_wal_without_the_writer(sqlite_store, tmp_path):
    # Committed batches reach the database file itself while the store stays open, long
    # before the WAL grows to the automatic-checkpoint backstop (the writer never waits).
    db_file = tmp_path / "flowdeck.db"
    before = db_file.stat().st_size
    for i in range(20):
        batch = BatchWrite("fx", records=[rec(f"K{k:03d}", T + i * MIN, note="x" * 200)
                                          for k in range(100)])
        batch.series = [point(f"K{k:03d}", T + i * MIN, float(k)) for k in range(100)]
        sqlite_store.write_batch(batch, T)
    deadline = time.monotonic() + 10
    while db_file.stat().st_size <= before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert db_file.stat().st_size > before
    assert sqlite_store.count("records") == 2000


# --------------------------------------------------------------------------- composition


def test_each_store_method_is_written_once_in_the_repository_of_its_concern():
    # Store is mixins over one engine: a method defined in two repositories would be
    # shadowed silently by the first in the MRO, so no name may be defined twice.
    from flowdeck.storage.derived import DerivedSeries
    from flowdeck.storage.issues import Issues
    from flowdeck.storage.raw import RawPayloads
    from flowdeck.storage.records import Records
    from flowdeck.storage.repository import Repository
    from flowdeck.storage.runs import Runs

    repos = (Store, Runs, RawPayloads, Records, DerivedSeries, Issues, Repository)
    assert set(Store.__mro__) >= set(repos)
    seen: dict[str, str] = {}
    for cls in repos:
        for name, value in vars(cls).items():
            if callable(value) and not name.startswith("__"):
                assert name not in seen, f"{name} in both {seen[name]} and {cls.__name__}"
                seen[name] = cls.__name__
    assert seen["write_batch"] == "Store" and seen["flush_step"] == "DerivedSeries"
    assert seen["pending_raw"] == "RawPayloads" and seen["raise_issues"] == "Issues"
    assert Store.MAX_DERIVED_ROWS == DerivedSeries.MAX_DERIVED_ROWS == 1_000_000
