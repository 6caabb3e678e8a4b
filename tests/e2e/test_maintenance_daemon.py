"""An operator's maintenance window across a real `flowdeck daemon` restart: started over
the feed with `flowdeck act`, the daemon stopped (SIGTERM) and started again on the same
SQLite file, the window is still on, and `flowdeck act stop_maintenance` ends it."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

pytestmark = pytest.mark.slow

FLOWDECK = [sys.executable, "-m", "flowdeck.console.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_daemon(db: str, port: int, log) -> subprocess.Popen:
    proc = subprocess.Popen(FLOWDECK + ["daemon", "--db", db, "--bind", f"127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while time.time() < deadline:
        assert proc.poll() is None, "the daemon exited"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2):
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    pytest.fail("the daemon did not come up")


def stop_daemon(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=60)


def window(port: int, flow: str) -> dict | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/flows", timeout=10) as r:
        return json.load(r)["flows"][flow]["maintenance"]


def act(port: int, *args: str) -> dict:
    res = subprocess.run(FLOWDECK + ["act", *args, "--yes", "--json", "--actor", "alice",
                                     "--connect", f"ws://127.0.0.1:{port}"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    return json.loads(res.stdout)


def test_an_operator_window_is_still_on_after_a_daemon_restart(tmp_path):
    db = f"sqlite:///{tmp_path / 'm.db'}"
    port = free_port()
    with open(tmp_path / "daemon.log", "wb") as log:
        proc = start_daemon(db, port, log)
        try:
            act(port, "start_maintenance", "--flow", "weather", "--param", "duration=2h",
                "--param", "mode=pause")
            before = window(port, "weather")
            assert before is not None and before["mode"] == "pause"
        finally:
            assert stop_daemon(proc) == 0

        proc = start_daemon(db, port, log)
        try:
            after = window(port, "weather")
            assert after is not None and after["mode"] == "pause"
            assert (after["start_ms"], after["until_ms"]) == (before["start_ms"],
                                                              before["until_ms"])
            assert window(port, "fx") is None
            res = act(port, "stop_maintenance", "--flow", "weather")
            assert "maintenance on weather stopped" in json.dumps(res)
            assert window(port, "weather") is None
        finally:
            assert stop_daemon(proc) == 0

    status = subprocess.run(FLOWDECK + ["status", "--json", "--db", db], capture_output=True,
                            text=True, timeout=60)
    assert json.loads(status.stdout)["flows"]["weather"]["maintenance"] is None
