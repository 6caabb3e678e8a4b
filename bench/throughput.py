"""End-to-end throughput through all seven stages into SQLite and PostgreSQL, against
the floor: what any ingest must do at least, run in this process, on the same input.

The input is ``records`` JSON lines cut into payloads of ``batch`` records (1,000 by
default: one payload per run, as a streaming source delivers them). flowdeck takes each
payload through collect, validate, transform, enrich, quality, resolve and detect into
the store (``Engine.process_payloads``: one run per payload, committed in two
transactions, its records and ``latest`` first, then its roll-ups and raw status, as
the engine writes with no ``store.derived_delay``; a daemon's default delay folds the
second into fewer, larger ones); the payloads are committed raw first, untimed, as a
fetch does before any stage sees them.

The floor (``pipeline_ratio_vs_floor``) is the *minimal* ingest: orjson parse plus one
row per record (flow, key, ts, data as JSON) with sqlite3 ``executemany``, one
transaction per payload. The PostgreSQL floor is the same with psycopg 3
``executemany`` (pipelined). A third baseline, "same rows", writes what flowdeck's
schema stores per record (the records row, whose values are the series points) with no
stage at all; it reads the table shapes from ``flowdeck.storage.schema`` and is
reported only while that layout has those tables. A fourth, "blocks", writes the same
values as per-key blocks (a row per key and payload): the ceiling of the next layout
docs/architecture.md names. Both run in the full run only.

    .venv/bin/python -m bench.throughput [--records N] [--profile]
    .venv/bin/python -m bench.throughput --store-only [--records N] [--keys K] [--pg]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from bench.common import PG_ADMIN, Figure, Options, log
from flowdeck.pipeline.config import Config, parse_config
from flowdeck.pipeline.core.clock import ManualClock
from flowdeck.pipeline.engine.engine import Engine
from flowdeck.storage.model import RawDraft
from flowdeck.storage.store import Store

FLOW = "bench"
# 60 stations, as a real feed of a few dozen keys: 100,000 records give each series
# ~1,700 points, so detection scores nearly all of them past its warm-up
# (min_history + warmup = 160 points). With 1,000 stations each series had 100 points,
# detection never left its warm-up (nothing could be flagged) and the engine rightly
# warned that the first run's 1,000 records each had a key of their own.
STATIONS = 60
REFERENCE_STATIONS = 1000  # the enrich table: every station of the network
T0_MS = 1_795_000_000_000
CONFIG = """
flows:
  bench:
    key: station
    sources:
      - name: feed
        kind: file
        path: unused.jsonl
        format: jsonl
        fields: {station: s, ts: t, temperature: temp_f, pressure: p, wind_speed: w}
        timestamp: {format: epoch_ms}
        units: {temperature: degF}
    fields:
      station: {type: str, required: true, pattern: "^[A-Z0-9]{4}$"}
      temperature: {type: float, required: true, unit: degC, range: [-90, 60]}
      pressure: {type: float, range: [850, 1090]}
      wind_speed: {type: float, range: [0, 120]}
    derive: {temperature_f: "temperature * 1.8 + 32"}
    enrich: [{table: stations.csv, on: station, add: [elevation, region]}]
    resolve: {strategy: median}
    detect: [{metric: temperature, methods: [robust_z]}]
"""


def write_reference(folder: Path) -> Path:
    """The enrich stage's table: every station but one in twenty (those are unenriched)."""
    path = folder / "stations.csv"
    rows = ["station,elevation,region"]
    rows += [f"S{i:03d},{(i * 37) % 2000},R{i % 7}" for i in range(REFERENCE_STATIONS)
             if i % 20 != 19]
    path.write_text("\n".join(rows) + "\n")
    return path


def make_config(folder: Path) -> Config:
    write_reference(folder)
    return parse_config(CONFIG, str(folder / "bench.yaml"))


