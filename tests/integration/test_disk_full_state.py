"""A full disk under a real engine (issue 15, item 3): the SQLite file and its spool on a
small tmpfs filled to the last byte. While it lasts the engine's own picture says so (the
store down for writes with reason ``disk_full``, the held ``store_unavailable`` action and
issue, the spool's refusal blamed on the disk, not on ``store.spool_max``), the metrics
follow (``flowdeck_store_up`` 0, ``flowdeck_store_write_errors_total{reason="disk_full"}``),
and all of it clears once space returns. Needs root to mount a tmpfs; skips otherwise."""

from __future__ import annotations

import os

import pytest
from support.disk import small_tmpfs
from support.recovery import fast_config, issues_of

from flowdeck.pipeline.engine.engine import Engine
from flowdeck.pipeline.serve.metrics import FeedMetrics
from flowdeck.storage.store import Store


@pytest.fixture
def small_disk(tmp_path):
    with small_tmpfs(tmp_path, "4m") as mnt:
        yield mnt


def fill(folder) -> os.PathLike:
    """Every free byte of the filesystem taken by one file (ENOSPC ends the writing)."""
    path = folder / "filler"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    return path


def metric(metrics: FeedMetrics, line_start: str) -> float | None:
    for line in metrics.render().decode().splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_a_full_disk_shows_while_it_lasts_and_clears(small_disk, clock):
    db = small_disk / "full.db"
    store = Store(f"sqlite:///{db}", busy_timeout=0.2)
    engine = Engine(fast_config(), store, clock=clock)
    sub = engine.hub.subscribe(types={"action"})
    metrics = FeedMetrics()
    await engine.start(schedule=False)
    try:
        assert (await engine.run_flow("weather")).status == "ok"
        clock.advance(60)
        metrics.set_store(engine.snapshot())
        assert metric(metrics, "flowdeck_store_up") == 1
        filler = fill(small_disk)
        for _ in range(30):  # a few minutes of new data against the full disk
            s = await engine.run_flow("weather")
            clock.advance(60)
            if engine.guard.down_since is not None:
                break
        assert engine.guard.down_since is not None, "no write failed on a full disk"
        assert s.status in ("partial", "failed") and "disk is full" in (s.error or "")
        st = engine.snapshot()["flows"]["weather"]["store"]
        assert st["available"] is False
        assert st["reason"] == "disk_full" and "disk is full" in (st["error"] or "")
        assert st["write_errors"].get("disk_full", 0) >= 1
        # The outage as the engine holds it, before any row of it can be written.
        outage = st["outage"]
        assert outage is not None
        assert outage["action"]["action"] == "store_unavailable"
        assert outage["issue"]["kind"] == "store_unavailable"
        assert outage["reason"] == "disk_full"
        metrics.set_store(engine.snapshot())
        assert metric(metrics, "flowdeck_store_up") == 0
        assert metric(metrics, 'flowdeck_store_write_errors_total{reason="disk_full"}') >= 1
        # The spool is on the same full disk: it refuses, and the action says the disk.
        await engine.run_flow("weather")
        clock.advance(60)
        st = engine.snapshot()["flows"]["weather"]["store"]
        assert st["spool_refused"] == "disk_full" and st["dropped"] >= 1
        actions = sub.drain()
        spool_full = [e.data["reason"] for e in actions if e.data["action"] == "spool_full"]
        assert spool_full and "disk is full" in spool_full[0].lower(), spool_full
        assert "No space left on device" in spool_full[0]
        assert "spool_max" not in spool_full[0].split("(")[0]
        # It can keep nothing more: the flow stops fetching, counted and said, and drops
        # nothing further.
        dropped, paused = st["dropped"], st["fetches_paused"]
        for _ in range(3):
            s = await engine.run_flow("weather")
            clock.advance(60)
            assert "fetch paused: the raw spool's disk is full" in (s.error or ""), s.error
            assert not any(i.get("payloads") for i in s.sources.values()), s.sources
        st = engine.snapshot()["flows"]["weather"]["store"]
        assert st["fetches_paused"] == paused + 3 and st["dropped"] == dropped
        actions += sub.drain()
        assert [e.data["action"] for e in actions].count("fetch_paused") == 1
        metrics.set_store(engine.snapshot())
        assert metric(metrics, 'flowdeck_fetches_paused_total{flow="weather"}') == paused + 3

        filler.unlink()
        for _ in range(5):
            s = await engine.run_flow("weather")
            clock.advance(60)
            if engine.guard.down_since is None and not len(engine.guard.spools["weather"]):
                break
        st = engine.snapshot()["flows"]["weather"]["store"]
        assert st["available"] is True and st["reason"] is None and st["outage"] is None
        assert any(i.get("payloads") for i in s.sources.values()), "not fetching again"
        assert "fetch paused" not in (s.error or "")
        metrics.set_store(engine.snapshot())
        assert metric(metrics, "flowdeck_store_up") == 1
        # the counter keeps what happened
        assert metric(metrics, 'flowdeck_store_write_errors_total{reason="disk_full"}') >= 1
        # the held rows are written on recovery
        assert issues_of(store, "store_unavailable", "weather")
        assert "store_recovered" in [a["action"] for a in store.actions("weather")]
    finally:
        await engine.stop()
        store.close()
