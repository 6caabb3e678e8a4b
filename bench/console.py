"""Console responsiveness while the engine ingests: key-to-repaint latency.

Runs the real console (headless) on a real engine, once idle and once while a
feeder (its own process) writes 10,000 records/s into a file source that the
engine polls every 100 ms. The engine runs as the console runs it by default,
in a child process attached over the feed (``--engine process``), or in the
console's own process (``--engine in-process``, the old way; ``both`` runs each). For each, sends keys that switch screens and times
each from the key event to the first frame written to the terminal driver after
the new screen is active (the compositor's update that a terminal would be sent):
key to repaint, as a person would see it. Prints
p50/p99 for both and the ratio. DESIGN.md section 7 target: key to repaint under
100 ms while the engine runs at 10,000 records/s.

    .venv/bin/python -m bench.console [--rate 10000] [--keys 60] [--engine both]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from textual import events

from bench.common import REPO, Figure, Options
from flowdeck.console.app import FlowdeckApp
from flowdeck.console.client.launcher import EngineProcess
from flowdeck.pipeline.config import parse_config
from flowdeck.pipeline.engine.engine import Engine
from flowdeck.pipeline.serve.control import LocalControl
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


def feeder(folder: Path, rate: int) -> None:
    """Write `rate` records per second as one file every 100 ms, until killed."""
    per_tick = rate // 10
    i = 0
    t_next = time.perf_counter()
    while True:
        now_ms = int(time.time() * 1000)
        lines = [json.dumps({"s": f"s{(i + k) % 2000}", "t": now_ms + k % 50,
                             "v": (i + k) % 200 - 100}) for k in range(per_tick)]
        tmp = folder / f".part{i}"
        tmp.write_text("\n".join(lines))
        tmp.rename(folder / f"batch{i:08d}.jsonl")
        i += per_tick
        t_next += 0.1
        time.sleep(max(0.0, t_next - time.perf_counter()))


def stored(app) -> int:
    return app.state.flows.get("load", {}).get("totals", {}).get("store", {}).get("out", 0)


async def measure(rate: int, n_keys: int, mode: str, warmup: float = 3.0) -> dict:
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d) / "in"
        folder.mkdir()
        cfg_path = Path(d) / "bench.yaml"
        cfg_path.write_text(CONFIG.format(folder=folder))
        db = f"sqlite:///{d}/bench.db"
        store = None
        if mode == "in-process":
            store = Store(db)
            engine = Engine(parse_config(cfg_path.read_text(), str(cfg_path)), store)
            app = FlowdeckApp(LocalControl(engine), engine=engine, refresh=0.5)
        else:
            engine = EngineProcess(["daemon", "--config", str(cfg_path), "--db", db],
                                   log_path=Path(d) / "engine.log")
            app = FlowdeckApp(engine.control, engine=engine, refresh=0.5)
        lat: list[float] = []
        by_key: list[tuple[int, str]] = []
        frames: list[float] = []
        feed = None
        async with app.run_test(size=(120, 40)):
            driver = app._driver
            display = app._display

            def timed_display(screen, renderable) -> None:
                # Every frame the terminal would receive (headless, nothing is written).
                if renderable is not None and not app._batch_count:
                    frames.append(time.perf_counter())
                display(screen, renderable)

            app._display = timed_display
            t_start = time.perf_counter()
            while not engine.started or "load" not in app.state.flows:
                if time.perf_counter() - t_start > 60:
                    raise RuntimeError(f"the engine did not start: {app.state.connection}")
                await asyncio.sleep(0.05)
            if rate:
                feed = subprocess.Popen([sys.executable, "-m", "bench.console", "--feeder",
                                         str(folder), "--rate", str(rate)], cwd=REPO)
            await asyncio.sleep(warmup)  # warm up
            stored0 = stored(app)
            t0 = time.perf_counter()
            try:
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
                    by_key.append((round(lat[-1]), TITLES[key]))
                    await asyncio.sleep(0.2)
                await asyncio.sleep(1.0)  # one more snapshot for the stored count
                elapsed = time.perf_counter() - t0
                ingest = (stored(app) - stored0) / elapsed
            finally:
                if feed is not None:
                    feed.kill()
                    feed.wait()
        if store is not None:
            store.close()
    lat.sort()
    return {"p50": statistics.median(lat), "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
            "max": lat[-1], "ingest": ingest, "repaints": app.repaints,
            "worst": sorted(by_key, reverse=True)[:4]}


def run(opts: Options) -> tuple[list[Figure], dict]:
    """Key to paint with the engine in its own process (the console's default) at 10,000
    records/s, against the same keys with the engine idle, same run."""
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    keys = opts.n(60, 8, 4)
    warmup = 1.5 if opts.quick else 3.0
    rate = 10_000
    idle = asyncio.run(measure(0, keys, "process", warmup))
    busy = asyncio.run(measure(rate, keys, "process", warmup))
    extra = {"idle_p50_ms": idle["p50"], "idle_p99_ms": idle["p99"], "busy_p50_ms": busy["p50"],
             "busy_p99_ms": busy["p99"], "busy_max_ms": busy["max"], "keys": keys,
             "engine_stored_records_per_s": busy["ingest"], "offered_records_per_s": rate,
             "slowest_busy_keys": busy["worst"]}
    return [Figure("console_key_to_paint_ms_at_10k", busy["p99"], "< 100",
                   f"engine idle p99 {idle['p99']:.1f} ms", "ms",
                   extra={"engine_stored_records_per_s": round(busy["ingest"])})], extra


def main() -> int:
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=10_000)
    ap.add_argument("--keys", type=int, default=60)
    ap.add_argument("--engine", choices=("process", "in-process", "both"), default="both")
    ap.add_argument("--feeder", metavar="FOLDER", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.feeder:
        feeder(Path(args.feeder), args.rate)
        return 0
    modes = ("process", "in-process") if args.engine == "both" else (args.engine,)
    for mode in modes:
        idle = asyncio.run(measure(0, args.keys, mode))
        busy = asyncio.run(measure(args.rate, args.keys, mode))
        print(f"engine {mode}:")
        print(f"  idle:  key-to-repaint p50 {idle['p50']:6.1f} ms  p99 {idle['p99']:6.1f} ms")
        print(f"  busy:  key-to-repaint p50 {busy['p50']:6.1f} ms  p99 {busy['p99']:6.1f} ms  "
              f"(engine stored {busy['ingest']:,.0f} records/s, offered {args.rate:,}/s)")
        print(f"  slowest busy keys (ms, screen): {busy['worst']}")
        print(f"  ratio busy/idle p99: {busy['p99'] / max(idle['p99'], 1e-9):.2f}   "
              f"(target: busy p99 < 100 ms)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
