"""A month in minutes: does a real ``flowdeck daemon`` hold its database at a steady size
under retention? And how long does a run's write wait while a retention pass deletes?

**The month** (``retention_size_growth_last_week``). A real daemon (its own process,
``python -m flowdeck.console.cli daemon``: scheduler, the two demo flows' six simulated
sources against the in-process demo simulator, every stage, the retention job and its
incremental vacuum, SQLite) runs on a compressed clock: ``$FLOWDECK_CLOCK_SPEED`` makes
the engine's clock a ``ScaledClock`` (pipeline/core/clock.py) that runs ``speed`` times
the wall from ``$FLOWDECK_CLOCK_START`` at the wall time ``$FLOWDECK_CLOCK_ANCHOR``. The
schedule (APScheduler triggers read on that clock), the simulator's observation times,
the retention job's interval and its cutoffs all follow it.

The run's config is the bundled demo with polls every 20 simulated minutes and short
retention so the windows fill within the run: raw 1d, records 3d, series 2d, minute
roll-ups 7d, hour roll-ups 10d, quarantine, actions, resolved issues and runs 3d, a
pass every 3 simulated hours. (With ``keep_lineage`` on, the default, raw payloads stay
as long as the records that name them: 3 days.) Every simulated day the benchmark reads
what ``flowdeck db stats`` reads (``Retention.stats``: file + WAL bytes, rows per table)
and checks that every record it saw the day before and still inside the records window
is there (``lost_in_window`` must stay 0). The figure is the size growth over the last
simulated week: size (file + WAL) at the last days / size 7 days before - 1, each end
the mean of 3 daily samples (the WAL's size at a sample moment depends on when a
checkpoint last truncated it).

``--quick`` runs the month in *hours* instead of days, and shorter (18 simulated hours at
7,200x, windows raw 1h, records 3h, ..., a pass every 30 simulated minutes, a sample
every simulated hour; the figure is then growth over the last 7 simulated hours), in
about 10 s, on a database of a few MB whose WAL's swings weigh more: read the full
run's figure.

**The writer's wait** (``details.retention.writer_wait``, was
tests/soak/retention_writer_wait.py): N old records with series and roll-ups, then one
worker thread takes both a retention pass's steps (RetentionJob through ``run_db``) and a
writer's batches (100 records every 20 ms), as in the engine; the writer's latency
(queued to committed) p50/p99/max without and with the pass running. Timings only,
nothing asserted.

    .venv/bin/python -m bench.retention [--days 30] [--speed 4320] [--quick]
    .venv/bin/python -m bench.retention --writer-wait-only [--old 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import REPO, Figure, Options, log

DAY = 86_400.0
T0 = 1_793_491_200.0  # 2026-11-01T00:00Z, the simulated month's start
# Retention of the run, in units (days; hours in --quick).
WINDOWS = {"raw": 1, "records": 3, "series": 2, "series_1m": 7, "series_1h": 10,
           "quarantine": 3, "actions": 3, "issues_resolved": 3, "runs": 3}
TABLES = ("raw_payloads", "raw_status", "records", "latest", "series_1m",
          "series_1h", "quarantine", "issues", "actions", "runs")


@dataclass
class MonthPlan:
    units: int = 30  # simulated units the run lasts
    unit_s: float = DAY  # one unit: a day (an hour in --quick)
    speed: float = 4320.0  # simulated seconds per wall second (30 days in 10 minutes)
    every_s: float = 1200.0  # a poll every 20 simulated minutes
    pass_every_units: float = 0.125  # a retention pass every 3 simulated hours (of a day)
    last_units: int = 7  # the figure: growth over the last 7 units
    windows: dict[str, float] | None = None  # retention in units (default WINDOWS)

    @property
    def keep(self) -> dict[str, float]:
        return self.windows or WINDOWS

    @property
    def wall_s(self) -> float:
        return self.units * self.unit_s / self.speed


def month_config(plan: MonthPlan) -> str:
    """The bundled demo with the plan's poll interval and retention (in seconds)."""
    from flowdeck.pipeline.config import BUNDLED_CONFIG

    demo = Path(BUNDLED_CONFIG)
    text = demo.read_text()
    every = "schedule: {every: 10s}"
    if text.count(every) != 2:
        raise RuntimeError(f"{demo}: expected two flows with {every!r}")
    text = text.replace(every, f"schedule: {{every: {round(plan.every_s)}s}}")
    table = "table: ../reference/"
    text = text.replace(table, f"table: {(demo.parent / '../reference').resolve()}/")
    windows = ", ".join(f"{k}: {round(v * plan.unit_s)}s" for k, v in plan.keep.items())
    return (text + f"\nretention: {{{windows},\n"
            f"            interval: {round(plan.pass_every_units * plan.unit_s)}s}}\n")


