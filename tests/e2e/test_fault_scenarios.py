"""Fault scenarios against a real `flowdeck daemon` subprocess and its built-in simulator.

Each test writes a scenario with its fault times compressed to seconds, starts the
daemon on a fast schedule, waits (bounded) for the recovery to show in the store, and
then checks what an operator would: the recovery-action sequence (as `flowdeck actions
--json` prints it), the data (every station every minute, nothing twice) and the
issues raised and closed. The in-process versions, on a manual clock, are in
tests/test_recovery.py; these prove the same with the scheduler, the process and the
network for real.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.feed import free_port, http_get
from support.recovery import daemon_config_text

from flowdeck.pipeline.demo.catalogue import NETWORKS

pytestmark = pytest.mark.slow

FLOWDECK = [sys.executable, "-m", "flowdeck.console.cli"]
STATIONS = set().union(*NETWORKS.values())


class ScenarioDaemon:
    """`flowdeck daemon --scenario FILE` on a free port, its SQLite store in ``tmp``."""

    def __init__(self, tmp: Path, faults: str, *, config: str | None = None,
                 name: str = "scenario") -> None:
        self.tmp = tmp
        self.scenario = tmp / f"{name}.yaml"
        self.scenario.write_text(f"name: {name}\nfaults:\n{faults}")
        self.config = tmp / "flows.yaml"
        self.config.write_text(config or daemon_config_text())
        self.dbfile = tmp / "flowdeck.db"
        self.db = f"sqlite:///{self.dbfile}"
        self.proc: subprocess.Popen | None = None
        self.log = tmp / "daemon.log"

    def start(self) -> ScenarioDaemon:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            FLOWDECK + ["daemon", "--config", str(self.config), "--db", self.db,
                        "--bind", f"127.0.0.1:{self.port}", "--scenario", str(self.scenario)],
            stdout=subprocess.DEVNULL, stderr=open(self.log, "a"), cwd=self.tmp,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.wait(lambda: self._ready(), "the daemon to be ready", 30)
        return self

    def _ready(self) -> bool:
        try:
            return http_get(self.url + "/readyz")[0] == 200
        except OSError:
            return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait(self, cond, what: str, timeout: float = 45.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited while waiting for {what}: "
                                     + self.log.read_text()[-2000:])
            try:
                if cond():
                    return
            except sqlite3.OperationalError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; actions: {self.actions()[-30:]}")

    def stop(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
        assert "Traceback" not in self.log.read_text()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    # -- what an operator sees

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(FLOWDECK + [*args, "--config", str(self.config), "--db", self.db],
                              capture_output=True, text=True, timeout=60, cwd=self.tmp)

    def actions(self, flow: str = "weather") -> list[tuple[str, str | None, str]]:
        """(action, source, outcome), oldest first, from `flowdeck actions --json`."""
        res = self.cli("actions", "--flow", flow, "--json", "--limit", "1000")
        if res.returncode != 0:
            return []
        return [(a["action"], a["source"], a["outcome"]) for a in reversed(json.loads(res.stdout))]

    def names(self, flow: str = "weather") -> list[str]:
        return [a for a, _, _ in self.actions(flow)]

    def issues(self, kind: str, flow: str = "weather") -> list[dict]:
        res = self.cli("issues", "--json", "--flow", flow)
        return [i for i in json.loads(res.stdout) if i["kind"] == kind]

    def sql(self, query: str, *args) -> list[tuple]:
        con = sqlite3.connect(self.dbfile, timeout=10)
        try:
            return con.execute(query, args).fetchall()
        finally:
            con.close()

    def runs(self, flow: str = "weather") -> int:
        return self.sql("select count(*) from runs where flow = ? and status != 'running'",
                        flow)[0][0]


@pytest.fixture
def daemons():
    started: list[ScenarioDaemon] = []
    yield started
    for d in started:
        if d.alive():
            d.proc.kill()
            d.proc.wait(timeout=10)


def launch(daemons, tmp_path, faults: str, **kw) -> ScenarioDaemon:
    d = ScenarioDaemon(tmp_path, faults, **kw)
    daemons.append(d)
    return d.start()


def assert_every_station_every_minute_once(d: ScenarioDaemon, flow: str = "weather") -> None:
    rows = d.sql("select key, ts_ms from records where flow = ?", flow)
    assert len(rows) == len(set(rows)), "a record is stored twice"
    minutes = sorted({ts for _, ts in rows})
    assert minutes == list(range(minutes[0], minutes[-1] + 60_000, 60_000)), "a minute is missing"
    if flow == "weather":
        for m in minutes:
            assert {k for k, ts in rows if ts == m} == STATIONS, f"stations missing at {m}"
    raw, done = d.sql("select (select count(*) from raw_payloads), "
                      "(select count(*) from raw_status)")[0]
    assert raw == done, "a committed payload was never processed"


def in_order(names: list[str], *wanted: str) -> None:
    idx = [names.index(w) for w in wanted]
    assert idx == sorted(idx), f"expected {wanted} in this order in {names}"


def test_primary_outage_then_recovery(daemons, tmp_path):
    d = launch(daemons, tmp_path,
               "  - {kind: outage, source: metnet, start: 2s, duration: 4s}\n")
    d.wait(lambda: "failback" in d.names(), "the flow to fail back to metnet")
    d.stop()
    seq = d.actions()
    names = [a for a, _, _ in seq]
    assert ("retry", "metnet", "failed") in seq
    in_order(names, "retry", "failover", "breaker_open", "probe", "breaker_close", "failback")
    assert ("failover", "airnet", "ok") in seq and ("failback", "metnet", "ok") in seq
    probes = [o for a, s, o in seq if a == "probe" and s == "metnet"]
    assert probes[-1] == "ok"
    assert "incident" not in names  # two other networks answered throughout
    assert_every_station_every_minute_once(d)
    status = json.loads(d.cli("status", "--json").stdout)
    assert status["flows"]["weather"]["breakers"]["metnet"] == "closed"


def test_all_sources_down_serves_stale_then_recovers(daemons, tmp_path):
    d = launch(daemons, tmp_path, "  - {kind: outage, source: [metnet, airnet, skyobs], "
                                  "start: 2s, duration: 6s}\n")
    d.wait(lambda: "incident" in d.names(), "the incident")
    flows = json.loads(http_get(d.url + "/api/flows")[2])["flows"]
    if "recovered" not in d.names():  # still inside the outage: served, marked stale
        assert flows["weather"]["stale"] is True and flows["weather"]["state"] == "failing"
        latest = json.loads(http_get(d.url + "/api/flows/weather/latest")[2])
        assert latest["records"] and latest["stale"] is True
        assert d.cli("status").returncode == 2
    d.wait(lambda: "recovered" in d.names(), "the recovery")
    d.stop()
    names = d.names()
    # No source answered the first run of the outage: the incident comes at once, the
    # breakers open as their failures add up, and the first answer ends it.
    in_order(names, "retry", "incident", "breaker_open", "recovered")
    incidents = d.issues("incident")
    assert len(incidents) == 1 and incidents[0]["state"] == "resolved"
    assert incidents[0]["severity"] == "critical"
    assert_every_station_every_minute_once(d)


def test_flapping_source_does_not_flap_the_breaker(daemons, tmp_path):
    d = launch(daemons, tmp_path,
               "  - {kind: outage, source: metnet, start: 1s, duration: 1s, every: 2s}\n")
    d.wait(lambda: d.runs() >= 24, "24 runs (twelve seconds, six up-down cycles)")
    d.stop()
    names = d.names()
    # Six up-down cycles would flip a plain breaker twelve times; two probes in a row to
    # close and doubling cooldowns keep metnet out for longer and longer instead.
    opens, closes = names.count("breaker_open"), names.count("breaker_close")
    assert opens >= 1 and closes <= opens
    assert opens + closes <= 6
    assert_every_station_every_minute_once(d)


def test_slow_source_times_out_and_runs_do_not_pile_up(daemons, tmp_path):
    d = launch(daemons, tmp_path,
               "  - {kind: latency, source: airnet, delay: 3s, rate: 1}\n")
    d.wait(lambda: ("breaker_open", "airnet", "ok") in d.actions(), "airnet's breaker to open")
    d.wait(lambda: d.runs() >= 8, "more runs")
    d.stop()
    retries = [r for r in d.sql("select reason from actions where action = 'retry' "
                                "and source = 'airnet'")]
    assert retries and all("timed out" in r[0] for r in retries)
    # Every 500 ms a run is due, each waiting seconds for airnet: never two at once.
    runs = d.sql("select started_ms, finished_ms from runs where flow = 'weather' "
                 "order by started_ms")
    for (_, end), (start, _) in zip(runs, runs[1:], strict=False):
        assert start >= end, "a run started before the previous one finished"
    assert_every_station_every_minute_once(d)


def test_malformed_burst_is_quarantined_and_the_process_keeps_running(daemons, tmp_path):
    d = launch(daemons, tmp_path,
               "  - {kind: malformed, source: metnet, start: 0s, duration: 4s, rate: 1}\n")
    d.wait(lambda: d.issues("quarantine"), "a quarantine issue")
    d.wait(lambda: all(i["state"] == "resolved" for i in d.issues("quarantine")),
           "the quarantine issue to resolve itself after the burst (3 s quiet)")
    assert d.alive() and http_get(d.url + "/healthz")[0] == 200
    d.stop()
    reasons = {r[0] for r in d.sql("select reason from quarantine where source = 'metnet'")}
    assert reasons  # each with a reason, none silently dropped
    assert "auto_resolve" in d.names()
    assert_every_station_every_minute_once(d)


def test_schema_drift_is_quarantined_with_an_issue_and_the_flow_goes_on(daemons, tmp_path):
    d = launch(daemons, tmp_path, "  - {kind: schema_drift, source: metnet, start: 2s, "
                                  "rename: {temperature: temp}}\n")
    # The drift shows in the first payload fetched after it starts; under load that can
    # take longer than the other scenarios' waits.
    d.wait(lambda: d.issues("quarantine"), "a quarantine issue for the renamed field",
           timeout=90)
    drift_runs = d.runs()
    d.wait(lambda: d.runs() >= drift_runs + 4, "more runs after the drift")
    d.stop()
    # (Inside a minute metnet's payload does not change, so the issue may already have
    # resolved itself after 3 s of quiet; it reopens with the next minute's payload.)
    issue = d.issues("quarantine")[-1]
    assert issue["source"] == "metnet" and "quarantined from metnet" in issue["title"]
    messages = " ".join(r[0] for r in d.sql("select message from quarantine "
                                            "where source = 'metnet'"))
    assert "temperature" in messages
    # metnet's other stations are still covered by airnet and skyobs: no gap.
    assert_every_station_every_minute_once(d)
    last = d.sql("select status from runs where flow = 'weather' order by id desc limit 3")
    assert all(s in ("ok", "partial") for (s,) in last)


def test_sigkill_mid_run_and_restart_keeps_state_and_data(daemons, tmp_path):
    d = launch(daemons, tmp_path,
               "  - {kind: outage, source: metnet, start: 1s, duration: 30s}\n")
    d.wait(lambda: "breaker_open" in d.names(), "metnet's breaker to open")
    d.kill()
    before = d.names()
    # Restarted with the scenario over (metnet healthy): the breaker that was open is
    # still open after the restart, is probed, and closes; nothing is lost or doubled.
    d.scenario.write_text("name: healthy\nfaults: []\n")
    d.start()
    d.wait(lambda: "breaker_close" in d.names()[len(before):], "metnet's breaker to close")
    d.stop()
    after = d.names()[len(before):]
    assert "breaker_open" not in after[: after.index("probe")]  # it came back open
    in_order(after, "probe", "breaker_close")
    assert_every_station_every_minute_once(d)


LOCKED_FLOW = """
store: {busy_timeout: 200ms, retry: 300ms}
flows:
  meters:
    schedule: {every: 300ms}
    key: id
    sources:
      - {name: drop, kind: file, path: "drop/*.jsonl", format: jsonl,
         fields: {id: id, ts: ts, value: value}, timestamp: {format: epoch_ms}}
    fields:
      id: {type: str, required: true}
      value: {type: float}
