"""A simulated month under retention: does the database hold a steady size? A script, not
a test (pytest does not collect it): `python tests/soak/retention_soak.py [--days 30]`.

A ManualClock compresses the month: every simulated 10 minutes one run's worth of
payloads goes through the store's own write path (raw payload committed, then records,
latest, series and roll-ups and raw status in one batch, as the engine writes them), and
every simulated 6 hours the engine's RetentionJob makes a pass with short retention
(raw and series 1 day, records 3 days, minute roll-ups 7 days, hour roll-ups 30 days).
Prints one JSON line per simulated day: rows per table, file size, free pages.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
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
retention: {raw: 1d, records: 3d, series: 1d, series_1m: 7d, series_1h: 30d, batch: 500,
            keep_lineage: false}
"""
T0 = 1_795_478_400_000  # 2026-11-24T00:00Z
STEP_MS = 600_000
KEYS = 60


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--days", type=int, default=30)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="flowdeck-soak-"))
    db = root / "soak.db"
    store = Store(f"sqlite:///{db}")
    clock = ManualClock(T0 / 1000)

    async def run_db(fn, *a):
        return await asyncio.to_thread(fn, *a)

    job = RetentionJob(parse_config(CONFIG), store, clock, run_db)
    steps_per_day = 86_400_000 // STEP_MS
    for day in range(args.days):
        for i in range(steps_per_day):
            now = T0 + (day * steps_per_day + i) * STEP_MS
            clock.set(now / 1000)
            body = json.dumps([{"p": f"K{k}", "t": now, "v": k + i / 1000}
                               for k in range(KEYS)]).encode()
            raw_id, _ = store.insert_raw("fx", "q", body, now)
            recs = [{"flow": "fx", "key": f"K{k}", "ts_ms": now,
                     "data": {"pair": f"K{k}", "rate": k + i / 1000}, "quality": 1.0,
                     "anomaly_score": 0.0, "anomalous": False, "flags": [], "sources": ["q"],
                     "contributions": {}, "raw_ids": [raw_id], "version_id": None,
                     "updated_ms": now} for k in range(KEYS)]
            series = [("fx", r["key"], "rate", now, r["data"]["rate"]) for r in recs]
            store.write_batch(BatchWrite("fx", records=recs, series=series, raw_status=[
                {"raw_id": raw_id, "outcome": "ok", "processed_ms": now, "version_id": None,
                 "records_in": KEYS, "records_out": KEYS}]), now)
            if i % (steps_per_day // 4) == steps_per_day // 4 - 1:
                await job.run_pass()
        st = job.snapshot()
        print(json.dumps({"day": day + 1, "size_bytes": st["size_bytes"],
                          "free_pages": (job.last_pass or {}).get("vacuum", {}).get("free_pages"),
                          "rows": {k: v["rows"] for k, v in st["tables"].items()
                                   if k in ("raw_payloads", "records", "series", "series_1m",
                                            "series_1h")}}), flush=True)
    store.close()


if __name__ == "__main__":
    asyncio.run(main())