def _records_in_window(store: Any, flows: list[str], since_ms: int) -> dict[str, set]:
    return {f: {(r["key"], r["ts_ms"]) for r in store.records_since(f, since_ms)}
            for f in flows}


def run_month(plan: MonthPlan, workdir: Path,
              progress: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Run a daemon over ``plan`` on a compressed clock; sample at every unit boundary.

    Returns {"curve": [one dict per unit], "lost_in_window": n, "daemon_rc": rc, ...}."""
    from flowdeck.pipeline.config import parse_config
    from flowdeck.storage.retention import Retention
    from flowdeck.storage.store import Store

    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "month.yaml"
    cfg.write_text(month_config(plan))
    flows = list(parse_config(cfg.read_text(), str(cfg)).flows)
    db = workdir / "month.db"
    url = f"sqlite:///{db}"
    anchor = time.time() + 3.0  # the daemon's clock reads T0 then (it starts meanwhile)
    env = {**os.environ, "PYTHONPATH": str(REPO), "FLOWDECK_CLOCK_SPEED": f"{plan.speed:g}",
           "FLOWDECK_CLOCK_START": f"{T0:.0f}", "FLOWDECK_CLOCK_ANCHOR": f"{anchor:.3f}"}
    daemon_log = open(workdir / "daemon.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "flowdeck.console.cli", "daemon", "--config", str(cfg),
         "--db", url, "--bind", "127.0.0.1:0"],
        stdout=daemon_log, stderr=subprocess.STDOUT, cwd=workdir, env=env)

    def sim_now() -> float:
        return T0 + (time.time() - anchor) * plan.speed

    window_ms = int(plan.keep["records"] * plan.unit_s * 1000)
    curve: list[dict] = []
    lost_total = 0
    store = None
    try:
        deadline = time.time() + 60
        while not db.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        if not db.exists():
            raise RuntimeError(f"the daemon made no database (exit {proc.poll()}); see "
                               f"{workdir / 'daemon.log'}")
        store = Store(url, check=False)
        retention = Retention(store)
        while True:  # the daemon creates the schema after the file
            try:
                retention.stats()
                break
            except Exception:
                if time.time() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.2)
        before: dict[str, set] = {}
        for unit in range(1, plan.units + 1):
            wake = anchor + unit * plan.unit_s / plan.speed
            while time.time() < wake:
                if proc.poll() is not None:
                    raise RuntimeError(f"the daemon exited ({proc.returncode}); see "
                                       f"{workdir / 'daemon.log'}")
                time.sleep(min(0.5, max(0.0, wake - time.time())))
            at = sim_now()
            wal = Path(f"{db}-wal")
            file_bytes = db.stat().st_size
            wal_bytes = wal.stat().st_size if wal.exists() else 0
            stats = retention.stats()
            now = _records_in_window(store, flows, int(sim_now() * 1000) - window_ms)
            bound = int(sim_now() * 1000) - window_ms  # anything older may have gone
            lost = sum(1 for f in flows for k, ts in before.get(f, ()) if ts >= bound
                       and (k, ts) not in now[f])
            lost_total += lost
            before = now
            row = {"unit": unit, "sim_time": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(at)),
                   "size_bytes": file_bytes + wal_bytes, "file_bytes": file_bytes,
                   "wal_bytes": wal_bytes, "free_bytes": stats.get("free_bytes"),
                   "rows": {t: stats["tables"][t]["rows"] for t in TABLES
                            if t in stats["tables"]},
                   "records_in_window": sum(len(v) for v in now.values()),
                   "lost_in_window": lost}
            curve.append(row)
            if progress is not None:
                progress(row)
    finally:
        if store is not None:
            store.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        daemon_log.close()
    return {"curve": curve, "lost_in_window": lost_total, "daemon_rc": proc.returncode,
            "db": str(db), "log": str(workdir / "daemon.log")}


def growth(curve: list[dict], last: int, smooth: int = 3) -> float | None:
    """Size at the end / size ``last`` samples before - 1, each end the mean of
    ``smooth`` samples (file + WAL: the WAL's size at a sample moves with the checkpoint
    that last truncated it)."""
    if len(curve) < last + smooth:
        return None
    end = statistics.fmean(r["size_bytes"] for r in curve[-smooth:])
    then = statistics.fmean(r["size_bytes"] for r in curve[-smooth - last:len(curve) - last])
    return end / then - 1


def curve_table(curve: list[dict], unit: str = "day") -> str:
    cols = ("records", "series_1m", "series_1h", "raw_payloads", "runs", "issues")
    head = f"{unit:>4}  {'sim time':<17} {'size MB':>8} {'file MB':>7} {'wal MB':>7} " + " ".join(
        f"{c:>12}" for c in cols) + "  lost"
    lines = [head]
    for r in curve:
        lines.append(f"{r['unit']:>4}  {r['sim_time']:<17} {r['size_bytes'] / 1e6:>8.1f} "
                     f"{r['file_bytes'] / 1e6:>7.1f} {r['wal_bytes'] / 1e6:>7.1f} "
                     + " ".join(f"{r['rows'].get(c, 0):>12,}" for c in cols)
                     + f"  {r['lost_in_window']}")
    return "\n".join(lines)


# ---------------------------------------------------------------- the writer's wait

WAIT_CONFIG = """
flows:
  fx:
    key: pair
    sources:
      - {name: q, kind: file, path: "/nonexistent/*.json", fields: {pair: p, ts: t}}
    fields: {pair: {type: str}, rate: {type: float}}
retention: {batch: 500}
"""
WT = 1_795_521_600_000
DAY_MS = 86_400_000


def _rec(i: int, ts: int) -> dict:
    return {"flow": "fx", "key": f"K{i % 200}", "ts_ms": ts, "data": {"rate": 1.0},
            "quality": 1.0, "anomaly_score": 0.0, "anomalous": False, "flags": [],
            "sources": ["q"], "contributions": {}, "raw_ids": [], "version_id": None,
            "updated_ms": ts}


async def _writer(loop, worker, store, start: int, seconds: float,
                  waits: list[float] | None = None, stop: asyncio.Event | None = None
                  ) -> list[float]:
    from flowdeck.storage.model import BatchWrite

    waits = [] if waits is None else waits
    i = start
    end = time.perf_counter() + seconds
    while time.perf_counter() < end and not (stop is not None and stop.is_set()):
        rows = [_rec(i + j, WT + 60 * DAY_MS + (i + j) * 10) for j in range(100)]
        series = [("fx", r["key"], "rate", r["ts_ms"], 1.0) for r in rows]
        t0 = time.perf_counter()
        await loop.run_in_executor(worker, store.write_batch,
                                   BatchWrite("fx", records=rows, series=series), WT)
        waits.append((time.perf_counter() - t0) * 1000)
        i += 100
        await asyncio.sleep(0.02)
    return waits


def _summary(waits: list[float]) -> dict:
    if len(waits) < 2:
        return {"n": len(waits)}
    q = statistics.quantiles(waits, n=100)
    return {"n": len(waits), "p50_ms": round(q[49], 1), "p99_ms": round(q[98], 1),
            "max_ms": round(max(waits), 1)}


async def writer_wait(old: int, idle_s: float, workdir: Path) -> dict:
    """The writer's latency without and with a retention pass deleting ``old`` records."""
    from flowdeck.pipeline.config import parse_config
    from flowdeck.pipeline.core.clock import ManualClock
    from flowdeck.pipeline.engine.retention import RetentionJob
    from flowdeck.storage.model import BatchWrite
    from flowdeck.storage.store import Store

    store = Store(f"sqlite:///{workdir / 'wait.db'}")
    try:
        for start in range(0, old, 10_000):
            rows = [_rec(i, WT + i * 1000) for i in range(start, min(old, start + 10_000))]
            store.write_batch(BatchWrite("fx", records=rows, series=[
                ("fx", r["key"], "rate", r["ts_ms"], 1.0) for r in rows]), WT)
        loop = asyncio.get_running_loop()
        worker = ThreadPoolExecutor(1)

        async def run_db(fn, *a):
            return await loop.run_in_executor(worker, fn, *a)

        job = RetentionJob(parse_config(WAIT_CONFIG), store,
                           ManualClock((WT + 100 * DAY_MS) / 1000), run_db)
        idle = await _writer(loop, worker, store, 10_000_000, idle_s)
        t0 = time.perf_counter()
        busy: list[float] = []
        stop = asyncio.Event()
        busy_task = asyncio.create_task(_writer(loop, worker, store, 20_000_000, 3600, busy,
                                                stop))
        result = await job.run_pass()
        pass_s = time.perf_counter() - t0
        stop.set()
        await busy_task
        worker.shutdown()
    finally:
        store.close()
    return {"old_records": old, "pass_s": round(pass_s, 1), "steps": result["steps"],
            "deleted": result["deleted"], "writer_idle": _summary(idle),
            "writer_during_pass": _summary(busy)}


# ---------------------------------------------------------------- the harness

def plan_for(opts: Options) -> MonthPlan:
    """30 simulated days in 10 minutes; --quick: the same month in hours, and shorter
    (18 simulated hours in 9 s). ``--scale`` scales the number of days (at least 18: the windows must
    fill, then a week of plateau be measured), never the clock's speed."""
    units = max(18, round((18 if opts.quick else 30) * opts.scale))
    if opts.quick:
        return MonthPlan(units=units, unit_s=3600.0, speed=7200.0, every_s=1200.0,
                         pass_every_units=0.5)
    return MonthPlan(units=units, unit_s=DAY, speed=4320.0)


def run(opts: Options) -> tuple[list[Figure], dict]:
    plan = plan_for(opts)
    unit = "hour" if opts.quick else "day"
    with tempfile.TemporaryDirectory(prefix="flowdeck-bench-retention-") as tmp:
        root = Path(tmp)
        log(f"   a daemon on a {plan.speed:g}x clock: {plan.units} simulated {unit}s in "
            f"{plan.wall_s:.0f} s")
        month = run_month(plan, root / "month", progress=lambda r: log(
            f"   {unit} {r['unit']:>2}: {r['size_bytes'] / 1e6:.1f} MB, "
            f"{r['rows'].get('records', 0):,} records, lost {r['lost_in_window']}"))
        wait = asyncio.run(writer_wait(opts.n(200_000, 10_000), opts.seconds(5.0, 1.0),
                                       root))
    g = growth(month["curve"], plan.last_units)
    reason = None
    if g is None:
        reason = f"only {len(month['curve'])} samples"
    elif month["lost_in_window"]:
        reason = (f"{month['lost_in_window']} record(s) still inside their window went "
                  "missing: the size is not a valid figure")
        g = None
    table = curve_table(month["curve"], unit)
    log(table)
    fig = Figure("retention_size_growth_last_week", g, "< 0.05",
                 f"the same daemon's size {plan.last_units} simulated {unit}s earlier "
                 f"(mean of 3 samples each end; {month['curve'][-1]['size_bytes'] / 1e6:.1f}"
                 f" MB at the last)" if g is not None else "-", reason=reason)
    details = {"unit": unit, "speed": plan.speed, "poll_every_s": plan.every_s,
               "windows": {k: f"{v:g}{unit[0]}" for k, v in plan.keep.items()},
               "curve": month["curve"], "curve_table": table,
               "lost_in_window": month["lost_in_window"], "daemon_rc": month["daemon_rc"],
               "writer_wait": wait}
    return [fig], details


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.retention")
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--speed", type=float, default=4320.0)
    ap.add_argument("--quick", action="store_true", help="hours instead of days")
    ap.add_argument("--dir", default=None, help="keep the run's files here")
    ap.add_argument("--writer-wait-only", action="store_true")
    ap.add_argument("--old", type=int, default=200_000, help="old records (writer wait)")
    args = ap.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="flowdeck-retention-"))
    if args.writer_wait_only:
        print(json.dumps(asyncio.run(writer_wait(args.old, 5.0, root))))
        return
    plan = MonthPlan(units=args.days, speed=args.speed)
    if args.quick:
        plan = MonthPlan(units=args.days, unit_s=3600.0, speed=7200.0, every_s=1200.0,
                         pass_every_units=0.5)
    month = run_month(plan, root, progress=lambda r: print(json.dumps(r), flush=True))
    print(curve_table(month["curve"], "hour" if args.quick else "day"))
    print(json.dumps({"growth_last_7": growth(month["curve"], 7),
                      "lost_in_window": month["lost_in_window"], "dir": str(root)}))


if __name__ == "__main__":
    main()
