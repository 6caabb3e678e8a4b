"""Console responsiveness while the engine ingests: key-to-repaint latency.

Runs the real console (headless) on a real engine in the same process, once
idle and once while a feeder writes 10,000 records/s into a file source that the
engine polls every 100 ms. For each, sends keys that switch screens and times
each from the key event to the first frame written to the terminal driver after
the new screen is active (the compositor's update that a terminal would be sent):
key to repaint, as a person would see it. Prints
p50/p99 for both and the ratio. DESIGN.md section 7 target: key to repaint under
100 ms while the engine runs at 10,000 records/s.

    .venv/bin/python bench/bench_console.py [--rate 10000] [--keys 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

from textual import events

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
KEYS = ["2", "1", "3", "8", "1", "6", "7", "1", "5", "1", "4", "1"]
TITLES = {"1": "Overview", "2": "Sources", "3": "Quality", "4": "Caches", "5": "Recovery",
          "6": "Data", "7": "Insights", "8": "Events"}


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
        frames: list[float] = []
        async with app.run_test(size=(120, 40)):
            driver = app._driver
            display = app._display

            def timed_display(screen, renderable) -> None:
                # Every frame the terminal would receive (headless, nothing is written).
                if renderable is not None and not app._batch_count:
                    frames.append(time.perf_counter())
                display(screen, renderable)

            app._display = timed_display
            while not engine.started:
                await asyncio.sleep(0.05)
            feed = asyncio.create_task(feeder(folder, rate, stop, written)) if rate else None
            await asyncio.sleep(2.0)  # warm up
            stored0 = engine.flows["load"].totals["store"].records_out
            t0 = time.perf_counter()
            for i in range(n_keys):
                key = KEYS[i % len(KEYS)]
                event = events.Key(key, key)
                event.set_sender(app)
                t = time.perf_counter()
                driver.send_message(event)  # the path a key from the terminal takes
                while getattr(app.screen, "TITLE", "") != TITLES[key]:
                    if time.perf_counter() - t > 10:
                        raise RuntimeError(f"key {key!r} was not handled within 10 s")
                    await asyncio.sleep(0.001)
                shown = time.perf_counter()
                while not frames or frames[-1] < shown:
                    await asyncio.sleep(0.001)
                lat.append((frames[-1] - t) * 1000)
                await asyncio.sleep(0.2)
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
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
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