def make_payloads(n: int, batch: int, t0_ms: int = T0_MS) -> list[bytes]:
    """n records of STATIONS stations, one reading per station per second, in payloads."""
    lines = []
    for i in range(n):
        lines.append(json.dumps({"s": f"S{i % STATIONS:03d}", "t": t0_ms + (i // STATIONS) * 1000,
                                 "temp_f": 50 + (i % 37) * 0.5 + (i // 7919 % 3) * 0.1,
                                 "p": 1000 + i % 20, "w": (i % 15) * 0.7}))
    return ["\n".join(lines[k:k + batch]).encode() for k in range(0, n, batch)]


# ---------------------------------------------------------------- the floor


Statements = list[tuple[str, list[tuple]]]  # (SQL, rows) pairs for executemany


def _timed_writes(path: Path, ddl: list[str], payloads: list[bytes],
                  statements_of: Callable[[int, bytes], Statements]) -> float:
    """A new SQLite file (WAL, synchronous=NORMAL, as flowdeck's) with ``ddl``, then
    each payload's statements (``statements_of(raw id, payload)``, which parses it) in a
    transaction of its own; the seconds from the first parse to the last commit."""
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    for one in ddl:
        con.execute(one)
    t = time.perf_counter()
    for raw_id, body in enumerate(payloads, 1):
        statements = statements_of(raw_id, body)
        con.execute("begin")
        for sql, rows in statements:
            con.executemany(sql, rows)
        con.execute("commit")
    dt = time.perf_counter() - t
    con.close()
    return dt


def floor_sqlite(payloads: list[bytes], path: Path) -> float:
    """orjson parse + one 4-column row per record, executemany, a transaction per payload."""
    loads, dumps = orjson.loads, orjson.dumps

    def statements(_raw_id: int, body: bytes) -> Statements:
        rows = []
        for line in body.splitlines():
            d = loads(line)
            rows.append((FLOW, d["s"], d["t"], dumps(d).decode()))
        return [("insert into records values (?, ?, ?, ?)", rows)]

    return _timed_writes(path, ["create table records (flow text, key text, ts_ms integer, "
                                "data text, primary key (flow, key, ts_ms))"],
                         payloads, statements)


def floor_pg(payloads: list[bytes], dsn: str) -> float:
    """The same floor into PostgreSQL: psycopg 3 executemany (pipelined), a transaction
    per payload."""
    import psycopg

    loads, dumps = orjson.loads, orjson.dumps
    with psycopg.connect(dsn) as con:
        con.execute("create table floor_records (flow text, key text, ts_ms bigint, data jsonb, "
                    "primary key (flow, key, ts_ms))")
        con.commit()
        t = time.perf_counter()
        for body in payloads:
            rows = []
            for line in body.splitlines():
                d = loads(line)
                rows.append((FLOW, d["s"], d["t"], dumps(d).decode()))
            with con.cursor() as cur:
                cur.executemany("insert into floor_records values (%s, %s, %s, %s)", rows)
            con.commit()
        dt = time.perf_counter() - t
    return dt


SERIES_FIELDS = (("temp_f", "temperature"), ("p", "pressure"), ("w", "wind_speed"))
METRICS = tuple(m for _src, m in (*SERIES_FIELDS, ("temp_f", "temperature_f")))


def _data(d: dict) -> dict:
    """A parsed line's values as the bench flow's record holds them."""
    return {"station": d["s"], "temperature": d["temp_f"], "pressure": d["p"],
            "wind_speed": d["w"], "temperature_f": d["temp_f"]}


# The records table of migration 0006 (a row per record), as ``rows_layout_sqlite``
# writes it: the layout before the record blocks.
ROWS_DDL = [
    'CREATE TABLE "records" ("id" INTEGER PRIMARY KEY, "flow" TEXT NOT NULL, '
    '"key" TEXT NOT NULL, "ts_ms" BIGINT NOT NULL, "data" JSON NOT NULL, '
    '"quality" FLOAT NOT NULL, "anomaly_score" FLOAT NOT NULL, "anomalous" BOOLEAN NOT NULL, '
    '"flags" JSON NOT NULL, "sources" JSON NOT NULL, "contributions" JSON NOT NULL, '
    '"raw_ids" JSON NOT NULL, "version_id" BIGINT, "updated_ms" BIGINT NOT NULL, '
    'CONSTRAINT "uq_records_flow_ts_key" UNIQUE ("flow", "ts_ms", "key"))',
    'CREATE INDEX "ix_records_flow_key_ts" ON "records" ("flow", "key", "ts_ms")',
]
SERIES_KEYS_DDL = (
    'CREATE TABLE "series_keys" ("id" INTEGER PRIMARY KEY, "flow" TEXT NOT NULL, '
    '"key" TEXT NOT NULL, "metric" TEXT NOT NULL, UNIQUE ("flow", "key", "metric"))')


def rows_layout_sqlite(payloads: list[bytes], path: Path) -> float:
    """The layout before the record blocks (migration 0006), with no stage: a records row
    per record (its series points are its values) and a series_keys row the first time a
    series is seen, a transaction per payload: the "before" of the storage change."""
    from flowdeck.storage.codec import CONTRIB_AS_ROW_JSON

    loads, dumps = orjson.loads, orjson.dumps
    now = int(time.time() * 1000)
    sids: set[tuple[str, str]] = set()

    def statements(_raw_id: int, body: bytes) -> Statements:
        records, new_keys = [], []
        for line in body.splitlines():
            d = loads(line)
            key, ts, data = d["s"], d["t"], _data(d)
            # one source's reading: its contributions stored as "row", as flowdeck did
            records.append((FLOW, key, ts, dumps(data).decode(), 1.0, 0.0, False, "[]",
                            '["feed"]', CONTRIB_AS_ROW_JSON, "[1]", 1, now))
            new_keys += _new_series(sids, key)
        return [("insert into records (flow, key, ts_ms, data, quality, anomaly_score, "
                 "anomalous, flags, sources, contributions, raw_ids, version_id, "
                 "updated_ms) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", records),
                ("insert into series_keys (flow, key, metric) values (?, ?, ?)", new_keys)]

    return _timed_writes(path, [*ROWS_DDL, SERIES_KEYS_DDL], payloads, statements)


def _new_series(sids: set[tuple[str, str]], key: str) -> list[tuple[str, str, str]]:
    """The series_keys rows of a key's metrics not seen before (and now seen)."""
    new = [(FLOW, key, m) for m in METRICS if (key, m) not in sids]
    sids.update((key, m) for _f, _k, m in new)
    return new


def same_rows_sqlite(payloads: list[bytes], path: Path) -> float:
    """What flowdeck stores per payload, with no stage: its records grouped by key, a
    ``record_blocks`` row per key (and hour) holding its records' fields as columns, the
    body flowdeck writes (``flowdeck.storage.blocks``), with the schema's own DDL and
    indexes, and a series_keys row the first time a series is seen; a transaction per
    payload. The same input, parse and values as the floor."""
    from sqlalchemy.dialects import sqlite as sqlite_dialect
    from sqlalchemy.schema import CreateIndex, CreateTable

    from flowdeck.storage import schema
    from flowdeck.storage.blocks import SPAN_MS, encode
    from flowdeck.storage.codec import CONTRIB_AS_ROW

    dialect = sqlite_dialect.dialect()
    table = schema.record_blocks
    ddl = [str(CreateTable(table).compile(dialect=dialect)),
           *(str(CreateIndex(index).compile(dialect=dialect)) for index in table.indexes),
           SERIES_KEYS_DDL]
    loads = orjson.loads
    now = int(time.time() * 1000)
    sids: set[tuple[str, str]] = set()

    def statements(raw_id: int, body: bytes) -> Statements:
        by_key: dict[tuple[str, int], tuple[list, list]] = {}
        for line in body.splitlines():
            d = loads(line)
            ts = d["t"]
            block = by_key.get(bk := (d["s"], ts - ts % SPAN_MS))
            if block is None:
                block = by_key[bk] = ([], [])
            block[0].append(ts)
            block[1].append(_data(d))
        rows, new_keys = [], []
        for (key, _hour), (ts, data) in by_key.items():
            n = len(ts)
            rows.append((FLOW, key, ts[0], ts[-1], n, encode(
                {"ts_ms": ts, "data": data, "quality": [1.0] * n, "anomaly_score": [0.0] * n,
                 "anomalous": [False] * n, "flags": [[]] * n, "sources": [["feed"]] * n,
                 "contributions": [CONTRIB_AS_ROW] * n, "raw_ids": [[raw_id]] * n,
                 "version_id": [1] * n, "updated_ms": [now] * n})))
            new_keys += _new_series(sids, key)
        return [('INSERT INTO "record_blocks" ("flow", "key", "first_ms", "last_ms", "n", '
                 '"body") VALUES (?, ?, ?, ?, ?, ?)', rows),
                ('INSERT INTO "series_keys" ("flow", "key", "metric") VALUES (?, ?, ?)',
                 new_keys)]

    return _timed_writes(path, ddl, payloads, statements)


# ---------------------------------------------------------------- flowdeck


def flowdeck_run(payloads: list[bytes], url: str, folder: Path,
                 profile: cProfile.Profile | None = None) -> tuple[float, dict[str, Any]]:
    """All stages into the store at ``url``, one run per payload; seconds and stage stats.

    Timed: every run and the store's close (which writes whatever a store holds back)."""
    cfg = make_config(folder)
    store = Store(url)
    clock = ManualClock(T0_MS / 1000 + 3600)
    engine = Engine(cfg, store, clock=clock)
    drafts = [RawDraft("feed", body, clock.now_ms()) for body in payloads]
    for draft, (raw_id, _new) in zip(drafts, store.insert_raws(FLOW, drafts), strict=True):
        draft.raw_id = raw_id
    stages: dict[str, dict[str, float]] = {}
    if profile is not None:
        profile.enable()
    t = time.perf_counter()
    for draft in drafts:
        summary = engine.process_payloads(FLOW, [draft])
        for name, st in summary.stages.items():
            d = st.as_dict()
            acc = stages.setdefault(name, {"in": 0, "out": 0, "ms": 0.0})
            acc["in"] += d["in"]
            acc["out"] += d["out"]
            acc["ms"] += d["ms"]
    store.close()
    dt = time.perf_counter() - t
    if profile is not None:
        profile.disable()
    engine.worker.shutdown()
    engine.reader.shutdown()
    return dt, stages


def stored_records(url: str) -> dict[tuple[str, int], dict[str, Any]]:
    """What flowdeck stored, through the store's read API (for the Bytewax comparison)."""
    store = Store(url)
    try:
        out = {}
        for row in store.records_since(FLOW, 0):
            out[(row["key"], row["ts_ms"])] = {
                "data": row["data"], "quality": row["quality"],
                "anomaly_score": row["anomaly_score"], "anomalous": bool(row["anomalous"]),
                "flags": list(row["flags"])}
        return out
    finally:
        store.close()


# ---------------------------------------------------------------- PostgreSQL


class PgDatabase:
    """A database of its own on the local PostgreSQL, created and dropped."""

    def __init__(self, admin: str = PG_ADMIN) -> None:
        self.admin = admin
        self.name = f"flowdeck_bench_{uuid.uuid4().hex[:10]}"

    def __enter__(self) -> PgDatabase:
        import psycopg

        with psycopg.connect(self.admin, autocommit=True, connect_timeout=3) as con:
            con.execute(f'create database "{self.name}"')
        return self

    @property
    def dsn(self) -> str:
        base, _, _db = self.admin.rpartition("/")
        return f"{base}/{self.name}"

    @property
    def url(self) -> str:
        return "postgresql+psycopg://" + self.dsn.split("://", 1)[1]

    def __exit__(self, *exc: object) -> None:
        import psycopg

        with psycopg.connect(self.admin, autocommit=True) as con:
            con.execute(f'drop database if exists "{self.name}" with (force)')


def pg_reason() -> str | None:
    """None when PostgreSQL answers at FLOWDECK_BENCH_PG, else why not."""
    try:
        import psycopg
    except ImportError as exc:
        return f"psycopg is not installed ({exc})"
    try:
        with psycopg.connect(PG_ADMIN, connect_timeout=3) as con:
            con.execute("select 1")
    except Exception as exc:
        return f"PostgreSQL is not reachable at {PG_ADMIN.split('@')[-1]}: {exc}".strip()
    return None


# ---------------------------------------------------------------- the harness


def profile_text(prof: cProfile.Profile, top: int = 15) -> str:
    s = io.StringIO()
    pstats.Stats(prof, stream=s).strip_dirs().sort_stats("cumulative").print_stats(top)
    return s.getvalue()


def run(opts: Options, profile: bool = False) -> tuple[list[Figure], dict[str, Any]]:
    """The SQLite and PostgreSQL figures, and Bytewax's on the same input in the same run."""
    from bench import bytewax_chain

    n = opts.n(100_000, 10_000, least=2_000)
    batch = 1000
    rounds = 1 if opts.quick else 3
    payloads = make_payloads(n, batch)
    warm = payloads[: max(2, len(payloads) // 10)]
    extra: dict[str, Any] = {"records": n, "batch": batch, "rounds": rounds}
    ours, floor, same, rows_layout, bw = [], [], [], [], []
    bw_reason = bytewax_chain.unavailable()
    same_reason = None
    stages: dict[str, Any] = {}
    identical: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="flowdeck-bench-") as d:
        root = Path(d)
        # warm-up: imports, pydantic's validators, SQLite's page cache, the allocator
        floor_sqlite(warm, root / "warm-floor.db")
        (root / "warm").mkdir()
        flowdeck_run(warm, f"sqlite:///{root / 'warm' / 'f.db'}", root / "warm")
        if bw_reason is None:
            bytewax_chain.run_chain(warm, make_config(root / "warm"))
        for r in range(rounds):
            log(f"  throughput round {r + 1}/{rounds}: {n:,} records in payloads of {batch}")
            floor.append(floor_sqlite(payloads, root / f"floor{r}.db"))
            folder = root / f"run{r}"
            folder.mkdir()
            url = f"sqlite:///{folder / 'flowdeck.db'}"
            dt, stages = flowdeck_run(payloads, url, folder)
            ours.append(dt)
            if bw_reason is None:
                bdt, out = bytewax_chain.run_chain(payloads, make_config(folder))
                bw.append(bdt)
                if r == 0:
                    identical = bytewax_chain.compare(out, stored_records(url))
            if same_reason is None and not opts.quick:
                try:
                    same.append(same_rows_sqlite(payloads, root / f"same{r}.db"))
                except Exception as exc:  # the layout changed: this baseline no longer applies
                    same_reason = f"the schema no longer has the tables it writes ({exc})"
            if not opts.quick:
                rows_layout.append(rows_layout_sqlite(payloads, root / f"rows{r}.db"))
        prof_sqlite = None
        if profile:
            prof = cProfile.Profile()
            (root / "prof").mkdir()
            flowdeck_run(payloads, f"sqlite:///{root / 'prof' / 'f.db'}", root / "prof", prof)
            prof_sqlite = profile_text(prof)
        stored = stages.get("store", {}).get("out", 0)
        if stored != n:
            raise RuntimeError(f"flowdeck stored {stored} of {n} records")
        t_ours, t_floor = statistics.median(ours), statistics.median(floor)
        extra.update({"flowdeck_s": ours, "floor_s": floor,
                      "floor_records_per_s": n / t_floor,
                      "stage_ms": {k: round(v["ms"], 1) for k, v in stages.items()}})
        if same:
            extra["same_rows_records_per_s"] = n / statistics.median(same)
            extra["same_rows_ratio_vs_floor"] = t_floor / statistics.median(same)
            extra["ratio_vs_same_rows"] = statistics.median(same) / t_ours
        else:
            extra["same_rows_records_per_s"] = None
            extra["same_rows_reason"] = same_reason or "measured in the full run only"
        if rows_layout:
            extra["rows_layout_records_per_s"] = n / statistics.median(rows_layout)
            extra["rows_layout_ratio_vs_floor"] = t_floor / statistics.median(rows_layout)
            log(f"   no-stage ceilings: this layout's blocks "
                f"{extra['same_rows_records_per_s'] or 0:,.0f} rec/s "
                f"({extra.get('same_rows_ratio_vs_floor') or 0:.2f} x the floor), the row per "
                f"record before it {extra['rows_layout_records_per_s']:,.0f} rec/s "
                f"({extra['rows_layout_ratio_vs_floor']:.2f} x)")
        else:
            extra["rows_layout_records_per_s"] = None
            extra["rows_layout_reason"] = "measured in the full run only"
        figures = [
            Figure("pipeline_records_per_s", n / t_ours, ">= 100000",
                   f"floor {n / t_floor:,.0f} rec/s", "rec/s",
                   extra={"stage_ms": extra["stage_ms"]}),
            Figure("pipeline_ratio_vs_floor", t_floor / t_ours, ">= 0.5",
                   f"orjson + sqlite3 executemany, {n / t_floor:,.0f} rec/s", "x"),
        ]
        if bw_reason is None:
            t_bw = statistics.median(bw)
            extra.update({"bytewax_s": bw, "bytewax_records_per_s": n / t_bw,
                          "bytewax_identical_output": identical})
            if identical and not identical["identical"]:
                bw_reason = f"Bytewax's output differs from flowdeck's: {identical}"
            figures.append(Figure(
                "bytewax_ratio", None if bw_reason else t_bw / t_ours, ">= 1.5",
                f"Bytewax 0.21, 1 worker, {n / t_bw:,.0f} rec/s", "x", reason=bw_reason))
        else:
            figures.append(Figure("bytewax_ratio", None, ">= 1.5", "Bytewax 0.21", "x",
                                  reason=bw_reason))
        # PostgreSQL is an order of magnitude slower today: a quarter of the input (at least
        # 5 payloads) in --quick, one round in the full run, so the run stays bounded.
        pg_payloads = payloads[: max(5, len(payloads) // 4)] if opts.quick else payloads
        pg = run_pg(pg_payloads, warm, 1, root, profile)
        figures.append(pg[0])
        extra.update(pg[1])
        if prof_sqlite:
            extra["profile_sqlite"] = prof_sqlite
    return figures, extra


def run_pg(payloads: list[bytes], warm: list[bytes], rounds: int, root: Path,
           profile: bool) -> tuple[Figure, dict[str, Any]]:
    n = sum(body.count(b"\n") + 1 for body in payloads)
    reason = pg_reason()
    if reason is not None:
        return Figure("pipeline_pg_records_per_s", None, ">= 100000", "PostgreSQL floor",
                      "rec/s", reason=reason), {}
    ours, floor = [], []
    extra: dict[str, Any] = {}
    with PgDatabase() as w:
        (root / "pgwarm").mkdir()
        flowdeck_run(warm, w.url, root / "pgwarm")
        floor_pg(warm, w.dsn)
    for r in range(rounds):
        log(f"  PostgreSQL round {r + 1}/{rounds}")
        with PgDatabase() as db:
            floor.append(floor_pg(payloads, db.dsn))
        with PgDatabase() as db:
            folder = root / f"pg{r}"
            folder.mkdir()
            dt, stages = flowdeck_run(payloads, db.url, folder)
            ours.append(dt)
    if profile:
        with PgDatabase() as db:
            prof = cProfile.Profile()
            (root / "pgprof").mkdir()
            flowdeck_run(payloads, db.url, root / "pgprof", prof)
            extra["profile_pg"] = profile_text(prof)
    t_ours, t_floor = statistics.median(ours), statistics.median(floor)
    extra.update({"pg_records": n, "pg_flowdeck_s": ours, "pg_floor_s": floor,
                  "pg_floor_records_per_s": n / t_floor, "pg_ratio_vs_floor": t_floor / t_ours,
                  "pg_stage_ms": {k: round(v["ms"], 1) for k, v in stages.items()}})
    return Figure("pipeline_pg_records_per_s", n / t_ours, ">= 100000",
                  f"PG floor (psycopg executemany) {n / t_floor:,.0f} rec/s", "rec/s",
                  extra={"ratio_vs_pg_floor": round(t_floor / t_ours, 3)}), extra


# ---------------------------------------------------------------- the store alone


STORE_METRICS = ("temperature", "pressure", "wind_speed", "temperature_f")


def store_batches(n: int, keys: int) -> list[Any]:
    """n records of this flow's shape as the engine hands them to the store (records and
    their points), in 1,000-record batches."""
    from flowdeck.storage.model import BatchWrite

    out = []
    for b in range(0, n, 1000):
        recs, pts = [], []
        for i in range(b, min(n, b + 1000)):
            key, ts = f"S{i % keys:03d}", T0_MS + (i // keys) * 1000
            data = {"station": key, "temperature": 10 + (i % 37) * 0.5,
                    "pressure": 1000.0 + i % 20, "wind_speed": (i % 15) * 0.7,
                    "temperature_f": 50.0 + i % 37, "elevation": 37, "region": "R1"}
            raw = b // 1000 + 1
            recs.append({"flow": FLOW, "key": key, "ts_ms": ts, "data": data, "quality": 1.0,
                         "anomaly_score": 0.0, "anomalous": False, "flags": [],
                         "sources": ["feed"], "raw_ids": [raw], "version_id": 1,
                         "contributions": {"feed": {"v": data, "ts": ts, "raw": raw, "q": 1.0,
                                                    "f": []}}, "updated_ms": T0_MS})
            pts.extend((FLOW, key, m, ts, float(data[m])) for m in STORE_METRICS)
        out.append(BatchWrite(FLOW, records=recs, series=pts))
    return out


def store_alone(url: str, n: int, keys: int) -> tuple[float, float]:
    """``Store.write_batch`` alone, deferred and flushed as a running engine does
    (FLUSH_ROWS, STEP_ROWS): (CPU seconds of this process, wall seconds). CPU time is
    what to compare on a shared machine."""
    from flowdeck.pipeline.engine.deferred import FLUSH_ROWS, STEP_ROWS

    batches = store_batches(n, keys)
    store = Store(url)
    c0, w0 = time.process_time(), time.perf_counter()
    for b in batches:
        store.write_batch(b, T0_MS, stored=lambda: None, defer=True)
        if store.derived_owed()[0] >= FLUSH_ROWS:
            while not store.flush_step(STEP_ROWS):
                pass
    store.close()
    return time.process_time() - c0, time.perf_counter() - w0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--profile", action="store_true", help="cProfile top 15 by cumtime")
    ap.add_argument("--store-only", action="store_true",
                    help="Store.write_batch alone (no stages): CPU and wall records/s")
    ap.add_argument("--keys", type=int, default=STATIONS, help="with --store-only")
    ap.add_argument("--pg", action="store_true", help="with --store-only: into PostgreSQL")
    args = ap.parse_args()
    if args.store_only:
        if args.pg:
            reason = pg_reason()
            if reason is not None:
                print(reason)
                return 1
            with PgDatabase() as db:
                cpu, wall = store_alone(db.url, args.records, args.keys)
        else:
            with tempfile.TemporaryDirectory(prefix="flowdeck-bench-") as d:
                cpu, wall = store_alone(f"sqlite:///{d}/f.db", args.records, args.keys)
        print(f"store alone, {args.records:,} records, {args.keys} keys: "
              f"{args.records / cpu:,.0f} rec/s CPU ({cpu:.2f} s), "
              f"{args.records / wall:,.0f} rec/s wall ({wall:.2f} s)")
        return 0
    opts = Options(quick=False, scale=args.records / 100_000)
    figures, extra = run(opts, profile=args.profile)
    for f in figures:
        print(f"{f.key:28} {f.value if f.value is None else round(f.value, 3)!s:>12}  "
              f"target {f.target:10}  baseline {f.baseline}  {f.reason or ''}")
    for k in ("profile_sqlite", "profile_pg"):
        if k in extra:
            print(f"\n== {k}\n{extra.pop(k)}")
    print(json.dumps(extra, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
