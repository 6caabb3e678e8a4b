"""The fault soak (issue 15, item 5): a real `flowdeck daemon` with its built-in simulator
running every fault of every bundled scenario (sample_data/scenarios/*.yaml), cycling,
for a given time; then what must hold after any length of such a run.

The scenario: each source fault of every scenario file (outages, error bursts, latency,
timeouts, malformed payloads, schema drift, duplicates, out-of-order, clock skew) gets a
slot of ``slot_s`` seconds in a cycle of all of them (``start`` = its slot, ``every`` =
the cycle), so every fault recurs all through the run; spikes, level shifts and drifts
(one-off events of a series) are placed once, in the first cycle.

The simulator runs as a process of its own (`flowdeck simulate`, the daemon pointed at it
with ``--simulator``), so the figures are the daemon's alone: the ``huge`` malformed
variant makes the simulator build 50 MB bodies, which the daemon reads only up to its
``max_bytes``. While it runs, the daemon's resident memory (``/proc/PID/status`` VmRSS) and open file
descriptors (``/proc/PID/fd``) are sampled every ``sample_s``. At the end it is stopped
(SIGTERM) and, per flow, from its SQLite store:

- payloads: every payload a run fetched with new content is a raw row
  (``runs.stats.sources.*.payloads`` summed = ``raw_payloads`` rows), every raw row was
  processed (``raw_status``), nothing is left in or was dropped by the spool;
- records: what the raw payloads held (``raw_status.records_in``, a whole payload
  rejected counting one) = what the per-source stages passed on to resolve
  (``raw_status.records_out``) + quarantined (``quarantine`` rows) + dropped as duplicates
  (the runs' ``dropped`` of collect .. quality, which /metrics shows as
  ``flowdeck_records_total{outcome="dropped"}``);
- RSS and fds after the warm-up (two whole cycles of the faults, so each one has happened
  twice, and at least ``warmup_frac`` of the run) grow less than 10 % (mean of the last three samples against the mean of the three at
  the end of the warm-up);
- the daemon's log has no ``Traceback`` and it exits 0.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from flowdeck.pipeline.demo.scenarios import SCENARIO_DIR, Scenario

FLOWDECK = [sys.executable, "-m", "flowdeck.console.cli"]
ONE_OFF = ("spike", "level_shift", "drift")
SOURCE_STAGES = ("collect", "validate", "transform", "enrich", "quality")


def cycling_faults(slot_s: float = 8.0) -> list[dict]:
    """Every fault of every bundled scenario, source faults each in its own recurring slot."""
    recurring, once, seen = [], [], set()
    for path in sorted(SCENARIO_DIR.glob("*.yaml")):
        for f in (yaml.safe_load(path.read_text()) or {}).get("faults") or []:
            sig = json.dumps(f, sort_keys=True)
            if sig in seen:
                continue
            seen.add(sig)
            f = {k: v for k, v in f.items() if k not in ("start", "duration", "every", "at")}
            (once if f["kind"] in ONE_OFF else recurring).append(f)
    cycle = slot_s * len(recurring)
    for i, f in enumerate(recurring):
        f.update(start=f"{i * slot_s:g}s", duration=f"{slot_s * 0.8:g}s", every=f"{cycle:g}s")
    for i, f in enumerate(once):
        key = "start" if f["kind"] == "drift" else "at"
        f[key] = f"{(i + 1) * cycle / (len(once) + 1):.0f}s"
        if f["kind"] != "drift":
            f["duration"] = f"{slot_s:g}s"
    return recurring + once


def write_scenario(folder: Path, slot_s: float = 8.0) -> Path:
    path = folder / "every-fault.yaml"
    path.write_text(yaml.safe_dump({"name": "every-fault", "description": "every bundled "
                                    "scenario's faults, cycling", "faults": cycling_faults(slot_s)},
                                   sort_keys=False))
    Scenario.load(path)  # the simulator's own check
    return path


def proc_figures(pid: int) -> tuple[int, int]:
    """(VmRSS bytes, open file descriptors) of a process."""
    rss = 0
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class SoakResult:
    seconds: float
    faults: int
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (t, rss, fds)
    flows: dict[str, dict] = field(default_factory=dict)
    exit_code: int | None = None
    log_tail: str = ""
    tracebacks: int = 0
    warmup_s: float = 0.0
    problems: list[str] = field(default_factory=list)

    def growth(self, i: int) -> tuple[float, float, float]:
        """(after warm-up, at the end, growth) of sample column ``i`` (1 rss, 2 fds)."""
        warm = [s[i] for s in self.samples if s[0] <= self.warmup_s][-3:]
        end = [s[i] for s in self.samples][-3:]
        w, e = statistics.mean(warm), statistics.mean(end)
        return w, e, e / w - 1

    def summary(self) -> str:
        lines = [f"fault soak: {self.seconds:.0f} s, {self.faults} faults cycling, "
                 f"{len(self.samples)} samples, warm-up {self.warmup_s:.0f} s, "
                 f"exit {self.exit_code}, tracebacks in the log {self.tracebacks}"]
        if len(self.samples) >= 4:
            w, e, g = self.growth(1)
            lines.append(f"  RSS {w / 2**20:.1f} MB after warm-up -> {e / 2**20:.1f} MB "
                         f"({g:+.1%}), max {max(s[1] for s in self.samples) / 2**20:.1f} MB")
            w, e, g = self.growth(2)
            lines.append(f"  fds {w:.1f} after warm-up -> {e:.1f} ({g:+.1%}), "
                         f"max {max(s[2] for s in self.samples)}")
        for name, f in self.flows.items():
            lines.append(
                f"  {name}: fetched {f['fetched']} payloads ({f['unchanged']} unchanged, "
                f"{f['buffered']} spooled) -> {f['raw']} raw rows ({f['raw_counted']} counted "
                f"by runs, {f['raw_processed']} processed); records in {f['records_in']} = "
                f"passed {f['records_out']} + quarantined {f['quarantined']} + dropped "
                f"{f['dropped']} ({f['balance']:+d}); {f['stored']} stored rows, "
                f"{f['runs']} runs")
        return "\n".join(lines)


def _flow_figures(db: Path) -> dict[str, dict]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        out: dict[str, dict] = {}
        for (flow,) in conn.execute("SELECT DISTINCT flow FROM runs"):
            f = out[flow] = dict.fromkeys(("fetched", "unchanged", "buffered", "raw_counted",
                                           "dropped", "runs"), 0)
            for (stats,) in conn.execute("SELECT stats FROM runs WHERE flow = ? AND "
                                         "status != 'running'", (flow,)):
                s = json.loads(stats) if isinstance(stats, str) else (stats or {})
                f["runs"] += 1
                f["buffered"] += s.get("buffered") or 0
                for src in (s.get("sources") or {}).values():
                    f["raw_counted"] += src.get("payloads") or 0
                    f["unchanged"] += src.get("unchanged") or 0
                for stage in SOURCE_STAGES:
                    f["dropped"] += ((s.get("stages") or {}).get(stage) or {}).get("dropped", 0)
            f["fetched"] = f["raw_counted"] + f["unchanged"] + f["buffered"]
            f["raw"], f["raw_processed"], f["records_in"], f["records_out"] = conn.execute(
                "SELECT count(*), count(s.raw_id), coalesce(sum(s.records_in), 0), "
                "coalesce(sum(s.records_out), 0) FROM raw_payloads p LEFT JOIN raw_status s "
                "ON s.raw_id = p.id WHERE p.flow = ?", (flow,)).fetchone()
            marks = ",".join("?" * len(SOURCE_STAGES))
            f["quarantined"] = conn.execute(
                f"SELECT count(*) FROM quarantine WHERE flow = ? AND stage IN ({marks})",
                (flow, *SOURCE_STAGES)).fetchone()[0]
            f["quarantined_later_stages"] = conn.execute(
                f"SELECT count(*) FROM quarantine WHERE flow = ? AND stage NOT IN ({marks})",
                (flow, *SOURCE_STAGES)).fetchone()[0]
            f["stored"] = conn.execute("SELECT count(*) FROM records WHERE flow = ?",
                                       (flow,)).fetchone()[0]
            f["balance"] = f["records_in"] - f["records_out"] - f["quarantined"] - f["dropped"]
        return out
    finally:
        conn.close()


def _metric_sum(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the simulator exited ({proc.returncode})")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"the simulator never listened on {port}")


def run_soak(folder: Path, seconds: float, *, config_text: str, slot_s: float = 8.0,
             sample_s: float = 5.0, warmup_frac: float = 0.2, progress=None) -> SoakResult:
    """Run the daemon with every fault cycling for ``seconds``; a SoakResult (checked)."""
    from support.feed import free_port

    say = progress or (lambda _m: None)
    scenario = write_scenario(folder, slot_s)
    faults = len(yaml.safe_load(scenario.read_text())["faults"])
    config = folder / "flows.yaml"
    config.write_text(config_text)
    db = folder / "soak.db"
    log = folder / "daemon.log"
    port, sim_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    cycle = slot_s * sum(1 for f in yaml.safe_load(scenario.read_text())["faults"]
                         if f["kind"] not in ONE_OFF)
    # Two cycles: RSS reaches its plateau the second time the ``huge`` payload is decoded
    # (the allocators' high-water mark then; an hour's run at 8 s slots: 94 MB, 132 MB after
    # the first cycle, 181 MB after the second, then 181 -> 184 MB over the next 28 minutes).
    res = SoakResult(seconds, faults,
                     warmup_s=max(60.0, 2 * cycle + slot_s, seconds * warmup_frac))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(folder / "simulator.log", "ab") as err:
        sim = subprocess.Popen(FLOWDECK + ["simulate", "--port", str(sim_port), "--scenario",
                                           str(scenario), "--seed", "7"],
                               stdout=subprocess.DEVNULL, stderr=err, cwd=folder, env=env)
    _wait_port(sim_port, sim)
    with open(log, "ab") as err:
        proc = subprocess.Popen(
            FLOWDECK + ["daemon", "--config", str(config), "--db", f"sqlite:///{db}",
                        "--bind", f"127.0.0.1:{port}",
                        "--simulator", f"http://127.0.0.1:{sim_port}"],
            stdout=subprocess.DEVNULL, stderr=err, cwd=folder, env=env)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"the daemon exited at start: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("the daemon was not ready in 120 s")
            time.sleep(0.2)
        t0 = time.monotonic()
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(sample_s):
                try:
                    rss, fds = proc_figures(proc.pid)
                except OSError:
                    return
                res.samples.append((time.monotonic() - t0, rss, fds))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        last_say = t0
        while time.monotonic() - t0 < seconds:
            if proc.poll() is not None:
                res.problems.append(f"the daemon exited during the soak ({proc.returncode})")
                break
            time.sleep(1.0)
            if time.monotonic() - last_say >= 60:
                last_say = time.monotonic()
                rss, fds = res.samples[-1][1:] if res.samples else (0, 0)
                say(f"  {last_say - t0:.0f}/{seconds:.0f} s: RSS {rss / 2**20:.1f} MB, "
                    f"{fds} fds")
        stop.set()
        sampler.join(10)
        try:
            with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
                metrics = r.read().decode()
        except OSError:
            metrics = ""
    finally:
        for p in (proc, sim):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
    res.exit_code = proc.returncode
    text = log.read_text(errors="replace")
    res.tracebacks = text.count("Traceback")
    res.log_tail = text[-3000:]
    res.flows = _flow_figures(db)
    for name, f in res.flows.items():
        f["metrics_dropped"] = sum(_metric_sum(metrics, "flowdeck_records_total", flow=name,
                                               stage=s, outcome="dropped")
                                   for s in SOURCE_STAGES)
    res.problems.extend(check(res, folder))
    return res


def check(res: SoakResult, folder: Path) -> list[str]:
    problems = []
    if res.exit_code != 0:
        problems.append(f"the daemon exited {res.exit_code}")
    if res.tracebacks:
        problems.append(f"{res.tracebacks} Traceback(s) in the daemon's log: {res.log_tail}")
    left = list(folder.glob("soak.db.spool/*/*"))
    if left:
        problems.append(f"{len(left)} file(s) left in the spool")
    if not res.flows:
        problems.append("no runs stored")
    for name, f in res.flows.items():
        if f["raw"] != f["raw_counted"]:
            problems.append(f"{name}: {f['raw']} raw rows, runs committed {f['raw_counted']}")
        if f["raw_processed"] != f["raw"]:
            problems.append(f"{name}: {f['raw'] - f['raw_processed']} raw payload(s) never "
                            "processed")
        if f["buffered"]:
            problems.append(f"{name}: {f['buffered']} payload(s) spooled with the store up")
        if f["balance"]:
            problems.append(f"{name}: records not conserved: in {f['records_in']} != out "
                            f"{f['records_out']} + quarantined {f['quarantined']} + dropped "
                            f"{f['dropped']}")
    if len(res.samples) < 8 or not any(t > res.warmup_s for t, _r, _f in res.samples):
        problems.append(f"too few samples after the warm-up ({len(res.samples)})")
        return problems
    for i, what in ((1, "RSS"), (2, "open fds")):
        w, e, g = res.growth(i)
        if g >= 0.10:
            problems.append(f"{what} grew {g:.1%} after the warm-up ({w:.0f} -> {e:.0f})")
    return problems
