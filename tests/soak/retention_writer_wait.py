"""How long does a run's write wait while a retention pass deletes? A script, not a test:
`python tests/soak/retention_writer_wait.py [--old N]`.

N old records with series (and their roll-ups) are written, then, as in the engine, one
worker thread takes both the retention pass's steps (RetentionJob through ``run_db``)
and a writer's batches (100 records every 20 ms). Prints the writer's latency (queued to
committed) p50/p99/max without and with the pass running, and the pass's step count
and duration. Nothing is asserted: timings belong to scripts, not tests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from flowdeck.pipeline.config import parse_config
from flowdeck.pipeline.core.clock import ManualClock
from flowdeck.pipeline.engine.retention import RetentionJob
from flowdeck.storage.model import BatchWrite
from flowdeck.storage.store import Store

CONFIG = """
flows:
  fx:
    key: pair
    sources:
      - {name: q, kind: file, path: "/nonexistent/*.json", fields: {pair: p, ts: t}}
    fields: {pair: {type: str}, rate: {type: float}}
retention: {batch: 500}
"""
T = 1_795_521_600_000
DAY = 86_400_000


def rec(i: int, ts: int) -> dict:
    return {"flow": "fx", "key": f"K{i % 200}", "ts_ms": ts, "data": {"rate": 1.0},
            "quality": 1.0, "anomaly_score": 0.0, "anomalous": False, "flags": [],
            "sources": ["q"], "contributions": {}, "raw_ids": [], "version_id": None,
            "updated_ms": ts}


async def writer(loop, worker, store, start: int, seconds: float,
                 waits: list[float] | None = None, stop: asyncio.Event | None = None
                 ) -> list[float]:
    waits = [] if waits is None else waits
    i = start
    end = time.perf_counter() + seconds
    while time.perf_counter() < end and not (stop is not None and stop.is_set()):
        rows = [rec(i + j, T + 60 * DAY + (i + j) * 10) for j in range(100)]
        series = [("fx", r["key"], "rate", r["ts_ms"], 1.0) for r in rows]
        t0 = time.perf_counter()
        await loop.run_in_executor(worker, store.write_batch,
                                   BatchWrite("fx", records=rows, series=series), T)
        waits.append((time.perf_counter() - t0) * 1000)
        i += 100
        await asyncio.sleep(0.02)
    return waits


def summary(waits: list[float]) -> dict:
    q = statistics.quantiles(waits, n=100)
    return {"n": len(waits), "p50_ms": round(q[49], 1), "p99_ms": round(q[98], 1),
            "max_ms": round(max(waits), 1)}


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", type=int, default=200_000)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="flowdeck-retwait-"))
    store = Store(f"sqlite:///{root / 'w.db'}")
    for start in range(0, args.old, 10_000):
        rows = [rec(i, T + i * 1000) for i in range(start, start + 10_000)]
        store.write_batch(BatchWrite("fx", records=rows, series=[
            ("fx", r["key"], "rate", r["ts_ms"], 1.0) for r in rows]), T)
    loop = asyncio.get_running_loop()
    worker = ThreadPoolExecutor(1)

    async def run_db(fn, *a):
        return await loop.run_in_executor(worker, fn, *a)

    job = RetentionJob(parse_config(CONFIG), store, ManualClock((T + 100 * DAY) / 1000), run_db)
    idle = await writer(loop, worker, store, 10_000_000, 5.0)
    t0 = time.perf_counter()
    busy: list[float] = []
    stop = asyncio.Event()
    busy_task = asyncio.create_task(writer(loop, worker, store, 20_000_000, 3600, busy, stop))
    result = await job.run_pass()
    pass_s = time.perf_counter() - t0
    stop.set()
    await busy_task
    print(json.dumps({"old_records": args.old, "pass_s": round(pass_s, 1),
                      "steps": result["steps"], "deleted": result["deleted"],
                      "writer_idle": summary(idle), "writer_during_pass": summary(busy)}))
    store.close()


if __name__ == "__main__":
    asyncio.run(main())
