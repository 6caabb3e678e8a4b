"""`flowdeck daemon` under a service manager: READY/WATCHDOG/RELOADING/STOPPING over a
real $NOTIFY_SOCKET, SIGHUP with a bad config (refused with file:line, the old one runs
on) and a good one (applied in place, same PID), exit code 0 on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

from support.feed import FLOWDECK, free_port, http_get, write_config

BAD = "      bench:\n"  # replaced below to make the config invalid at a known line


def recv_until(sock: socket.socket, want: bytes, timeout: float = 60.0) -> list[bytes]:
    got = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            msg = sock.recv(4096)
        except TimeoutError:
            break
        got.append(msg)
        if want in msg.split(b"\n"):
            return got
    raise AssertionError(f"no {want!r} within {timeout}s; got {got}")


def test_notify_watchdog_and_sighup_reload(tmp_path):
    cfg = write_config(tmp_path)
    good = cfg.read_text()
    port = free_port()
    sock_path = tmp_path / "notify.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(str(sock_path))
    env = {**os.environ, "NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "400000"}
    env.pop("WATCHDOG_PID", None)
    log = open(tmp_path / "daemon.log", "w+")  # noqa: SIM115 (read back below)
    proc = subprocess.Popen(
        [*FLOWDECK, "--log-format", "json", "daemon", "--config", str(cfg), "--db",
         f"sqlite:///{tmp_path / 'd.db'}", "--bind", f"127.0.0.1:{port}"],
        env=env, stdout=subprocess.DEVNULL, stderr=log, cwd=tmp_path)
    try:
        ready = recv_until(srv, b"READY=1")
        assert any(b"STATUS=running 2 flow(s)" in m for m in ready)
        recv_until(srv, b"WATCHDOG=1", timeout=5)
        recv_until(srv, b"WATCHDOG=1", timeout=5)  # again: it keeps pinging

        # a bad config: refused, with its line, and the daemon goes on
        lines = good.splitlines()
        (i,) = [n for n, ln in enumerate(lines) if "schedule: {every: 1h}" in ln][:1]
        lines[i] = lines[i].replace("1h", "soon")
        cfg.write_text("\n".join(lines) + "\n")
        proc.send_signal(signal.SIGHUP)
        status = recv_until(srv, b"STATUS=reload refused: 1 problem(s) in " + str(cfg).encode())
        assert status
        log.seek(0)
        events = [json.loads(ln) for ln in log.read().splitlines() if ln.startswith("{")]
        refused = [e["message"] for e in events if "reload refused" in e["message"]]
        assert any(f"{cfg}:{i + 1}: flows.bench.schedule.every:" in m for m in refused), refused
        assert http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        assert proc.poll() is None

        # a good config with one more flow: applied by re-executing in place
        cfg.write_text(good.replace("  other:\n", "  third:\n    description: new\n"
                                    "    schedule: {every: 1h}\n    key: station\n"
                                    "    sources:\n      - {name: drop, kind: file, path: \""
                                    f"{tmp_path}/other/*.jsonl\", format: jsonl, fields: "
                                    "{station: s, ts: t}, timestamp: {format: epoch_ms}}\n"
                                    "    fields:\n      station: {type: str}\n  other:\n", 1))
        pid = proc.pid
        proc.send_signal(signal.SIGHUP)
        recv_until(srv, b"RELOADING=1")
        recv_until(srv, b"STOPPING=1")
        again = recv_until(srv, b"READY=1")
        assert any(b"running 3 flow(s)" in m for m in again)
        assert proc.pid == pid and proc.poll() is None
        status, _, body = http_get(f"http://127.0.0.1:{port}/api/flows")
        assert status == 200 and "third" in body.decode()

        proc.send_signal(signal.SIGTERM)
        recv_until(srv, b"STOPPING=1")
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        srv.close()
        log.close()
