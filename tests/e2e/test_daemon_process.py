"""The daemon as a real subprocess: --once --json, SIGTERM, SIGKILL mid-batch and restart."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flowdeck.pipeline.config import BUNDLED_CONFIG

pytestmark = pytest.mark.slow

FLOWDECK = [sys.executable, "-m", "flowdeck.console.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(FLOWDECK + args, capture_output=True, text=True, timeout=120, **kw)


@pytest.fixture
def simulator(tmp_path):
    """`flowdeck simulate` in its own process, as a user would start it."""
    port = free_port()
    proc = subprocess.Popen(FLOWDECK + ["simulate", "--port", str(port), "--scenario", "malformed",
                                        "--seed", "7"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("simulator did not start: " + proc.stderr.read())
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


def test_daemon_once_json_against_the_simulator(simulator, tmp_path):
    db = f"sqlite:///{tmp_path / 'd.db'}"
    # The malformed scenario breaks metnet about every other request.
    quarantined = conflicts = 0
    for _ in range(4):
        res = run(["daemon", "--once", "--json", "--db", db, "--simulator", simulator])
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout)
        assert set(out["flows"]) == {"weather", "fx"}
        for flow in out["flows"].values():
            assert set(flow["stages"]) == {"collect", "validate", "transform", "enrich",
                                           "quality", "resolve", "detect", "store"}
        quarantined += out["flows"]["weather"]["quarantined"]
        conflicts += out["flows"]["weather"]["conflicts"]
    assert quarantined > 0
    assert conflicts > 0  # skyobs's KDEN sensor, whenever metnet's payload was readable
    assert "Traceback" not in res.stderr
    status = run(["status", "--json", "--db", db])
    assert status.returncode in (0, 1, 2)
    assert set(json.loads(status.stdout)["flows"]) == {"weather", "fx"}
    issues = json.loads(run(["issues", "--json", "--db", db]).stdout)
    assert any(i["kind"] == "conflict" for i in issues)
    assert any(i["kind"] == "quarantine" for i in issues)


def test_cli_errors_are_one_line(tmp_path):
    # A store-reading command takes its flows from the database: one with no schema, or
    # none run on it yet, says so; a named flow the config has not is a usage error.
    res = run(["export", "nosuchflow", "--db", f"sqlite:///{tmp_path / 'x.db'}"])
    assert res.returncode == 1
    assert res.stderr.strip() == ("flowdeck: the database has no flowdeck schema; "
                                  "run: flowdeck db upgrade")
    assert run(["db", "upgrade", "--db", f"sqlite:///{tmp_path / 'x.db'}"]).returncode == 0
    res = run(["export", "nosuchflow", "--db", f"sqlite:///{tmp_path / 'x.db'}"])
    assert res.returncode == 2
    assert res.stderr.strip().startswith("flowdeck: the database holds no flows yet")
    res = run(["export", "nosuchflow", "--config", str(BUNDLED_CONFIG),
               "--db", f"sqlite:///{tmp_path / 'x.db'}"])
    assert res.returncode == 2
    assert res.stderr.strip().startswith("flowdeck: no flow 'nosuchflow'")
    res = run(["lineage", "12345", "--db", f"sqlite:///{tmp_path / 'x.db'}"])
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    res = run(["daemon", "--once", "--db", "mysql://nope/x"])
    assert res.returncode == 1 and "unsupported database" in res.stderr
    assert "Traceback" not in res.stderr
    res = run(["daemon", "--once", "--scenario", "no-such-scenario",
               "--db", f"sqlite:///{tmp_path / 'y.db'}"])
    assert res.returncode == 2 and "no-such-scenario" in res.stderr


BIG_FLOW = """
flows:
  bulk:
    schedule: {{every: 1s}}
    key: id
    sources:
      - {{name: dump, kind: file, path: {path}, format: jsonl,
          fields: {{id: id, ts: ts, value: value}}, timestamp: {{format: epoch_ms}},
          max_bytes: 64MiB}}
    fields:
      id: {{type: str, required: true}}
      value: {{type: float, range: [0, 1000]}}
    detect: [{{metric: value, methods: [robust_z]}}]
"""


def _db_counts(path: Path) -> tuple[int, int, int, int]:
    con = sqlite3.connect(path, timeout=30)
    try:
        raw = con.execute("select count(*) from raw_payloads").fetchone()[0]
        done = con.execute("select count(*) from raw_status").fetchone()[0]
        recs = con.execute("select count(*) from records").fetchone()[0]
        distinct = con.execute("select count(*) from (select distinct key, ts_ms from records)"
                               ).fetchone()[0]
        return raw, done, recs, distinct
    except sqlite3.OperationalError:
        return 0, 0, 0, 0
    finally:
        con.close()


def test_sigkill_mid_batch_loses_nothing(tmp_path):
    n = 60_000
    now_ms = int(time.time() * 1000)
    data = tmp_path / "dump.jsonl"
    with open(data, "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"k{i % 500}", "ts": now_ms - (n - i) * 1000,
                                 "value": (i * 7) % 1000}) + "\n")
    cfg = tmp_path / "bulk.yaml"
    cfg.write_text(BIG_FLOW.format(path=data))
    dbfile = tmp_path / "bulk.db"
    db = f"sqlite:///{dbfile}"
    proc = subprocess.Popen(FLOWDECK + ["daemon", "--config", str(cfg), "--db", db,
                                        "--bind", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed_mid_batch = False
    deadline = time.time() + 60
    while time.time() < deadline:
        raw, done, _, _ = _db_counts(dbfile) if dbfile.exists() else (0, 0, 0, 0)
        if raw >= 1 and done == 0:
            time.sleep(0.3)  # well inside the processing of 60,000 records
            proc.send_signal(signal.SIGKILL)
            killed_mid_batch = True
            break
        if done:
            break
        time.sleep(0.02)
    proc.wait(timeout=10)
    assert killed_mid_batch, "the batch finished before the kill; make it bigger"
    raw, done, recs, _ = _db_counts(dbfile)
    assert raw == 1 and done == 0 and recs == 0  # fetched and committed, not yet processed
    # Restart: the committed payload is resumed; the re-read file is recognised by its hash.
    res = run(["daemon", "--once", "--json", "--config", str(cfg), "--db", db])
    assert res.returncode == 0, res.stderr
    raw, done, recs, distinct = _db_counts(dbfile)
    assert raw == 1 and done == 1
    assert recs == distinct == n  # every record, no duplicates


def test_sigterm_finishes_and_exits_zero(tmp_path):
    proc = subprocess.Popen(FLOWDECK + ["daemon", "--db", f"sqlite:///{tmp_path / 't.db'}",
                                        "--bind", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 30
    while time.time() < deadline:
        if _db_counts(tmp_path / "t.db")[2] > 0:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
