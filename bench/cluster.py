"""A cluster of real ``flowdeck daemon`` nodes on one PostgreSQL database: throughput with
1, 2 and 3 nodes on 30 flows, the cost of coordination, and takeover times over kills.

Each node is its own process (``--node``, feed on a free loopback port); one
``flowdeck simulate`` serves every source. The 30 flows are the demo's two flows, 15
times each, every 1 s: more than one node of this 2-core machine keeps up with, so the
figure is the runs the cluster completes per second.

- ``cluster_runs_per_s_{1,2,3}``: completed runs per second over the measured window,
  from the ``runs`` table (30 runs/s offered: a figure at 30 means the nodes keep up),
  and ``cluster_scaling_3_vs_1``, their ratio (on 2 cores shared with the simulator and
  PostgreSQL, more nodes help mainly because one node's event loop and worker thread
  are the bottleneck, not the cores). Records are not counted: what a run stores is
  bounded by the simulator's data rate (new observations per minute), not by the nodes.
- coordination: lease transactions per node per second (renewal + cluster view, one
  each per ``renew``), and the fence check's cost per write transaction (fenced against
  unfenced empty transactions, in this process) times the transactions per run
  (``pg_stat_database.xact_commit`` over the window).
- ``cluster_takeover_p50_s`` / ``_p95_s``: with three nodes, SIGKILL one at random
  (seeded), time from the kill to the first successful scheduled run of *every* flow it
  owned on another node; then restart it under the same name and wait for balance.

    .venv/bin/python -m bench.cluster [--kills 20] [--seconds 30]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.common import PG_ADMIN, Figure, Options, log, pct
from tests.support.cluster import demo_cluster_config

FLOWDECK = [sys.executable, "-m", "flowdeck.console.cli"]
TTL = 3.0
EVERY = 1.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(folder: Path, copies: int) -> Path:
    return demo_cluster_config(folder, copies, every=EVERY, lease_ttl=TTL, name="{name}{i:02d}")


class Database:
    """A fresh database on the benchmark's PostgreSQL, dropped at close."""

    def __init__(self) -> None:
        from sqlalchemy import create_engine

        self.name = f"flowdeck_bench_{uuid.uuid4().hex[:10]}"
        self.admin = create_engine(PG_ADMIN.replace("postgresql://", "postgresql+psycopg://"),
                                   isolation_level="AUTOCOMMIT")
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{self.name}"')
        self.url = PG_ADMIN.rsplit("/", 1)[0].replace(
            "postgresql://", "postgresql+psycopg://") + f"/{self.name}"
        subprocess.run(FLOWDECK + ["db", "upgrade", "--db", self.url], check=True,
                       capture_output=True, timeout=300)
        self.engine = create_engine(self.url)

    def scalar(self, sql: str, **params):
        from sqlalchemy import text

        with self.engine.connect() as conn:
            return conn.execute(text(sql), params).scalar_one()

    def owners(self) -> dict[str, str]:
        from flowdeck.storage.leases import cluster_view

        view = cluster_view(self.engine, int(TTL * 1000))
        return {lease["flow"]: lease["node"] for lease in view["leases"] if lease["held"]}

    def close(self) -> None:
        self.engine.dispose()
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        self.admin.dispose()


