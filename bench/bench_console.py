"""Console responsiveness while the engine ingests: key-to-repaint latency.

Runs the real console (headless, Textual's pilot) on a real engine in the same
process, once idle and once while a feeder writes 10,000 records/s into a file
source that the engine polls every 100 ms. For each, presses keys that switch
screens and sort tables, and times each key until the app is idle again
(repainted). Prints p50/p99 for both and the ratio. DESIGN.md section 7 target:
key to repaint under 100 ms while the engine runs at 10,000 records/s.

    .venv/bin/python bench/bench_console.py [--rate 10000] [--keys 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from flowdeck.console.app import FlowdeckApp
from flowdeck.pipeline.config import parse_config
from flowdeck.pipeline.control import LocalControl
from flowdeck.pipeline.engine import Engine
from flowdeck.storage.store import Store

CONFIG = """
flows:
  load:
    schedule: {{every: 100ms}}
    key: sensor
    sources:
      - {{name: drop, kind: file, path: "{folder}/*.jsonl", format: jsonl,
          fields: {{sensor: s, ts: t, value: v}}, timestamp: {{format: epoch_ms}}}}
    fields:
      sensor: {{type: str, required: true}}
      value: {{type: float, range: [-1000, 1000]}}
    detect: [{{metric: value, methods: [robust_z]}}]
"""
KEYS = ["2", "1", "3", "7", "1", "s", "6", "1", "S", "4"]


async def feeder(folder: Path, rate: int, stop: asyncio.Event, counter: list[int]) -> None:
    """Write `rate` records per second as one file every 100 ms."""
    per_tick = rate // 10
    i = 0
    t_next = time.perf_counter()
    while not stop.is_set():
        now_ms = int(time.time() * 1000)
        lines = [json.dumps({"s": f"s{(i + k) % 2000}", "t": now_ms + k % 50,
                             "v": (i + k) % 200 - 100}) for k in range(per_tick)]
        tmp = folder / f".part{i}"
        tmp.write_text("\n".join(lines))
        tmp.rename(folder / f"batch{i:08d}.jsonl")
        i += per_tick
        counter[0] += per_tick
        t_next += 0.1
        await asyncio.sleep(max(0.0, t_next - time.perf_counter()))


async def measure(rate: int, n_keys: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d) / "in"
        folder.mkdir()
        cfg = parse_config(CONFIG.format(folder=folder), str(Path(d) / "bench.yaml"))
        store = Store(f"sqlite:///{d}/bench.db")
        engine = Engine(cfg, store)
        app = FlowdeckApp(LocalControl(engine), engine=engine, refresh=0.5)
        stop = asyncio.Event()
        written = [0]
        lat: list[float] = []
        async with app.run_test(size=(120, 40)) as pilot:
            while not engine.started:
                await asyncio.sleep(0.05)
            feed = asyncio.create_task(feeder(folder, rate, stop, written)) if rate else None
            await asyncio.sleep(2.0)  # warm up
            stored0 = engine.flows["load"].totals["store"].records_out
            t0 = time.perf_counter()
            for i in range(n_keys):
                key = KEYS[i % len(KEYS)]
                t = time.perf_counter()
                await pilot.press(key)
                await pilot.pause()
                lat.append((time.perf_counter() - t) * 1000)
                await asyncio.sleep(0.05)
            elapsed = time.perf_counter() - t0
            stored = engine.flows["load"].totals["store"].records_out - stored0
            stop.set()
            if feed:
                await feed
        store.close()
    lat.sort()
    return {"p50": statistics.median(lat), "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
            "max": lat[-1], "ingest": stored / elapsed, "repaints": app.repaints}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=10_000)
    ap.add_argument("--keys", type=int, default=60)
    args = ap.parse_args()
    idle = asyncio.run(measure(0, args.keys))
    busy = asyncio.run(measure(args.rate, args.keys))
    print(f"idle:  key-to-repaint p50 {idle['p50']:6.1f} ms  p99 {idle['p99']:6.1f} ms")
    print(f"busy:  key-to-repaint p50 {busy['p50']:6.1f} ms  p99 {busy['p99']:6.1f} ms  "
          f"(engine stored {busy['ingest']:,.0f} records/s, offered {args.rate:,}/s)")
    print(f"ratio busy/idle p99: {busy['p99'] / max(idle['p99'], 1e-9):.2f}   "
          f"(target: busy p99 < 100 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
