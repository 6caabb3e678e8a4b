"""Records stored as per-key blocks (migration 0007), on SQLite and PostgreSQL: a batch
becomes a block per key and hour, a time already stored is rewritten where it is (its id
kept), late records land in blocks of their own, and every read (records, one record,
history, warm-up values, contributions, latest, the ``records`` view) sees exactly one
record per key and time, the newest write of it. Checked against a plain dict model
over random batches, and through the upgrade and downgrade of a database at 0006."""

from __future__ import annotations

import math
import random

import pytest
from sqlalchemy import func, inspect, select, text

from flowdeck.console.cli import main as cli_main
from flowdeck.storage import schema as s
from flowdeck.storage.blocks import BLOCK_MAX, SPAN_MS
from flowdeck.storage.db import alembic_config
from flowdeck.storage.model import BatchWrite
from flowdeck.storage.store import Store

T = 1_795_521_600_000  # a whole hour
MIN = 60_000


def rec(key: str, ts: int, rate: float, source: str = "feed", raw: int = 1, **extra) -> dict:
    data = {"pair": key, "rate": rate, **extra}
    return {"flow": "fx", "key": key, "ts_ms": ts, "data": data, "quality": 1.0,
            "anomaly_score": 0.0, "anomalous": False, "flags": [], "sources": [source],
            "contributions": {source: {"v": data, "ts": ts, "raw": raw, "q": 1.0, "f": []}},
            "raw_ids": [raw], "version_id": 3, "updated_ms": T}


def write(store: Store, records: list[dict]) -> None:
    pts = [("fx", r["key"], "rate", r["ts_ms"], float(r["data"]["rate"])) for r in records
           if isinstance(r["data"].get("rate"), float) and math.isfinite(r["data"]["rate"])]
    store.write_batch(BatchWrite("fx", records=records, series=pts), T)


def blocks(store: Store) -> list[tuple]:
    b = s.record_blocks
    with store.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(
            select(b.c.key, b.c.first_ms, b.c.last_ms, b.c.n).order_by(b.c.id))]


def test_a_batch_is_a_block_per_key_and_hour_and_ids_start_at_one(store):
    batch = [rec(k, T + SPAN_MS - 2 * MIN + i * MIN, float(i)) for i in range(4)
             for k in ("A", "B")]  # two minutes either side of the hour, keys interleaved
    write(store, batch)
    assert sorted(blocks(store)) == [
        ("A", T + SPAN_MS - 2 * MIN, T + SPAN_MS - MIN, 2),
        ("A", T + SPAN_MS, T + SPAN_MS + MIN, 2),
        ("B", T + SPAN_MS - 2 * MIN, T + SPAN_MS - MIN, 2),
        ("B", T + SPAN_MS, T + SPAN_MS + MIN, 2)]
    got = list(store.records_since("fx"))
    assert [(r["ts_ms"], r["key"]) for r in got] == sorted((r["ts_ms"], r["key"]) for r in batch)
    assert min(r["id"] for r in got) == 1 and len({r["id"] for r in got}) == 8
    for r in got:
        assert store.get_record(r["id"]) == r
    assert store.get_record(0) is None and store.get_record(10 * BLOCK_MAX) is None
    assert store.count("records") == 8 and store.count("records", flow="other") == 0


