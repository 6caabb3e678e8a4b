"""Maintenance windows: a configured one pauses scheduled runs, an operator's mutes alerts
and keeps its runs out of SLA figures; each start and end is a recovery action; flowdeck
status shows the window."""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from support.feed import rows_for, write_config

from flowdeck.console.cli import main
from flowdeck.pipeline.config import ConfigError, parse_config
from flowdeck.pipeline.core.clock import ManualClock
from flowdeck.pipeline.engine.engine import Engine
from flowdeck.pipeline.serve.control import LocalControl
from flowdeck.storage.store import Store

SUNDAY_0330 = datetime(2026, 11, 29, 3, 30, tzinfo=UTC).timestamp()  # a Sunday


class Hook(BaseHTTPRequestHandler):
    posts: list[dict] = []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).posts.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *a):
        pass


@pytest.fixture
def hook():
    Hook.posts = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_port}/"
    srv.shutdown()
    srv.server_close()


def config_with(tmp_path, hook_url: str):
    extra = f"""
maintenance:
  - {{name: sunday backups, flows: [bench], cron: "0 3 * * SUN", duration: 1h, mode: pause}}
alerts:
  webhooks: {{warning: "{hook_url}", error: "{hook_url}"}}
  retries: 0
"""
    path = write_config(tmp_path, extra)
    return path, parse_config(path.read_text(), str(path))


async def drop(tmp_path, flow: str, n: int, rows) -> None:
    p = tmp_path / flow / f"{n:05d}.jsonl"
    await asyncio.to_thread(p.write_text, "\n".join(json.dumps(r) for r in rows))


async def test_windows_pause_and_mute_and_are_recorded(tmp_path, hook, capsys):
    path, config = config_with(tmp_path, hook)
    clock = ManualClock(SUNDAY_0330)
    db = f"sqlite:///{tmp_path / 'm.db'}"
    store = Store(db)
    engine = Engine(config, store, clock=clock)
    control = LocalControl(engine, actor="alice")
    await engine.start(schedule=False)
    try:
        t_ms = int(SUNDAY_0330 * 1000) // 60_000 * 60_000
        await drop(tmp_path, "bench", 1, rows_for(["KAAA"], t0_ms=t_ms))
        # 03:30 Sunday: the configured window pauses bench's scheduled runs, not other's
        assert await engine.scheduled_run("bench") is None
        assert (await engine.scheduled_run("other")).trigger == "schedule"
        assert engine.snapshot()["flows"]["bench"]["maintenance"]["name"] == "sunday backups"
        assert engine.snapshot()["flows"]["other"]["maintenance"] is None
        assert await engine.maintenance.tick() == [("bench", "maintenance_start")]

        clock.advance(3600)  # 04:30: over
        assert await engine.maintenance.tick() == [("bench", "maintenance_end")]
        first = await engine.scheduled_run("bench")
        assert first.trigger == "schedule" and first.status == "ok"

        await engine.alerter.drain()
        Hook.posts.clear()  # what was alerted before the mute
        # an operator mutes bench for 30 minutes: runs go on as "maintenance", no alert
        res = await control.act("start_maintenance", flow="bench", duration="30m", mode="mute")
        assert res["ok"] and res["message"] == "maintenance (mute) on bench for 30m"
        bad = rows_for(["KBBB"], t0_ms=t_ms + 3_600_000)
        bad[0]["temp"] = 999  # out of range: quarantined, an issue opens
        await drop(tmp_path, "bench", 2, bad)
        muted = await engine.scheduled_run("bench")
        assert muted.trigger == "maintenance" and muted.quarantined == 1
        await engine.alerter.drain()
        assert Hook.posts == []

        res = await control.act("stop_maintenance", flow="bench")
        assert res["message"] == "maintenance on bench stopped"
        for issue in store.issues(flow="bench", state="open"):  # so the next one is new
            store.set_issue_state(issue["id"], "resolved", "alice", clock.now_ms())
        bad2 = rows_for(["KCCC"], t0_ms=t_ms + 3_660_000)
        bad2[0]["temp"] = 999
        await drop(tmp_path, "bench", 4, bad2)
        after = await engine.scheduled_run("bench")
        assert after.trigger == "schedule" and after.issues_opened >= 1
        await engine.alerter.drain()
        assert [p["flow"] for p in Hook.posts] and all(p["flow"] == "bench" for p in Hook.posts)
    finally:
        await engine.stop()
    actions = [(a["action"], a["actor"]) for a in reversed(store.actions("bench"))]
    store.close()
    assert ("maintenance_start", "auto") in actions and ("maintenance_end", "auto") in actions
    assert ("start_maintenance", "alice") in actions
    assert ("maintenance_start", "alice") in actions and ("stop_maintenance", "alice") in actions
    assert actions.index(("maintenance_start", "auto")) < actions.index(
        ("maintenance_end", "auto")) < actions.index(("maintenance_start", "alice"))


