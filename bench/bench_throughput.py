"""End-to-end throughput through every stage into SQLite, against a bare baseline.

The baseline is what any ingest must do at least: parse the same JSON lines and
`executemany` the same rows into a table of the same shape, in one transaction.
Both run in this process, in this run, on the same data, so the ratio holds on
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

from flowdeck.pipeline.clock import ManualClock
from flowdeck.pipeline.config import parse_config
from flowdeck.pipeline.engine import Engine, Payload
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


def baseline(body: bytes, path: Path) -> float:
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
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


def flowdeck_run(body: bytes, path: Path, t0_ms: int) -> tuple[float, dict]:
    cfg = parse_config(CONFIG, str(path.parent / "bench.yaml"))
    store = Store(f"sqlite:///{path}")
    clock = ManualClock(t0_ms / 1000 + 3600)
    engine = Engine(cfg, store, clock=clock)
    raw_id, _ = store.insert_raw("bench", "feed", body, clock.now_ms())
    t = time.perf_counter()
    summary = engine.process_payloads("bench", [Payload(raw_id, "feed", body, None,
                                                        clock.now_ms())])
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
        ours, stages = flowdeck_run(body, Path(d) / "flowdeck.db", t0_ms)
    stored = stages["store"]["out"]
    assert stored == n, f"stored {stored} of {n}"
    print(f"records:             {n}")
    print(f"baseline (parse + executemany): {n / base:12,.0f} records/s  ({base:.3f} s)")
    print(f"flowdeck (all stages, SQLite):  {n / ours:12,.0f} records/s  ({ours:.3f} s)")
    print(f"ratio flowdeck/baseline:        {base / ours:12.3f}   (target >= 0.35)")
    print("per stage ms: " + ", ".join(f"{k} {v['ms']:.0f}" for k, v in stages.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
