"""The order in which a run is stored and shown, and series written for many runs at once.

A run's records and ``latest`` are committed, then shown (and this daemon's cached
values of those keys are gone by then), and with them its series points (the records'
values, migration 0006); its roll-ups and the mark that its payloads are processed may
wait (store.derived_delay), and are then written together with the following runs'. Nothing may be lost or counted twice on the way: not when
the write fails, not when the process dies with them still owed.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import textwrap

import pytest
from sqlalchemy import func, select

from flowdeck.pipeline.config import parse_config
from flowdeck.pipeline.engine.engine import Engine
from flowdeck.storage import schema as s
from flowdeck.storage.model import BatchWrite, IssueDraft, RawDraft
from flowdeck.storage.store import Store

T = 1_795_521_600_000  # 2026-11-24T12:00:00Z, a whole hour
MIN = 60_000


def rec(key: str, ts: int, rate: float) -> dict:
    return {"flow": "fx", "key": key, "ts_ms": ts, "data": {"pair": key, "rate": rate},
            "quality": 0.9, "anomaly_score": 0.0, "anomalous": False, "flags": [],
            "sources": ["q"], "contributions": {}, "raw_ids": [], "version_id": None,
            "updated_ms": ts}


def run_batch(st: Store, i: int, rate: float, step_ms: int = 1000, **kw) -> BatchWrite:
    """One run: a payload committed raw, one record of EURUSD at T + i steps, its point."""
    (raw_id, _), = st.insert_raws("fx", [RawDraft("q", f"run {i}: {rate}".encode(), T)])
    ts = T + i * step_ms
    return BatchWrite("fx", records=[rec("EURUSD", ts, rate)],
                      series=[("fx", "EURUSD", "rate", ts, rate)],
                      raw_status=[{"raw_id": raw_id, "outcome": "ok", "processed_ms": T,
                                   "version_id": None, "records_in": 1, "records_out": 1}],
                      **kw)


def minute(st: Store, key: str | None = None) -> tuple | None:
    """(n, sum) of the minute roll-up at T (of one key's series, or the first)."""
    k = s.series_keys
    with st.engine.connect() as conn:
        q = select(s.series_1m.c.n, s.series_1m.c.sum).join(
            k, k.c.id == s.series_1m.c.sid).where(k.c.flow == "fx", s.series_1m.c.bucket_ms == T)
        if key is not None:
            q = q.where(k.c.key == key)
        row = conn.execute(q).first()
    return tuple(row) if row else None


def marked(st: Store) -> int:
    with st.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(s.raw_status)).scalar_one()


def test_deferred_runs_are_shown_at_once_and_their_series_written_together(store):
    shown = []
    for i, rate in enumerate([1.0, 2.0, 4.0]):
        store.write_batch(run_batch(store, i, rate), T, stored=lambda: shown.append(1),
                          defer=True)
    # Values, and so the series points: stored and shown at once. Roll-ups, processed
    # marks: owed.
    assert len(shown) == 3
    assert store.latest("fx")[0]["data"]["rate"] == 4.0
    assert store.history("fx", "EURUSD", "rate") == [(T, 1.0), (T + 1000, 2.0), (T + 2000, 4.0)]
    assert minute(store) is None and marked(store) == 0
    rows, age = store.derived_owed()
    assert rows == 6 and age is not None
    # ... but the payloads count as processed: nothing would take them up again.
    assert store.pending_raw("fx") == []
    assert all(store.raw_processed(i) for i in (1, 2, 3))

    assert store.flush_derived() == 3
    assert store.history("fx", "EURUSD", "rate") == [(T, 1.0), (T + 1000, 2.0), (T + 2000, 4.0)]
    assert minute(store) == (3, 7.0)
    assert marked(store) == 3
    assert store.derived_owed() == (0, None)
    assert store.flush_derived() == 0


def test_a_write_that_is_not_deferred_writes_what_is_owed_first(store):
    store.write_batch(run_batch(store, 0, 1.0), T, stored=lambda: None, defer=True)
    store.write_batch(run_batch(store, 0, 3.0), T, stored=lambda: None)  # a correction
    assert store.derived_owed() == (0, None)
    assert store.history("fx", "EURUSD", "rate") == [(T, 3.0)]  # the later value wins
    assert minute(store) == (1, 3.0)
    assert marked(store) == 2


def test_issues_of_a_deferred_run_are_committed_at_once(store):
    issue = IssueDraft(flow="fx", kind="conflict", severity="warning", title="EURUSD differs",
                       fingerprint="conflict:fx:EURUSD", key="EURUSD")
    counts = store.write_batch(run_batch(store, 0, 1.0, issues=[issue]), T,
                               stored=lambda: None, defer=True)
    assert counts["issues_opened"] == 1
    assert [i["title"] for i in store.issues(flow="fx")] == ["EURUSD differs"]
    assert minute(store) is None  # its roll-ups still owed
    assert store.flush_derived() == 1
    assert minute(store) == (1, 1.0)


