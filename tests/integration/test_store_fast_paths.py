"""The store's batch write paths (a batch's records grouped into a block per key and
hour, appended where newer than the key's newest stored time, rewritten in their blocks
where stored; on PostgreSQL the roll-ups added by one statement over arrays) store
exactly what writing the same records one at a time stores: every record (through the
``records`` view) and every derived table compared row by row and field by field, on
SQLite and PostgreSQL, for streaming batches, replays, a late second source, records
twice in a batch, and records of odd shapes."""

from __future__ import annotations

import math
import uuid

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import Connection
from support.services import PG_ADMIN_URL, need_service

from flowdeck.storage import schema as s
from flowdeck.storage.model import BatchWrite
from flowdeck.storage.store import Store

T = 1_795_521_600_000
METRICS = ("temperature", "pressure")


class ReferenceStore(Store):
    """The records written one at a time (each its own block, or a rewrite of the one
    stored), and on PostgreSQL the roll-ups by executemany, a statement per bucket."""

    def _write_records(self, conn: Connection, records: list[dict]) -> bool:
        news = [super(ReferenceStore, self)._write_records(conn, [r]) for r in records]
        return all(news)

    def _add(self, conn: Connection, sql: str, rows: list[tuple]) -> None:
        if rows:
            conn.exec_driver_sql(self._sql[sql], rows)


@pytest.fixture(params=["sqlite", "postgres"])
def two_urls(request, tmp_path):
    """Two empty databases of one kind."""
    if request.param == "sqlite":
        yield [f"sqlite:///{tmp_path / n}.db" for n in ("fast", "reference")]
        return
    need_service("PostgreSQL", "127.0.0.1", 5432)
    names = [f"flowdeck_test_{uuid.uuid4().hex[:12]}" for _ in range(2)]
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for n in names:
            conn.execute(text(f'CREATE DATABASE "{n}"'))
    try:
        yield [PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{n}" for n in names]
    finally:
        with admin.connect() as conn:
            for n in names:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)'))
        admin.dispose()


def record(key: str, ts: int, i: int, source: str = "feed", raw: int = 1, **data) -> dict:
    d = {"station": key, "temperature": 10 + (i % 37) * 0.37, "pressure": 1000.0 + i % 20,
         "note": "ok", **data}
    return {"flow": "f", "key": key, "ts_ms": ts, "data": d, "quality": 1.0,
            "anomaly_score": 0.1 * (i % 4), "anomalous": i % 9 == 0, "flags": [],
            "sources": [source], "raw_ids": [raw], "version_id": 1,
            "contributions": {source: {"v": d, "ts": ts, "raw": raw, "q": 1.0, "f": []}},
            "updated_ms": T + i}


def batch(records: list[dict]) -> BatchWrite:
    """The records and their points, as the engine hands them over."""
    pts = [(r["flow"], r["key"], m, r["ts_ms"], float(r["data"][m])) for r in records
           for m in METRICS if isinstance(r["data"].get(m), float)
           and math.isfinite(r["data"][m])]
    return BatchWrite("f", records=records, series=pts)


def stream(start: int, n: int, keys: int = 7, raw: int = 1) -> list[dict]:
    # keys out of order within a second, as sources deliver them
    return [record(f"K{(i * 5) % keys}", T + (i // keys) * 1000, i, raw=raw)
            for i in range(start, start + n)]


def tables(url: str) -> dict[str, list[tuple]]:
    """Every table the write path writes, as stored, in a fixed order."""
    engine = create_engine(url)
    out = {}
    try:
        with engine.connect() as conn:
            r = s.records  # the view: ids differ (blocks differ), the rest may not
            out["records"] = [tuple(row) for row in conn.execute(
                select(*(c for c in r.c if c.name != "id")).order_by(r.c.flow, r.c.key,
                                                                     r.c.ts_ms))]
            for t in (s.latest, s.series_keys, s.series_1m, s.series_1h, s.raw_status):
                out[t.name] = [tuple(row) for row in conn.execute(
                    select(t).order_by(*t.primary_key.columns))]
            out["stored"] = [(n,) for n in (conn.execute(select(func.sum(
                s.record_blocks.c.n))).scalar_one(),)]
    finally:
        engine.dispose()
    return out


def write_both(urls: list[str], batches: list[BatchWrite], defer: bool) -> None:
    for cls, url in zip((Store, ReferenceStore), urls, strict=True):
        store = cls(url)
        try:
            for i, b in enumerate(batches):
                b = BatchWrite(b.flow, records=[dict(r) for r in b.records],
                               series=list(b.series),
                               raw_status=[{"raw_id": i + 1, "outcome": "ok",
                                            "processed_ms": T, "version_id": 1,
                                            "records_in": len(b.records),
                                            "records_out": len(b.records)}])
                store.write_batch(b, T, stored=lambda: None, defer=defer)
                if defer and i % 3 == 2:
                    while not store.flush_step(5):
                        pass
            store.flush_derived()
        finally:
            store.close()


def assert_same(urls: list[str]) -> None:
    fast, ref = (tables(u) for u in urls)
    assert fast["records"], "nothing was written"
    for name in ref:
        assert len(fast[name]) == len(ref[name]), name
        for a, b in zip(fast[name], ref[name], strict=True):
            assert a == b, (name, a, b)
            assert [type(x) for x in a] == [type(x) for x in b], name


def raws(urls: list[str], n: int) -> None:
    from flowdeck.storage.model import RawDraft

    for url in urls:
        store = Store(url)
        try:
            store.insert_raws("f", [RawDraft(source="feed", body=f"p{i}".encode(),
                                             fetched_ms=T) for i in range(n)])
        finally:
            store.close()


@pytest.mark.parametrize("defer", [False, True])
def test_streaming_batches_store_what_the_record_by_record_path_stored(two_urls, defer):
    raws(two_urls, 6)
    write_both(two_urls, [batch(stream(k * 90, 90, raw=k + 1)) for k in range(6)], defer)
    assert_same(two_urls)


def test_replays_late_sources_and_other_shapes_store_the_same(two_urls):
    raws(two_urls, 6)
    first = stream(0, 60)
    replay = [dict(r, data=dict(r["data"], temperature=r["data"]["temperature"] + 1))
              for r in first[10:30]]
    for r in replay:
        r["contributions"] = {"feed": dict(r["contributions"]["feed"], v=r["data"])}
    late = []  # a second source merged into stored records
    for r in first[:15]:
        c = dict(r["contributions"])
        c["radar"] = {"v": {"temperature": 3.0}, "ts": r["ts_ms"], "raw": 2, "q": 0.5, "f": []}
        late.append(dict(r, sources=["feed", "radar"], raw_ids=[1, 2], contributions=c,
                         flags=["merged", "late"]))
    odd = stream(60, 40)  # shapes the column path hands back to the one-by-one path
    odd[3]["data"]["name"] = "null"  # (NaN is not JSON SQLite reads: tests/unit)
    odd[5]["data"]["missing"] = None
    odd[7]["data"]["nested"] = {"a": [1, 2.5]}
    odd[9]["data"]["name"] = 'x"},{"y'
    odd[11]["flags"] = [1.0]
    twice = stream(100, 20) + stream(110, 5)  # one record twice in a batch
    write_both(two_urls, [batch(first), batch(replay), batch(late), batch(odd),
                          batch(twice), batch(stream(120, 30))], defer=False)
    assert_same(two_urls)
