"""Resident memory of a real ``flowdeck daemon`` ingesting steadily: growth over a soak.

A daemon (its own process, ``python -m flowdeck.console.cli daemon``, SQLite, feed on a free
loopback port) polls a drop folder every 100 ms; a feeder thread writes ``rate`` records/s
into it as one file per 100 ms (up to 600 sensors, detection on) and removes files older than
5 s, as a spool directory would be cleaned. RSS is sampled every second from /proc.

The figure is ``rss_end / rss_after_warmup - 1``: the mean of the last three samples
against the mean of the three samples at the end of the warm-up, i.e. growth against the
daemon's own warmed-up size, same run. The warm-up lasts until every series' detection
state has reached its bound (:data:`FILL_POINTS` points per sensor: the history before
scoring starts, then the calibration window of each method; 10 % more for the feed's
jitter), and at least a tenth of the soak and 10 s. Until then the daemon is not in a
steady state: each series' windows are still filling towards their fixed size, which is
growth by design, not a leak (600 sensors at 5,000 records/s fill in about two minutes).
So that the warm-up leaves most of the soak to measure, the soak feeds at most as many
sensors as fill within 40 % of it: 600 in the full run, fewer in ``--quick``.

``--quick`` soaks 60 s at 1,000 records/s *while the feed and console benchmarks run*
(never alongside the throughput ones), so the quick run stays under two minutes; its
CPU share is a few per cent of a core. The full run soaks 10 minutes at 5,000
records/s, alone.

    .venv/bin/python -m bench.soak [--seconds 600] [--rate 5000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import REPO, Figure, Options, log, rss_bytes
from flowdeck.pipeline.detectors import DetectorSettings

_DETECT = DetectorSettings()
FILL_POINTS = _DETECT.min_history + _DETECT.calibration_window + 1
"""Points a series takes until its detection state is full (the rate method's first
statistic comes with the second point)."""
MAX_SENSORS = 600

CONFIG = """
flows:
  soak:
    schedule: {{every: 100ms}}
    key: sensor
    sources:
      - {{name: drop, kind: file, path: "{folder}/*.jsonl", format: jsonl,
          fields: {{sensor: s, ts: t, value: v, level: l}}, timestamp: {{format: epoch_ms}}}}
    fields:
      sensor: {{type: str, required: true}}
      value: {{type: float, range: [-1000, 1000]}}
      level: {{type: float}}
    derive: {{value2: "value * 2"}}
    detect: [{{metric: value, methods: [robust_z, rate]}}]