def test_a_flush_in_steps_marks_its_payloads_with_its_last_step(store):
    def minutes() -> list[tuple[int, float]]:
        return store.history("fx", "EURUSD", "rate", step_ms=MIN)

    for i, rate in enumerate([1.0, 2.0, 4.0]):  # a minute each
        store.write_batch(run_batch(store, i, rate, step_ms=MIN), T, stored=lambda: None,
                          defer=True)
    assert store.derived_seq() == (3, 0)
    assert store.flush_step(2) is False  # two of the three minutes; no payload marked yet
    assert minutes() == [(T, 1.0), (T + MIN, 2.0)]
    assert marked(store) == 0 and store.pending_raw("fx") == []
    # A batch deferred now waits for the next flush: this one took what was owed before.
    store.write_batch(run_batch(store, 3, 8.0, step_ms=MIN), T, stored=lambda: None,
                      defer=True)
    assert store.flush_step(2) is True
    assert marked(store) == 3 and store.derived_seq() == (4, 3)
    assert len(minutes()) == 3
    assert store.raw_processed(4) and store.pending_raw("fx") == []
    assert store.flush_step(2) is True and store.derived_seq() == (4, 4)
    assert minutes()[-1] == (T + 3 * MIN, 8.0) and marked(store) == 4
    assert store.flush_step(2) is True  # nothing owed


def test_runs_owed_across_a_recompute_are_not_added_to_it_again(store):
    """A roll-up recomputed from the records counts every committed record, also those of
    runs whose roll-ups are still owed: those runs must not add their points on top."""
    def batch(*recs) -> BatchWrite:
        return BatchWrite("fx", records=list(recs), series=[
            ("fx", r["key"], "rate", r["ts_ms"], r["data"]["rate"]) for r in recs])

    store.write_batch(batch(rec("AAA", T, 1.0)), T)
    # a correction (AAA) and a new point (EURUSD): the flush recomputes, a step per series
    store.write_batch(batch(rec("AAA", T, 5.0), rec("EURUSD", T, 1.0)), T,
                      stored=lambda: None, defer=True)
    assert store.flush_step(1) is False  # AAA's minute
    # a new run, committed while that flush is under way, owed to the next one
    store.write_batch(batch(rec("EURUSD", T + 1000, 2.0)), T, stored=lambda: None,
                      defer=True)
    assert store.flush_step(1) is True  # EURUSD's minute, from both its records
    assert minute(store, "EURUSD") == (2, 3.0)
    assert store.flush_step(1) is True  # the new run's: already counted, not added again
    assert minute(store, "EURUSD") == (2, 3.0) and minute(store, "AAA") == (1, 5.0)
    assert store.derived_owed() == (0, None)


def refuse_series(path) -> sqlite3.Connection:
    con = sqlite3.connect(path)
    con.execute("CREATE TRIGGER refuse_series BEFORE INSERT ON series_1m "
                "BEGIN SELECT RAISE(ABORT, 'series refused'); END")
    con.commit()
    return con


def test_a_failed_flush_keeps_everything_owed_until_a_later_one_succeeds(tmp_path):
    db = tmp_path / "flowdeck.db"
    st = Store(f"sqlite:///{db}")
    try:
        st.write_batch(run_batch(st, 0, 1.0), T, stored=lambda: None, defer=True)
        st.write_batch(run_batch(st, 1, 2.0), T, stored=lambda: None, defer=True)
        con = refuse_series(db)
        try:
            st.flush_derived()
            raise AssertionError("the flush should have failed")
        except Exception as exc:
            assert "series refused" in str(exc)
        # A run that is not deferred fails whole, and leaves what was owed owed.
        try:
            st.write_batch(run_batch(st, 2, 4.0), T, stored=lambda: None)
            raise AssertionError("the write should have failed")
        except Exception as exc:
            assert "series refused" in str(exc)
        assert st.derived_owed()[0] == 4
        assert marked(st) == 0 and minute(st) is None
        assert [r["id"] for r in st.pending_raw("fx")] == [3]  # only the failed run's

        con.execute("DROP TRIGGER refuse_series")
        con.commit()
        con.close()
        assert st.flush_derived() == 2
        # the failed run's record was committed before its roll-ups failed: its point
        # is shown, and rolled up once its payload is processed again
        assert st.history("fx", "EURUSD", "rate") == [(T, 1.0), (T + 1000, 2.0),
                                                      (T + 2000, 4.0)]
        assert minute(st) == (2, 3.0)  # each point counted once
        assert marked(st) == 2
    finally:
        st.close()