def test_a_rewrite_stays_in_its_block_and_a_late_record_gets_its_own(store):
    write(store, [rec("A", T + i * 1000, float(i)) for i in range(10)])
    first = {r["ts_ms"]: r for r in store.records_since("fx")}
    late = [rec("A", T + 5000, 50.0, source="radar", raw=2),  # stored: rewritten in place
            rec("A", T + 4500, 45.0),  # between stored times: new, in a block of its own
            rec("A", T + 20_000, 200.0)]
    write(store, late)
    assert [n for _k, _f, _l, n in blocks(store)] == [10, 2]
    got = list(store.records_since("fx"))
    assert [r["ts_ms"] for r in got] == sorted([T + i * 1000 for i in range(10)]
                                               + [T + 4500, T + 20_000])
    by_ts = {r["ts_ms"]: r for r in got}
    assert by_ts[T + 5000]["id"] == first[T + 5000]["id"]
    assert by_ts[T + 5000]["data"]["rate"] == 50.0 and by_ts[T + 5000]["sources"] == ["radar"]
    assert store.history("fx", "A", "rate")[4:7] == [(T + 4000, 4.0), (T + 4500, 45.0),
                                                     (T + 5000, 50.0)]
    # the roll-up of that minute was recomputed from the records, not added to
    ((n, total),) = [(r.n, r.sum) for r in _rollups(store)]
    assert n == 12 and total == pytest.approx(sum(range(10)) - 5 + 50 + 45 + 200)
    assert store.latest("fx")[0]["ts_ms"] == T + 20_000
    with store.engine.connect() as conn:
        dupes = conn.execute(text('SELECT count(*) - count(DISTINCT "ts_ms") FROM "records"'))
        assert dupes.scalar_one() == 0


def _rollups(store: Store) -> list:
    with store.engine.connect() as conn:
        return list(conn.execute(select(s.series_1m)))


def test_the_records_view_reads_what_the_store_reads(store):
    write(store, [rec(k, T + i * 7000, i * 0.5) for i in range(30) for k in ("A", "B")])
    write(store, [rec("A", T + 7000, 99.0, source="radar", raw=4)])
    with store.engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(select(s.records).order_by(
            s.records.c.ts_ms, s.records.c.key)).mappings()]
    read = list(store.records_since("fx"))
    assert len(rows) == len(read) == 60
    for row, r in zip(rows, read, strict=True):
        for f in ("id", "flow", "key", "ts_ms", "data", "quality", "anomaly_score", "flags",
                  "sources", "raw_ids", "version_id", "updated_ms"):
            assert row[f] == r[f], f
        assert bool(row["anomalous"]) == r["anomalous"]
        assert row["contributions"] == "row"  # one source: stored as the row itself


def test_nan_and_infinity_are_stored_as_missing_values(store):
    """JSON holds no NaN (SQLite's JSON functions and PostgreSQL refuse the token): such
    a value reads back as null, and is no series point."""
    write(store, [rec("A", T, math.nan, other=math.inf), rec("A", T + 1000, 2.0)])
    got = list(store.records_since("fx"))
    assert got[0]["data"] == {"pair": "A", "rate": None, "other": None}
    assert store.history("fx", "A", "rate") == [(T + 1000, 2.0)]
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(s.records)).scalar_one() == 2