"""


class Soak:
    def __init__(self, seconds: float, rate: int, concurrent: bool,
                 launcher: list[str] | None = None, sensors: int | None = None) -> None:
        self.seconds = seconds
        # What runs the CLI (python's arguments before "daemon"): tests/soak/memory_trace.py
        # starts it under tracemalloc.
        self.launcher = launcher or ["-m", "flowdeck.console.cli"]
        self.rate = rate
        self.concurrent = concurrent
        self.sensors = sensors or max(1, min(MAX_SENSORS,
                                             int(0.4 * seconds * rate / FILL_POINTS)))
        self.fill_seconds = 1.1 * self.sensors * FILL_POINTS / rate
        self.warmup = max(10.0, seconds / 10, self.fill_seconds)
        self.samples: list[tuple[float, int]] = []
        self.files = 0
        self._stop = threading.Event()
        self._tmp = tempfile.TemporaryDirectory(prefix="flowdeck-bench-soak-")
        self.dir = Path(self._tmp.name)
        self.proc: subprocess.Popen | None = None
        self.error: str | None = None

    def start(self) -> None:
        folder = self.dir / "in"
        folder.mkdir()
        cfg = self.dir / "soak.yaml"
        cfg.write_text(CONFIG.format(folder=folder))
        self._log = open(self.dir / "daemon.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, *self.launcher, "daemon", "--config", str(cfg),
             "--db", f"sqlite:///{self.dir / 'soak.db'}", "--bind", "127.0.0.1:0"],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=self.dir,
            env={**os.environ, "PYTHONPATH": str(REPO)})
        self.t0 = time.perf_counter()
        self._threads = [threading.Thread(target=self._feed, args=(folder,), daemon=True),
                         threading.Thread(target=self._sample, daemon=True)]
        for t in self._threads:
            t.start()

    def _feed(self, folder: Path) -> None:
        per_tick = max(1, self.rate // 10)
        i = 0
        t_next = time.perf_counter()
        written: list[tuple[float, Path]] = []
        while not self._stop.is_set() and time.perf_counter() - self.t0 < self.seconds:
            now_ms = int(time.time() * 1000)
            lines = [json.dumps({"s": f"s{(i + k) % self.sensors}", "t": now_ms + k % 50,
                                 "v": (i + k) % 200 - 100, "l": (i + k) % 7})
                     for k in range(per_tick)]
            tmp = folder / f".part{i}"
            tmp.write_text("\n".join(lines))
            final = folder / f"batch{i:010d}.jsonl"
            tmp.rename(final)
            self.files += 1
            written.append((time.perf_counter(), final))
            while written and written[0][0] < time.perf_counter() - 5:
                written.pop(0)[1].unlink(missing_ok=True)
            i += per_tick
            t_next += 0.1
            time.sleep(max(0.0, t_next - time.perf_counter()))

    def _sample(self) -> None:
        while not self._stop.wait(1.0) and time.perf_counter() - self.t0 <= self.seconds + 0.5:
            if self.proc is None or self.proc.poll() is not None:
                return
            try:
                self.samples.append((time.perf_counter() - self.t0, rss_bytes(self.proc.pid)))
            except (OSError, RuntimeError):
                return

    def _keys_stored(self) -> int:
        """Series the daemon stored (all sensors when it kept up), through the read API."""
        from flowdeck.storage.store import Store

        try:
            store = Store(f"sqlite:///{self.dir / 'soak.db'}", create_if_empty=False)
        except Exception:
            return 0
        try:
            return len(store.latest("soak"))
        finally:
            store.close()

    def finish(self) -> tuple[list[Figure], dict]:
        left = self.seconds - (time.perf_counter() - self.t0)
        if left > 0:
            log(f"  soak: {left:.0f} s to go")
            time.sleep(left)
        self._stop.set()
        for t in self._threads:
            t.join(5)
        assert self.proc is not None
        alive = self.proc.poll() is None
        if alive:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        tail = (self.dir / "daemon.log").read_text(errors="replace")[-600:]
        keys = self._keys_stored()
        self._tmp.cleanup()
        warm = [r for t, r in self.samples if t <= self.warmup][-3:]
        end = [r for _t, r in self.samples][-3:]
        extra = {"soak_seconds": self.seconds, "soak_rate": self.rate,
                 "soak_sensors": self.sensors, "soak_warmup_s": round(self.warmup, 1),
                 "soak_detection_fill_s": round(self.fill_seconds, 1),
                 "soak_concurrent_with_other_benchmarks": self.concurrent,
                 "soak_files": self.files, "soak_samples": len(self.samples),
                 "soak_keys_stored": keys}
        reason = None
        if not alive:
            reason = f"the daemon exited during the soak: {tail!r}"
        elif not keys:
            reason = f"the daemon stored nothing during the soak: {tail!r}"
        elif len(warm) < 1 or len(end) < 3 or len(self.samples) < 5:
            reason = f"too few RSS samples ({len(self.samples)})"
        value = None
        if reason is None:
            w, e = statistics.mean(warm), statistics.mean(end)
            value = e / w - 1
            extra.update({"rss_after_warmup_mb": w / 2**20, "rss_end_mb": e / 2**20,
                          "rss_max_mb": max(r for _t, r in self.samples) / 2**20})
        base = (f"RSS after {self.warmup:.0f} s warm-up "
                f"{extra.get('rss_after_warmup_mb', 0):.0f} MB")
        return [Figure("rss_growth_soak", value, "< 0.10", base, "", reason=reason)], extra


def soak(opts: Options) -> Soak:
    if opts.quick:
        return Soak(opts.seconds(600, 60, 15), 1000, concurrent=True)
    return Soak(opts.seconds(600, 60, 15), 5000, concurrent=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--rate", type=int, default=5000)
    a = ap.parse_args()
    s = Soak(a.seconds, a.rate, concurrent=False)
    s.start()
    figs, extra = s.finish()
    print(figs[0], json.dumps(extra))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