def test_past_the_bound_a_failing_store_gives_up_the_oldest_runs_whole(tmp_path):
    db = tmp_path / "flowdeck.db"
    st = Store(f"sqlite:///{db}")
    st.MAX_DERIVED_ROWS = 4  # two runs of one point and one mark
    try:
        for i in range(3):
            st.write_batch(run_batch(st, i, float(i)), T, stored=lambda: None, defer=True)
        con = refuse_series(db)
        try:
            st.flush_derived()
        except Exception:
            pass
        # The oldest run is given up: its payload is unprocessed again, to be taken up
        # by the next run's backlog (or resume); the two newer ones are still owed.
        assert [r["id"] for r in st.pending_raw("fx")] == [1]
        assert st.derived_owed()[0] == 4
        con.execute("DROP TRIGGER refuse_series")
        con.commit()
        con.close()
        assert st.flush_derived() == 2
        assert minute(st) == (2, 3.0)  # the two newer runs' points, 1.0 and 2.0
    finally:
        st.close()


# ---------------------------------------------------------------- through the engine

FLOW = """
store: {derived_delay: %s}
flows:
  fx:
    key: pair
    sources:
      - {name: q, kind: file, path: unused.jsonl, format: jsonl,
         fields: {pair: p, ts: t, rate: r}, timestamp: {format: epoch_ms}}
    fields:
      pair: {type: str, required: true}
      rate: {type: float, required: true}
"""


def payload_body(i: int) -> bytes:
    return (f'{{"p": "EURUSD", "t": {T + i * 1000}, "r": {1 + i}}}\n'
            f'{{"p": "GBPUSD", "t": {T + i * 1000}, "r": {2 + i}}}').encode()


async def started(tmp_path, clock, store_settings: str) -> tuple[Store, Engine]:
    """A store and an engine started on it (no schedule: the tests make the runs)."""
    store = Store(f"sqlite:///{tmp_path / 'flowdeck.db'}")
    text = FLOW.replace("{derived_delay: %s}", "{" + store_settings + "}")
    engine = Engine(parse_config(text, str(tmp_path / "f.yaml")), store, clock=clock)
    await engine.start(schedule=False, resume=False)
    return store, engine


async def until(check, seconds: float = 5.0) -> None:
    """Wait for something the engine does on its own (a timer), polling."""
    for _ in range(int(seconds / 0.025)):
        if check():
            return
        await asyncio.sleep(0.025)


def process(engine: Engine, store: Store, i: int) -> None:
    body = payload_body(i)
    draft = RawDraft("q", body, T)
    (draft.raw_id, _), = store.insert_raws("fx", [draft])
    engine.process_payloads("fx", [draft])


async def test_a_running_engine_writes_owed_series_a_moment_after_a_run(tmp_path, clock):
    """Without another run, a read or a stop: the timer writes them."""
    store, engine = await started(tmp_path, clock, "derived_delay: 50ms")
    try:
        await engine._db(process, engine, store, 0)
        await until(lambda: minute(store))
        assert minute(store, "EURUSD") == (1, 1.0)
        assert store.derived_owed() == (0, None)
    finally:
        await engine.stop()
        store.close()


async def test_history_read_through_the_caches_has_every_value_latest_shows(tmp_path, clock):
    """A reader that sees a value in latest and asks for its history gets it, though the
    series would still wait an hour: the read writes what is owed first."""
    store, engine = await started(tmp_path, clock, "derived_delay: 1h")
    try:
        for i in range(2):
            await engine._db(process, engine, store, i)
            await engine.caches.invalidate("fx", ["EURUSD"])  # as a run's end does
            latest = await engine.caches.latest("fx", "EURUSD")
            history = await engine.caches.history("fx", "EURUSD", "rate")
            assert history[-1] == [latest[0]["ts_ms"], latest[0]["data"]["rate"]]
        assert history == [[T, 1.0], [T + 1000, 2.0]]
    finally:
        await engine.stop()
        store.close()


