"""End-to-end throughput through every stage into SQLite, against bare baselines.

The baseline is what any ingest must do at least: parse the same JSON lines and
`executemany` the same rows, in one transaction, with nothing else. "The same
rows" is what flowdeck stores per record: one row in a table shaped like
`records` (same DDL and indexes, JSON columns encoded) and one `series` row per
numeric field, plain INSERTs, no stages. A second, smaller baseline (4 columns,
one table: what this bench compared against before) is printed for reference.
Both run in this process, in this run, on the same data, so the ratios hold on
a noisy machine. DESIGN.md section 7 targets: >= 100,000 records/s and >= 0.35x.

    .venv/bin/python bench/bench_throughput.py [--records N]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.schema import CreateIndex, CreateTable

from flowdeck.pipeline.config import parse_config
from flowdeck.pipeline.core.clock import ManualClock
from flowdeck.pipeline.engine.engine import Engine
from flowdeck.storage import schema
from flowdeck.storage.model import RawDraft
from flowdeck.storage.store import Store

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
    resolve: {strategy: median}
    detect: [{metric: temperature, methods: [robust_z]}]
"""


def make_payload(n: int, t0_ms: int) -> bytes:
    lines = []
    for i in range(n):
        st = f"S{i % 1000:03d}"
        lines.append(json.dumps({"s": st, "t": t0_ms + (i // 1000) * 1000,
                                 "temp_f": 50 + (i % 37) * 0.5, "p": 1000 + i % 20,
                                 "w": (i % 15) * 0.7}))
    return ("\n".join(lines)).encode()


def _connect(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    return con


def baseline_minimal(body: bytes, path: Path) -> float:
    """Parse, then one 4-column row per record into one table (the old baseline)."""
    con = _connect(path)
    con.execute("create table records (flow text, key text, ts_ms integer, data text, "
                "primary key (flow, key, ts_ms))")
    t = time.perf_counter()
    rows = []
    for line in body.splitlines():
        d = json.loads(line)
        rows.append(("bench", d["s"], d["t"], json.dumps(d)))
    with con:
        con.executemany("insert into records values (?, ?, ?, ?)", rows)
    dt = time.perf_counter() - t
    con.close()
    return dt


SERIES_FIELDS = (("temp_f", "temperature"), ("p", "pressure"), ("w", "wind_speed"))


def baseline(body: bytes, path: Path) -> float:
    """Parse, then executemany the rows flowdeck stores: records + series, same table DDL."""
    con = _connect(path)
    dialect = sqlite_dialect.dialect()
    for table in (schema.records, schema.series):
        con.execute(str(CreateTable(table).compile(dialect=dialect)))
        for index in table.indexes:
            con.execute(str(CreateIndex(index).compile(dialect=dialect)))
    t = time.perf_counter()
    now = int(time.time() * 1000)
    records, series = [], []
    for line in body.splitlines():
        d = json.loads(line)
        key, ts = d["s"], d["t"]
        data = {"station": key, "temperature": d["temp_f"], "pressure": d["p"],
                "wind_speed": d["w"], "temperature_f": d["temp_f"]}
        records.append(("bench", key, ts, json.dumps(data), 1.0, 0.0, False, "[]", '["feed"]',
                        json.dumps({"feed": {"v": data, "ts": ts, "raw": 1, "q": 1.0,
                                             "f": []}}), "[1]", 1, now))
        for src_field, metric in SERIES_FIELDS:
            series.append(("bench", key, metric, ts, float(d[src_field])))
        series.append(("bench", key, "temperature_f", ts, float(d["temp_f"])))
    # Written in primary-key order, as flowdeck writes them: the baseline gets the same
    # b-tree locality, so the ratio measures the stages and bookkeeping, not the sort.
    records.sort(key=lambda r: (r[1], r[2]))
    series.sort()
    with con:
        con.executemany("insert into records (flow, key, ts_ms, data, quality, anomaly_score, "
                        "anomalous, flags, sources, contributions, raw_ids, version_id, "
                        "updated_ms) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", records)
        con.executemany("insert into series (flow, key, metric, ts_ms, value) "
                        "values (?, ?, ?, ?, ?)", series)
    dt = time.perf_counter() - t
    con.close()
    return dt


def flowdeck_run(body: bytes, path: Path, t0_ms: int) -> tuple[float, dict]:
    cfg = parse_config(CONFIG, str(path.parent / "bench.yaml"))
    store = Store(f"sqlite:///{path}")
    clock = ManualClock(t0_ms / 1000 + 3600)
    engine = Engine(cfg, store, clock=clock)
    raw_id, _ = store.insert_raw("bench", "feed", body, clock.now_ms())
    t = time.perf_counter()
    summary = engine.process_payloads("bench", [RawDraft("feed", body, clock.now_ms(),
                                                         raw_id=raw_id)])
    dt = time.perf_counter() - t
    engine.worker.shutdown()
    store.close()
    return dt, {k: v.as_dict() for k, v in summary.stages.items()}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=100_000)
    args = ap.parse_args()
    n = args.records
    t0_ms = 1_795_000_000_000
    body = make_payload(n, t0_ms)
    with tempfile.TemporaryDirectory() as d:
        base = baseline(body, Path(d) / "base.db")
        minimal = baseline_minimal(body, Path(d) / "minimal.db")
        ours, stages = flowdeck_run(body, Path(d) / "flowdeck.db", t0_ms)
    stored = stages["store"]["out"]
    assert stored == n, f"stored {stored} of {n}"
    print(f"records:             {n}")
    print(f"baseline (parse + executemany of the same rows: records + {len(SERIES_FIELDS) + 1} "
          f"series each): {n / base:10,.0f} records/s  ({base:.3f} s)")
    print(f"minimal baseline (parse + one 4-column row):        {n / minimal:10,.0f} records/s  "
          f"({minimal:.3f} s)")
    print(f"flowdeck (all stages, SQLite):                      {n / ours:10,.0f} records/s  "
          f"({ours:.3f} s)   (target >= 100,000)")
    print(f"ratio flowdeck/baseline:                            {base / ours:10.3f}   "
          "(target >= 0.35)")
    print(f"ratio flowdeck/minimal baseline:                    {minimal / ours:10.3f}")
    print("per stage ms: " + ", ".join(f"{k} {v['ms']:.0f}" for k, v in stages.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