def test_flowdeck_status_shows_a_window_in_force(tmp_path, capsys):
    path = write_config(tmp_path, """
maintenance:
  - {name: always, flows: [other], cron: "* * * * *", duration: 2m, mode: mute}
""")
    db = f"sqlite:///{tmp_path / 's.db'}"
    Store(db).close()
    main(["status", "--config", str(path), "--db", db])
    out = capsys.readouterr().out
    assert "other      in maintenance (mute, always) until " in out
    assert "bench      in maintenance" not in out
    main(["status", "--config", str(path), "--db", db, "--json"])
    flows = json.loads(capsys.readouterr().out)["flows"]
    assert flows["other"]["maintenance"]["mode"] == "mute" and flows["bench"]["maintenance"] is None


@pytest.mark.parametrize("window,problem", [
    ('{flows: [nosuch], cron: "0 3 * * SUN", duration: 1h}',
     "maintenance[0].flows[0]: no flow 'nosuch'"),
    ('{cron: "99 3 * * *", duration: 1h, mode: mute}', "maintenance[0].cron: bad cron expression"),
    ('{cron: "0 3 * * *", duration: 0s}', "maintenance[0].duration:"),
])
def test_a_bad_window_is_refused_with_its_line(tmp_path, window, problem):
    path = write_config(tmp_path, f"\nmaintenance:\n  - {window}\n")
    with pytest.raises(ConfigError) as exc:
        parse_config(path.read_text(), str(path))
    assert problem in str(exc.value)
    assert str(exc.value).startswith(f"{path}:")


async def _engine(path, db: str, clock: ManualClock) -> tuple[Engine, LocalControl, Store]:
    store = Store(db)
    engine = Engine(parse_config(path.read_text(), str(path)), store, clock=clock)
    await engine.start(schedule=False)
    return engine, LocalControl(engine, actor="alice"), store


async def _stop(engine: Engine, store: Store) -> None:
    await engine.stop()
    store.close()


async def test_an_operator_window_survives_a_restart_and_stops_after_it(tmp_path):
    path = write_config(tmp_path)
    db = f"sqlite:///{tmp_path / 'r.db'}"
    clock = ManualClock(SUNDAY_0330 + 86_400)  # a Monday: no configured window
    engine, control, store = await _engine(path, db, clock)
    res = await control.act("start_maintenance", flow="bench", duration="2h", mode="pause")
    assert res["ok"]
    started = engine.snapshot()["flows"]["bench"]["maintenance"]
    await _stop(engine, store)

    clock.advance(600)  # the daemon comes back 10 minutes later
    engine, control, store = await _engine(path, db, clock)
    try:
        st = engine.snapshot()["flows"]["bench"]["maintenance"]
        assert st is not None and st["mode"] == "pause" and st["actor"] == "alice"
        assert (st["start_ms"], st["until_ms"]) == (started["start_ms"], started["until_ms"])
        assert await engine.scheduled_run("bench") is None  # still paused
        assert engine.snapshot()["flows"]["other"]["maintenance"] is None
        assert await engine.maintenance.tick() == []  # its start is not recorded twice
        res = await control.act("stop_maintenance", flow="bench")
        assert res["message"] == "maintenance on bench stopped"
        assert (await engine.scheduled_run("bench")).trigger == "schedule"
    finally:
        await _stop(engine, store)

    engine, _control, store = await _engine(path, db, clock)  # stopped stays stopped
    try:
        assert engine.snapshot()["flows"]["bench"]["maintenance"] is None
        assert (await engine.scheduled_run("bench")).trigger == "schedule"
        actions = [(a["action"], a["actor"]) for a in reversed(store.actions("bench"))]
    finally:
        await _stop(engine, store)
    assert actions.count(("maintenance_start", "alice")) == 1
    assert actions.count(("maintenance_end", "alice")) == 1
    assert actions.index(("maintenance_start", "alice")) < actions.index(
        ("maintenance_end", "alice"))
    assert ("stop_maintenance", "alice") in actions


async def test_a_window_that_ran_out_while_the_daemon_was_stopped_is_ended(tmp_path):
    path = write_config(tmp_path)
    db = f"sqlite:///{tmp_path / 'x.db'}"
    clock = ManualClock(SUNDAY_0330 + 86_400)
    engine, control, store = await _engine(path, db, clock)
    await control.act("start_maintenance", flow="other", duration="30m", mode="mute")
    await _stop(engine, store)

    clock.advance(3600)  # back an hour later: the window ended meanwhile
    engine, _control, store = await _engine(path, db, clock)
    try:
        assert engine.snapshot()["flows"]["other"]["maintenance"] is None
        assert (await engine.scheduled_run("other")).trigger == "schedule"  # not muted
        ends = [a for a in store.actions("other") if a["action"] == "maintenance_end"]
        assert len(ends) == 1 and ends[0]["actor"] == "alice"
        assert "while the daemon was stopped" in ends[0]["reason"]
    finally:
        await _stop(engine, store)

    engine, _control, store = await _engine(path, db, clock)  # and only once
    try:
        ends = [a for a in store.actions("other") if a["action"] == "maintenance_end"]
        assert len(ends) == 1
    finally:
        await _stop(engine, store)
