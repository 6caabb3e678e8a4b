"""1,000 idle viewers on a real `flowdeck daemon` (issue 15, item 4).

Every one gets its ``hello``, the daemon still answers ``/readyz`` and a new viewer
while they sit there, and the daemon's memory per connection (VmRSS from
/proc/<pid>/status, measured before and after) is printed: a figure for the report,
not an assertion (speed and size belong in bench/).
"""

from __future__ import annotations

import asyncio
import json
import resource
import time
from pathlib import Path

import httpx
import pytest
from support.feed import Client, Daemon
from websockets.asyncio.client import connect

N = 1000


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def _raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < need:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {need}")


@pytest.fixture
def daemon(tmp_path):
    # The child inherits the raised limit (the daemon holds one fd per viewer too).
    _raise_fd_limit(2 * N + 200)
    d = Daemon(["--db", f"sqlite:///{tmp_path / 'idle.db'}"])
    d.wait_ready(60)
    yield d
    assert "Traceback" not in d.stop()


async def test_a_thousand_idle_viewers(daemon):
    pid = daemon.proc.pid
    url = daemon.ws_url + "/feed"
    # Warm up: one viewer through a full subscribe, so lazily built state is in the baseline.
    warm = await Client.open(url)
    await warm.subscribe("flows")
    await warm.close()
    await asyncio.sleep(0.5)
    before_rss, before_fds = rss_kib(pid), fds(pid)
    conns = []
    t0 = time.monotonic()
    for _ in range(0, N, 50):  # fifty at a time, each waits for its hello
        batch = await asyncio.gather(
            *(connect(url, compression=None, open_timeout=60) for _ in range(50))
        )
        hellos = await asyncio.gather(*(ws.recv() for ws in batch))
        assert all(json.loads(h)["type"] == "hello" for h in hellos)
        conns.extend(batch)
    opened_s = time.monotonic() - t0
    await asyncio.sleep(1.0)
    after_rss, after_fds = rss_kib(pid), fds(pid)
    try:
        assert after_fds - before_fds >= N  # every one is really held open by the daemon
        async with httpx.AsyncClient(timeout=30) as client:
            r = await client.get(daemon.url + "/readyz")
            assert r.status_code == 200 and r.json()["ready"] is True
        late = await Client.open(url)
        _, snap = await late.subscribe("flows")
        assert set(snap["data"]["flows"]) == {"weather", "fx"}
        await late.close()
        per_conn = (after_rss - before_rss) / N
        print(
            f"\nidle viewers: {N} opened in {opened_s:.1f}s; daemon RSS {before_rss} -> "
            f"{after_rss} KiB = {per_conn:.1f} KiB per connection; fds {before_fds} -> "
            f"{after_fds}"
        )
    finally:
        await asyncio.gather(*(ws.close() for ws in conns), return_exceptions=True)
    # ... and lets them all go.
    deadline = time.monotonic() + 30
    while fds(pid) > before_fds + 10 and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert fds(pid) <= before_fds + 10
