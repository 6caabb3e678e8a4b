"""The console's own engine in a child process, reached over the feed.

``flowdeck console`` and ``flowdeck demo`` used to run the engine in the
console's process. The engine and the console then share one interpreter and
one GIL: at 10,000 records/s the engine's batches and the console's repaints
queue behind each other (key to repaint p99 ~2 s, see bench/bench_console.py).
So by default the console starts ``flowdeck daemon`` as a child on a free
loopback port with a one-time token, and attaches to it with a
:class:`~flowdeck.console.client.remote.RemoteControl`: the same screens through the
same interface as ``--connect``. ``--in-process`` keeps the old way.

:class:`EngineProcess` has the ``started`` / ``start()`` / ``stop()`` of an
engine, so the app starts it as it starts an in-process engine (the header says
"starting engine…" meanwhile) and stops it when it quits. The child's log goes to
a file (the terminal belongs to the console); its warnings also reach the Events
screen as ``log`` events.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from flowdeck.console.client.remote import RemoteControl, RemoteError, feed_url

READY = re.compile(r"feed on (ws://\S+?),? ")
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the engine goes when the console goes, even if the console is killed."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class EngineProcess:
    """``flowdeck daemon`` in a child process, and the Control that reaches it."""

    def __init__(self, daemon_args: list[str], *, token_env: str = "FLOWDECK_TOKEN",
                 log_path: str | Path | None = None, python: str | None = None) -> None:
        self.daemon_args = list(daemon_args)
        self.token = secrets.token_hex(16)
        self.token_env = token_env
        self.python = python or sys.executable
        self.log_path = Path(log_path) if log_path else Path(
            tempfile.gettempdir()) / f"flowdeck-engine-{os.getpid()}.log"
        # The URL is known once the child listens; until then the control has none.
        self.control = RemoteControl("ws://127.0.0.1:1", self.token)
        self.control.description = "local engine (starting)"
        self.proc: subprocess.Popen | None = None
        self.started = False

    @property
    def spawned(self) -> bool:
        """The child runs (it may not listen yet): quitting must stop it."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def _last_log_line(self) -> str:
        with contextlib.suppress(OSError):
            lines = [ln for ln in self.log_path.read_text(errors="replace").splitlines()
                     if ln.strip()]
            if lines:
                return lines[-1].strip()
        return "no output"

    async def start(self) -> None:
        """Start the child and wait until its feed listens; RemoteError if it cannot."""
        cmd = [self.python, "-m", "flowdeck.console.cli", *self.daemon_args,
               "--bind", "127.0.0.1:0", "--log-events"]
        env = {**os.environ, self.token_env: self.token, "PYTHONUNBUFFERED": "1"}
        log = open(self.log_path, "w")  # noqa: SIM115 - the child owns it from here
        try:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        finally:
            log.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_S
        while True:
            text = ""
            with contextlib.suppress(OSError):
                text = self.log_path.read_text(errors="replace")
            m = READY.search(text)
            if m:
                break
            if self.proc.poll() is not None:
                raise RemoteError(f"the engine exited ({self.proc.returncode}): "
                                  f"{self._last_log_line()} (log: {self.log_path})")
            if loop.time() > deadline:
                await self.stop()
                raise RemoteError(f"the engine did not start within {START_TIMEOUT_S:g}s "
                                  f"(log: {self.log_path})")
            await asyncio.sleep(0.05)
        url = feed_url(m.group(1))
        self.control.url = url
        self.control.description = f"local engine :{url.rsplit(':', 1)[1].split('/')[0]}"
        self.started = True

    async def stop(self) -> None:
        """SIGTERM (the daemon finishes its batch), then SIGKILL if it takes too long."""
        with contextlib.suppress(Exception):
            await self.control.close()
        proc, self.started = self.proc, False
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_TIMEOUT_S
        while proc.poll() is None and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        if proc.returncode == 0:
            with contextlib.suppress(OSError):
                self.log_path.unlink()  # a clean stop: nothing to look at
