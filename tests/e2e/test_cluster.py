"""Several `flowdeck daemon` processes on one real PostgreSQL database: each flow owned by
exactly one node, takeover after a SIGKILL, a node cut from the database stops its flows
instead of writing unfenced, and a rolling restart of every node loses nothing.

Short leases (3 s) and generous waits: the machine is shared and slow. No timed
assertion: takeover times are printed; bench/ measures them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from flowdeck.storage.leases import cluster_view
from tests.support.cluster import demo_cluster_config
from tests.support.crashes import free_port, http_json
from tests.support.proxy import Proxy

pytestmark = pytest.mark.slow

FLOWDECK = [sys.executable, "-m", "flowdeck.console.cli"]
TTL = 3.0
EVERY = 3.0


def write_config(folder: Path, copies: int = 3) -> Path:
    """The demo's two flows, ``copies`` times each (six flows), every 3 s, leases of 3 s."""
    return demo_cluster_config(folder, copies, every=EVERY, lease_ttl=TTL,
                               extra={"store": {"retry": "1s"}})


@pytest.fixture
def simulator():
    port = free_port()
    proc = subprocess.Popen(FLOWDECK + ["simulate", "--port", str(port), "--scenario", "normal",
                                        "--seed", "7"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            http_json(url + "/", 1.0)
            break
        except OSError:
            time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(30)


class Node:
    def __init__(self, name: str, config: Path, db_url: str, simulator: str, log: Path) -> None:
        self.name, self.config, self.db_url, self.simulator = name, config, db_url, simulator
        self.log = log
        self.start()

    def start(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if k not in ("FLOWDECK_TOKEN",
                                                               "FLOWDECK_CRASH_AT")}
        env["PYTHONUNBUFFERED"] = "1"
        self._err = open(self.log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            FLOWDECK + ["daemon", "--config", str(self.config), "--db", self.db_url,
                        "--node", self.name, "--simulator", self.simulator,
                        "--bind", f"127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=self._err, env=env)

    def ready(self) -> dict:
        """/readyz's body, 200 or 503."""
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=10) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            return json.loads(e.read() or b"{}")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self._err.close()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(60)
        finally:
            self._err.close()


def db_url_for(pg_url: str, node: str) -> str:
    return f"{pg_url}?application_name=flowdeck-{node}"


def wait(cond, what: str, timeout: float = 120.0, every: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"not within {timeout:g}s: {what}")


def owners(engine) -> dict[str, str]:
    view = cluster_view(engine, int(TTL * 1000))
    return {lease["flow"]: lease["node"] for lease in view["leases"] if lease["held"]}


def balanced(engine, nodes: list[str], n_flows: int = 6):
    own = owners(engine)
    if len(own) != n_flows or set(own.values()) != set(nodes):
        return None
    per = {n: sum(1 for o in own.values() if o == n) for n in nodes}
    share = -(-n_flows // len(nodes))
    return own if all(v <= share for v in per.values()) else None


def overlapping_runs(engine) -> list:
    """Two runs of one flow at the same time: two nodes ran it at once (one node runs a
    flow's runs one after the other)."""
    with engine.connect() as conn:
        return conn.execute(text(
            "SELECT a.flow, a.id, b.id FROM runs a JOIN runs b ON a.flow = b.flow "
            "AND a.id < b.id AND b.started_ms < a.finished_ms "
            "AND a.started_ms < b.finished_ms WHERE a.finished_ms IS NOT NULL "
            "AND b.finished_ms IS NOT NULL")).all()


def duplicates_and_pending(engine) -> tuple[int, int]:
    with engine.connect() as conn:
        dup = conn.execute(text(
            "SELECT count(*) - count(DISTINCT (flow, key, ts_ms)) FROM records")).scalar_one()
        pending = conn.execute(text(
            "SELECT count(*) FROM raw_payloads r LEFT JOIN raw_status s ON s.raw_id = r.id "
            "WHERE s.raw_id IS NULL")).scalar_one()
    return dup, pending


def last_success(engine, flow: str) -> int:
    with engine.connect() as conn:
        return conn.execute(text(
            "SELECT coalesce(max(started_ms), 0) FROM runs WHERE flow = :f AND status IN "
            "('ok', 'partial') AND trigger = 'schedule'"), {"f": flow}).scalar_one()


@pytest.fixture
def cluster_db(pg_url):
    res = subprocess.run(FLOWDECK + ["db", "upgrade", "--db", pg_url], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    engine = create_engine(pg_url)
    yield pg_url, engine
    engine.dispose()


def test_three_nodes_own_each_flow_once_and_take_over_a_killed_node(cluster_db, simulator,
                                                                     tmp_path):
    pg_url, engine = cluster_db
    config = write_config(tmp_path)
    nodes = {n: Node(n, config, db_url_for(pg_url, n), simulator, tmp_path / f"{n}.log")
             for n in "abc"}
    try:
        own = wait(lambda: balanced(engine, ["a", "b", "c"]), "six flows over three nodes")
        assert sorted(own.values()) == ["a", "a", "b", "b", "c", "c"]  # each flow once
        ready = nodes["a"].ready()
        assert ready["cluster"]["node"] == "a" and len(ready["cluster"]["owned"]) == 2
        victim = [f for f, n in own.items() if n == "c"]
        wait(lambda: all(last_success(engine, f) > 0 for f in own), "every flow ran")
        assert owners(engine) == own  # settled: nothing moved meanwhile
        killed_at = int(time.time() * 1000)
        nodes["c"].kill()
        wait(lambda: balanced(engine, ["a", "b"]), "c's flows taken over by a and b")
        wait(lambda: all(last_success(engine, f) > killed_at for f in victim),
             "c's flows run again on their new nodes")
        took = [(last_success(engine, f) - killed_at) / 1000 for f in victim]
        gaps = []
        with engine.connect() as conn:
            for f in victim:
                starts = [t for (t,) in conn.execute(text(
                    "SELECT started_ms FROM runs WHERE flow = :f AND status IN ('ok', "
                    "'partial') ORDER BY started_ms"), {"f": f})]
                before = [t for t in starts if t <= killed_at]
                after = [t for t in starts if t > killed_at]
                gaps.append((after[0] - before[-1]) / 1000 if before and after else None)
        print(f"takeover (kill to first run on the new node): {took} s; gap between the "
              f"last run on c and the first after it: {gaps} s "
              f"(TTL {TTL:g} s + interval {EVERY:g} s)")
        # The operator hands one of a's flows to b (asked of a's feed).
        flow = sorted(f for f, n in owners(engine).items() if n == "a")[0]
        res = subprocess.run(FLOWDECK + ["act", "move", "--flow", flow, "--param", "node=b",
                                         "--yes", "--config", str(config), "--connect",
                                         f"ws://127.0.0.1:{nodes['a'].port}/feed"],
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        assert f"{flow} moves from a to b" in res.stdout
        wait(lambda: owners(engine).get(flow) == "b" and balanced(engine, ["a", "b"]),
             f"{flow} moved to b, the rest rebalanced")
        status = subprocess.run(FLOWDECK + ["status", "--json", "--db", pg_url],
                                capture_output=True, text=True, timeout=120)
        cluster = json.loads(status.stdout)["cluster"]
        live = {n["node"]: sorted(n["flows"]) for n in cluster["nodes"] if n["live"]}
        assert set(live) == {"a", "b"} and flow in live["b"]
        assert sorted(live["a"] + live["b"]) == sorted(own)
        dead = next(n for n in cluster["nodes"] if n["node"] == "c")
        assert dead["live"] is False and dead["flows"] == []
    finally:
        codes = [n.stop() for n in nodes.values() if n.proc.poll() is None]
    assert codes == [0, 0]
    assert overlapping_runs(engine) == []
    dup, pending = duplicates_and_pending(engine)
    assert dup == 0
    assert pending == 0  # what c committed and never processed was processed by a or b
    for n in "ab":
        assert "Traceback" not in (tmp_path / f"{n}.log").read_text()


def test_a_node_cut_from_the_database_stops_its_flows_and_comes_back(cluster_db, simulator,
                                                                      tmp_path):
    pg_url, engine = cluster_db
    config = write_config(tmp_path)
    proxy = Proxy(("127.0.0.1", 5432))
    via_proxy = pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    x = Node("x", config, db_url_for(via_proxy, "x"), simulator, tmp_path / "x.log")
    y = Node("y", config, db_url_for(pg_url, "y"), simulator, tmp_path / "y.log")
    try:
        wait(lambda: balanced(engine, ["x", "y"]), "six flows over two nodes")
        # Its connections terminated again and again: it reconnects, and whatever it
        # writes stays fenced (no flow ever runs on both nodes at once).
        for _ in range(8):
            with engine.connect() as conn:
                conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                  "WHERE application_name = 'flowdeck-x'"))
            time.sleep(1.0)
        wait(lambda: balanced(engine, ["x", "y"]), "x back to its share after the kills")
        proxy.cut()  # a network partition between x and the database
        stopped = wait(lambda: (r := x.ready()).get("cluster", {}).get("owned") == [] and r,
                       "x stopped running its flows")
        assert stopped["ready"] is False
        wait(lambda: set(owners(engine).values()) == {"y"} and len(owners(engine)) == 6,
             "y took every flow over")
        cut_at = int(time.time() * 1000)
        proxy.restore()
        wait(lambda: balanced(engine, ["x", "y"]), "x takes its share again", timeout=180)
        wait(lambda: all(last_success(engine, f) > cut_at for f, n in owners(engine).items()
                         if n == "x"), "x runs its flows again")
    finally:
        codes = [n.stop() for n in (x, y)]
        proxy.close()
    assert codes == [0, 0]
    assert overlapping_runs(engine) == []
    dup, pending = duplicates_and_pending(engine)
    assert dup == 0 and pending == 0
    log = (tmp_path / "x.log").read_text()
    assert "stops running" in log  # it said why it stopped its flows


def test_a_rolling_restart_of_every_node_loses_nothing(cluster_db, simulator, tmp_path):
    pg_url, engine = cluster_db
    config = write_config(tmp_path)
    nodes = {n: Node(n, config, db_url_for(pg_url, n), simulator, tmp_path / f"{n}.log")
             for n in "abc"}
    try:
        wait(lambda: balanced(engine, ["a", "b", "c"]), "six flows over three nodes")
        for name, node in nodes.items():
            assert node.stop() == 0  # graceful: its leases released at once
            others = [n for n in nodes if n != name]
            wait(lambda others=others: balanced(engine, others), f"{name}'s flows handed over")
            node.start()
            wait(lambda: balanced(engine, list(nodes)), f"{name} back with its share")
        restarted_at = int(time.time() * 1000)
        wait(lambda: all(last_success(engine, f) > restarted_at for f in owners(engine)),
             "every flow runs after the restarts")
    finally:
        codes = [n.stop() for n in nodes.values() if n.proc.poll() is None]
    assert codes == [0, 0, 0]
    assert overlapping_runs(engine) == []
    dup, pending = duplicates_and_pending(engine)
    assert dup == 0 and pending == 0