"""


def drop(d: ScenarioDaemon, n: int) -> None:
    """A new file of ten readings, like a data logger writing one every so often."""
    folder = d.tmp / "drop"
    folder.mkdir(exist_ok=True)
    now = int(time.time() * 1000)
    lines = "".join(json.dumps({"id": f"m{n}-{i}", "ts": now, "value": i}) + "\n"
                    for i in range(10))
    tmp = folder / f".{n}.tmp"
    tmp.write_text(lines)
    tmp.rename(folder / f"{n:03d}.jsonl")


def test_database_locked_for_a_while_loses_nothing(daemons, tmp_path):
    d = ScenarioDaemon(tmp_path, "  []\n", config=LOCKED_FLOW.replace(
        "drop/*.jsonl", str(tmp_path / "drop" / "*.jsonl")))
    daemons.append(d)
    drop(d, 1)
    d.start()
    count = "select count(*) from records where flow = 'meters'"
    d.wait(lambda: d.sql(count)[0][0] == 10, "the first file's records")
    spool = tmp_path / "flowdeck.db.spool" / "meters"
    con = sqlite3.connect(d.dbfile, isolation_level=None, timeout=10)
    con.execute("BEGIN EXCLUSIVE")  # another program holds the database for a while
    try:
        for n in (2, 3, 4):
            drop(d, n)
            d.wait(lambda n=n: len(list(spool.glob("*.spool"))) == n - 1,
                   f"file {n} to be buffered")
        assert d.alive()
    finally:
        con.execute("ROLLBACK")
        con.close()
    d.wait(lambda: d.sql(count)[0][0] == 40, "the buffered files' records")
    drop(d, 5)
    d.wait(lambda: d.sql(count)[0][0] == 50, "a new file after the outage")
    d.wait(lambda: "store_recovered" in d.names("meters"), "the recovery to be recorded")
    d.stop()
    names = d.names("meters")
    in_order(names, "store_unavailable", "store_recovered")
    assert names.count("store_unavailable") == 1
    recovered = d.sql("select reason from actions where action = 'store_recovered'")[0][0]
    assert "3 buffered payload(s) committed" in recovered
    issue = d.issues("store_unavailable", "meters")
    assert len(issue) == 1 and issue[0]["state"] == "resolved"
    assert not list(spool.glob("*.spool"))
    rows = d.sql("select key, ts_ms from records")
    assert len(rows) == len(set(rows)) == 50
    raw, done = d.sql("select (select count(*) from raw_payloads), "
                      "(select count(*) from raw_status)")[0]
    assert raw == done == 5