async def test_a_records_event_is_delivered_after_the_cached_values_it_replaces_are_gone(
        tmp_path, clock):
    """A viewer that reads latest through the daemon when told of new values is not
    answered from the cache entry they replace."""
    store, engine = await started(tmp_path, clock, "derived_delay: 1h")
    try:
        await engine._db(process, engine, store, 0)
        assert (await engine.caches.latest("fx", "EURUSD"))[0]["data"]["rate"] == 1.0
        assert engine.caches.peek("fx", "latest", "EURUSD") is not None  # cached
        sub = engine.hub.subscribe(types={"records"})
        cached_when_told = []
        deliver = sub._put
        sub._put = lambda ev: (cached_when_told.append(
            engine.caches.peek("fx", "latest", "EURUSD")), deliver(ev))
        await engine._db(process, engine, store, 1)
        ev = await asyncio.wait_for(sub.get(), 5)
        assert [r["data"]["rate"] for r in ev.data["latest"]] == [2.0, 3.0]
        assert cached_when_told == [None]
        assert (await engine.caches.latest("fx", "EURUSD"))[0]["data"]["rate"] == 2.0
    finally:
        await engine.stop()
        store.close()


async def test_a_failed_timed_flush_is_tried_again_without_another_run(tmp_path, clock,
                                                                       caplog):
    store, engine = await started(tmp_path, clock, "derived_delay: 50ms, retry: 200ms")
    con = refuse_series(tmp_path / "flowdeck.db")
    try:
        await engine._db(process, engine, store, 0)
        await until(lambda: "writing deferred series failed" in caplog.text)
        assert "series refused" in caplog.text
        assert minute(store) is None and store.derived_owed()[0] == 3
        con.execute("DROP TRIGGER refuse_series")
        con.commit()
        await until(lambda: minute(store))  # store.retry later
        assert store.history("fx", "EURUSD", "rate") == [(T, 1.0)]
        assert marked(store) == 1
    finally:
        con.close()
        await engine.stop()
        store.close()


async def test_an_engine_stop_writes_what_is_owed(tmp_path, clock):
    store, engine = await started(tmp_path, clock, "derived_delay: 1h")
    try:
        for i in range(3):
            await engine._db(process, engine, store, i)
        assert [r["key"] for r in store.latest("fx")] == ["EURUSD", "GBPUSD"]
        assert minute(store) is None  # owed for up to an hour
    finally:
        await engine.stop()
    assert store.history("fx", "GBPUSD", "rate") == [(T, 2.0), (T + 1000, 3.0), (T + 2000, 4.0)]
    assert marked(store) == 3
    store.close()


CRASH = textwrap.dedent("""
    import asyncio, os, sys
    sys.path.insert(0, {tests!r})
    from test_deferred_series import FLOW, process
    from flowdeck.pipeline.config import parse_config
    from flowdeck.pipeline.engine.engine import Engine
    from flowdeck.storage.store import Store

    async def main():
        store = Store({url!r})
        engine = Engine(parse_config(FLOW % "1h", {cfg!r}), store)
        await engine.start(schedule=False, resume=False)
        for i in range(3):
            await engine._db(process, engine, store, i)
        for _ in range({steps}):
            await engine._db(store.flush_step, 1)
        os._exit(9)  # dies with (some of) the series of three runs owed

    asyncio.run(main())
""")


@pytest.mark.parametrize("steps", [0, 1], ids=["all owed", "mid-flush"])
async def test_series_owed_when_the_process_dies_are_completed_by_the_next_start(
        tmp_path, clock, steps):
    """Dead with every roll-up owed, or after a flush wrote one of its two (EURUSD's
    minute): the next start processes the three payloads again and each point counts
    once."""
    url = f"sqlite:///{tmp_path / 'flowdeck.db'}"
    cfg = str(tmp_path / "f.yaml")
    script = CRASH.format(tests=os.path.dirname(__file__), url=url, cfg=cfg, steps=steps)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 9, proc.stderr
    store = Store(url)
    try:
        assert [r["data"]["rate"] for r in store.latest("fx")] == [3.0, 4.0]  # committed
        # roll-ups in key order: a flush's first step wrote EURUSD's minute, not GBPUSD's
        assert (minute(store, "EURUSD") or (0,))[0] == 3 * steps
        assert minute(store, "GBPUSD") is None
        assert len(store.pending_raw("fx")) == 3  # never marked processed
        engine = Engine(parse_config(FLOW % "1h", cfg), store, clock=clock)
        await engine.start(schedule=False)  # resume takes them up again
        await engine.stop()
        assert store.pending_raw("fx") == []
        assert store.history("fx", "EURUSD", "rate") == [(T, 1.0), (T + 1000, 2.0),
                                                          (T + 2000, 3.0)]
        assert minute(store) is not None
        with store.engine.connect() as conn:
            n = conn.execute(select(s.series_1m.c.n).join(
                s.series_keys, s.series_keys.c.id == s.series_1m.c.sid).where(
                s.series_keys.c.key == "EURUSD", s.series_1m.c.bucket_ms == T)).scalar_one()
        assert n == 3  # each point counted once
        assert len(list(store.records_since("fx"))) == 6
    finally:
        store.close()