class Node:
    def __init__(self, name: str, config: Path, db: str, simulator: str, folder: Path) -> None:
        self.name = name
        self.args = FLOWDECK + ["daemon", "--config", str(config), "--db", db, "--node", name,
                                "--simulator", simulator]
        self.folder = folder / name
        self.folder.mkdir(exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "FLOWDECK_TOKEN"}
        self.proc = subprocess.Popen(self.args + ["--bind", f"127.0.0.1:{_free_port()}"],
                                     cwd=self.folder, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()


def _wait(cond, timeout: float = 180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.2)
    raise TimeoutError("the cluster did not settle")


def _balanced(db: Database, names: list[str], n_flows: int) -> bool:
    own = db.owners()
    share = -(-n_flows // len(names))
    return (len(own) == n_flows and set(own.values()) == set(names)
            and all(sum(1 for o in own.values() if o == n) <= share for n in names))


def _simulator() -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen(FLOWDECK + ["simulate", "--port", str(port), "--scenario",
                                        "normal", "--seed", "7"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            break
        except OSError:
            time.sleep(0.2)
    return proc, f"http://127.0.0.1:{port}"


def fence_overhead_ms(url: str, n: int = 300) -> float:
    """What the fence check adds to one transaction (ms): fenced against unfenced empty
    transactions on the same connection pool."""
    from sqlalchemy import create_engine

    from flowdeck.storage.leases import Leases, fenced, install_fence

    engine = create_engine(url)
    install_fence(engine)
    leases = Leases(url, "bench", 60.0)
    try:
        leases.join()
        token = leases.acquire("bench-flow")

        def timed(fence: bool) -> float:
            t = time.perf_counter()
            for _ in range(n):
                if fence:
                    with fenced("bench-flow", "bench", token), engine.begin() as conn:
                        conn.exec_driver_sql("SELECT 1")
                else:
                    with engine.begin() as conn:
                        conn.exec_driver_sql("SELECT 1")
            return (time.perf_counter() - t) / n * 1000

        timed(True)
        plain = min(timed(False) for _ in range(3))
        fenced_ms = min(timed(True) for _ in range(3))
        leases.release({"bench-flow": token})
        return max(0.0, fenced_ms - plain)
    finally:
        leases.close()
        engine.dispose()


def throughput(folder: Path, simulator: str, nodes: int, seconds: float,
               copies: int) -> dict:
    db = Database()
    try:
        config = write_config(folder, copies)
        names = [chr(ord("a") + i) for i in range(nodes)]
        procs = [Node(n, config, db.url, simulator, folder) for n in names]
        try:
            _wait(lambda: _balanced(db, names, 2 * copies))
            time.sleep(min(10.0, seconds / 3))  # warm: detectors, first runs
            t0 = db.scalar("SELECT (extract(epoch from clock_timestamp()) * 1000)::bigint")
            x0 = db.scalar("SELECT xact_commit FROM pg_stat_database WHERE datname = :d",
                           d=db.name)
            time.sleep(seconds)
            t1 = db.scalar("SELECT (extract(epoch from clock_timestamp()) * 1000)::bigint")
            x1 = db.scalar("SELECT xact_commit FROM pg_stat_database WHERE datname = :d",
                           d=db.name)
            runs = db.scalar("SELECT count(*) FROM runs WHERE finished_ms BETWEEN :a AND :b",
                             a=t0, b=t1)
        finally:
            for p in procs:
                p.stop()
        dt = (t1 - t0) / 1000
        return {"nodes": nodes, "runs_per_s": int(runs) / dt,
                "transactions_per_run": (x1 - x0) / max(1, runs), "seconds": dt}
    finally:
        db.close()


def takeovers(folder: Path, simulator: str, kills: int, copies: int, seed: int = 7) -> list:
    db = Database()
    rng = random.Random(seed)
    out = []
    try:
        config = write_config(folder, copies)
        names = ["a", "b", "c"]
        nodes = {n: Node(n, config, db.url, simulator, folder) for n in names}
        try:
            for _ in range(kills):
                _wait(lambda: _balanced(db, names, 2 * copies))
                victim = rng.choice(names)
                flows = [f for f, n in db.owners().items() if n == victim]
                killed = db.scalar("SELECT (extract(epoch from clock_timestamp()) * 1000)"
                                   "::bigint")
                nodes[victim].kill()

                def resumed(flows=flows, killed=killed):
                    firsts = [db.scalar(
                        "SELECT min(started_ms) FROM runs WHERE flow = :f AND started_ms > :k "
                        "AND trigger = 'schedule' AND status IN ('ok', 'partial')",
                        f=f, k=killed) for f in flows]
                    return firsts if all(firsts) else None

                firsts = _wait(resumed)
                out.append((max(firsts) - killed) / 1000)
                log(f"   kill {len(out)}/{kills} ({victim}, {len(flows)} flows): "
                    f"{out[-1]:.2f} s")
                nodes[victim].start()
        finally:
            for p in nodes.values():
                p.stop()
    finally:
        db.close()
    return out


def run(opts: Options, kills: int | None = None, seconds: float | None = None
        ) -> tuple[list[Figure], dict]:
    kills = kills if kills is not None else opts.n(20, 4, 2)
    seconds = seconds if seconds is not None else opts.seconds(30, 10, 5)
    copies = 15  # 30 flows
    sim, url = _simulator()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            rows = [throughput(folder, url, n, seconds, copies) for n in (1, 2, 3)]
            db = Database()
            try:
                overhead = fence_overhead_ms(db.url)
            finally:
                db.close()
            times = takeovers(folder, url, kills, copies)
    finally:
        sim.terminate()
        sim.wait(30)
    by = {r["nodes"]: r for r in rows}
    renew = TTL / 3
    extra = {"scaling": rows, "fence_ms_per_transaction": overhead,
             "lease_transactions_per_node_per_s": 2 / renew,
             "fence_ms_per_run": overhead * by[3]["transactions_per_run"],
             "takeover_s": times, "ttl_s": TTL, "every_s": EVERY}
    scaling = by[3]["runs_per_s"] / by[1]["runs_per_s"] if by[1]["runs_per_s"] else None
    base = f"1 node {by[1]['runs_per_s']:.1f} runs/s"
    figures = [
        Figure("cluster_runs_per_s_1", by[1]["runs_per_s"], ">= 1",
               "30 flows every 1 s: 30 runs/s offered", "runs/s"),
        Figure("cluster_runs_per_s_2", by[2]["runs_per_s"], ">= 1", base, "runs/s"),
        Figure("cluster_runs_per_s_3", by[3]["runs_per_s"], ">= 1", base, "runs/s"),
        Figure("cluster_scaling_3_vs_1", scaling, ">= 1", base + " (2 cores)", "x"),
        Figure("cluster_takeover_p50_s", pct(times, 0.5), "<= 5",
               f"TTL {TTL:g} s + renew {renew:g} s + interval {EVERY:g} s", "s"),
        Figure("cluster_takeover_p95_s", pct(times, 0.95), "<= 8",
               f"TTL {TTL:g} s + interval {EVERY:g} s, twice", "s"),
    ]
    return figures, extra


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    figs, extra = run(Options(quick=a.quick), a.kills, a.seconds)
    for f in figs:
        print(f"{f.key}: {f.value} {f.unit} (target {f.target}; {f.baseline})")
    print(json.dumps(extra, indent=1, default=str))