def test_random_batches_read_as_a_dict_of_the_last_write_per_key_and_time(store):
    """Streaming batches, replays, late records, records twice in a batch, across hours:
    every read agrees with a dict holding the last write of each (key, time)."""
    rng = random.Random(19)
    model: dict[tuple[str, int], float] = {}
    clock = 0
    for step in range(40):
        batch = []
        for _ in range(rng.randint(1, 40)):
            key = rng.choice("ABC")
            kind = rng.random()
            if kind < 0.6:  # streaming
                clock += rng.randint(1, 90) * 1000
                ts = T + clock
            elif kind < 0.8 and model:  # a replay of a stored time
                key, ts = rng.choice(sorted(model))
            else:  # late: anywhere in the past
                ts = T + rng.randint(0, max(clock, 1) // 1000) * 1000
            value = round(rng.uniform(0, 100), 3) + step
            batch.append(rec(key, ts, value))
            model[(key, ts)] = value
        write(store, batch)
    got = list(store.records_since("fx"))
    assert [(r["ts_ms"], r["key"]) for r in got] == sorted((ts, k) for k, ts in model)
    assert {(r["key"], r["ts_ms"]): r["data"]["rate"] for r in got} == model
    for key in "ABC":
        series = sorted((ts, v) for (k, ts), v in model.items() if k == key)
        assert store.history("fx", key, "rate", limit=100_000) == series
        for limit in (1, 7, 50):
            assert store.history("fx", key, "rate", limit=limit) == series[-limit:]
        mid = series[len(series) // 2][0]
        assert store.history("fx", key, "rate", since_ms=mid, limit=100_000) == [
            p for p in series if p[0] >= mid]
        assert list(store.records_since("fx", mid, key=key)) == [
            r for r in got if r["key"] == key and r["ts_ms"] >= mid]
    assert store.recent_values("fx", "rate", 3) == {
        k: sorted((ts, v) for (kk, ts), v in model.items() if kk == k)[-3:] for k in "ABC"}
    assert list(store.records_since("fx", limit=5)) == got[:5]
    wanted = rng.sample(sorted(model), 10)
    contrib = store.contributions("fx", wanted)
    assert {k: c["feed"]["v"]["rate"] for k, c in contrib.items()} == {k: model[k] for k in wanted}
    newest = {k: max(ts for kk, ts in model if kk == k) for k in "ABC"}
    assert store.rebuild_latest("fx") == 3
    assert {r["key"]: r["ts_ms"] for r in store.latest("fx")} == newest
    # the roll-ups hold every stored value once, whatever was rewritten or came late
    with store.engine.connect() as conn:
        n, total = conn.execute(select(func.sum(s.series_1m.c.n),
                                       func.sum(s.series_1m.c.sum))).one()
    assert n == len(model) and total == pytest.approx(sum(model.values()))


def test_more_records_of_a_key_in_an_hour_than_a_block_holds(store):
    write(store, [rec("A", T + i * 100, float(i)) for i in range(BLOCK_MAX + 10)])
    assert [n for _k, _f, _l, n in blocks(store)] == [BLOCK_MAX, 10]
    assert len(store.history("fx", "A", "rate", limit=10**6)) == BLOCK_MAX + 10


def test_upgrading_a_revision_0006_database_moves_every_record_into_blocks(db_url, capsys):
    """0007: each record of the table moves (a block per key and hour), reads the same,
    and the next writes rewrite or extend them; the downgrade gives the rows back."""
    from alembic import command

    from flowdeck.storage.db import make_engine

    engine = make_engine(db_url)
    cfg = alembic_config(engine)
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0006")
        old = [rec(k, T + i * 20 * MIN, float(i)) for i in range(7) for k in ("A", "B")]
        old.append({**rec("A", T, 5.0), "flow": "other"})
        two = {"feed": {"v": {"rate": 1.0}, "ts": T, "raw": 1, "q": 1.0, "f": []},
               "radar": {"v": {"rate": 3.0}, "ts": T, "raw": 2, "q": 0.5, "f": []}}
        old[0] = {**old[0], "sources": ["feed", "radar"], "contributions": two}
        with engine.begin() as conn:
            conn.execute(s.records.insert(), [dict(r, anomalous=bool(i % 3 == 0))
                                              for i, r in enumerate(old)])
    finally:
        engine.dispose()
    assert cli_main(["db", "upgrade", "--db", db_url]) == 0
    assert capsys.readouterr().out.strip().startswith("schema 0006 -> ")
    st = Store(db_url, create_if_empty=False)
    try:
        assert "records" in inspect(st.engine).get_view_names()
        got = list(st.records_since("fx"))
        assert [(r["key"], r["ts_ms"], r["data"]["rate"]) for r in got] == sorted(
            [(r["key"], r["ts_ms"], r["data"]["rate"]) for r in old if r["flow"] == "fx"],
            key=lambda x: (x[1], x[0]))
        assert got[0]["contributions"] == two and got[1]["sources"] == ["feed"]
        assert [r["anomalous"] for r in got] == [i % 3 == 0 for i in range(14)]
        assert [r["data"]["rate"] for r in st.records_since("other")] == [5.0]
        # a block per flow, key and hour: 7 records 20 minutes apart span three hours
        assert sorted((k, n) for k, _f, _l, n in blocks(st)) == [
            ("A", 1), ("A", 1), ("A", 3), ("A", 3), ("B", 1), ("B", 3), ("B", 3)]
        assert st.history("fx", "A", "rate") == [(T + i * 20 * MIN, float(i)) for i in range(7)]
        write(st, [rec("A", T + 20 * MIN, 10.0), rec("A", T + 200 * MIN, 11.0)])
        assert [v for _t, v in st.history("fx", "A", "rate")] == [
            0.0, 10.0, 2.0, 3.0, 4.0, 5.0, 6.0, 11.0]
        ids = {(r["key"], r["ts_ms"]): r["id"] for r in st.records_since("fx")}
        engine = st.engine
        with engine.begin() as conn:
            cfg = alembic_config(engine)
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0006")
        assert "records" in inspect(engine).get_table_names()
        with engine.connect() as conn:
            rows = conn.execute(text('SELECT "id", "key", "ts_ms" FROM "records" '
                                     "WHERE \"flow\" = 'fx'")).all()
        assert {(k, ts): i for i, k, ts in rows} == ids  # ids kept
    finally:
        st.close()


def test_retention_empties_the_old_part_of_a_block_and_keeps_the_ids_of_the_rest(store):
    from flowdeck.storage.retention import Protected, Retention, Scope

    write(store, [rec("A", T + i * MIN, float(i)) for i in range(10)])
    store.flush_derived()
    before = {r["ts_ms"]: r["id"] for r in store.records_since("fx")}
    deleted, _cursor = Retention(store).step("records", Scope("fx"), T + 4 * MIN, None, 100,
                                             Protected())
    assert deleted == 4
    after = {r["ts_ms"]: r["id"] for r in store.records_since("fx")}
    assert after == {ts: i for ts, i in before.items() if ts >= T + 4 * MIN}
    assert store.count("records") == 6 and blocks(store)[0][3] == 6
    assert store.history("fx", "A", "rate")[0] == (T + 4 * MIN, 4.0)
    deleted, _cursor = Retention(store).step("records", Scope("fx"), T + 60 * MIN, None, 100,
                                             Protected())
    assert deleted == 6 and blocks(store) == [] and store.get_record(before[T]) is None


ODD_SHAPES = {
    "string with the cut in it": lambda r: r["data"].update(name='a"},{"b":1'),
    "control and non-ASCII text": lambda r: r["data"].update(name="line\nnext Zürich ☃ \u2028"),
    "an int past 64 bits": lambda r: r["data"].update(big=2 ** 70),
    "nested values": lambda r: r["data"].update(nested={"a": [1, 2.5]}, items=[1, 2]),
    "an int key": lambda r: r["data"].update({1: "int key"}),
    "no data": lambda r: r.update(data={}),
    "float and bool flags": lambda r: r.update(flags=[1.0, True]),
    "two sources": lambda r: r.update(raw_ids=[3, 4], sources=["a", "b"], contributions={
        "a": {"v": {"rate": 1.0}, "ts": r["ts_ms"], "raw": 3, "q": 1.0, "f": []},
        "b": {"v": {"rate": 2.0}, "ts": r["ts_ms"], "raw": 4, "q": 0.5, "f": []}}),
    "a contribution of other values": lambda r: r.update(contributions={
        "feed": {"v": {"x": 1}, "ts": r["ts_ms"], "raw": 1, "q": 1.0, "f": []}}),
    "no contributions": lambda r: r.update(contributions={}),
    "anomalous as an int": lambda r: r.update(anomalous=1),
    "an int quality": lambda r: r.update(quality=1),
    "no anomaly score or version": lambda r: (r.pop("anomaly_score"), r.pop("version_id")),
}


@pytest.mark.parametrize("shape", sorted(ODD_SHAPES))
def test_records_of_odd_shapes_read_back_as_their_json(store, shape):
    """Whatever a record holds, it reads back as its JSON does (the shapes the rows'
    column encoder once handed back), in a batch of ordinary records and alone."""
    import json

    batch = [rec("A", T + i * 1000, float(i)) for i in range(20)]
    ODD_SHAPES[shape](batch[7])
    write(store, [dict(r) for r in batch])
    got = {r["ts_ms"]: r for r in store.records_since("fx")}
    for r in batch:
        want = json.loads(json.dumps(r))
        want.setdefault("anomaly_score", 0.0)
        want.setdefault("version_id", None)
        back = {k: got[r["ts_ms"]][k] for k in want}
        assert back == {**want, "anomalous": bool(want["anomalous"])}, shape
