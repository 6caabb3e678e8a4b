"""Quality and Data screens, as a person sees and drives them.

The fixture tests feed the recorded snapshot (no engine). The action and
drill-down tests run a real engine on SQLite in tmp_path behind a LocalControl,
let the app poll it, press keys, and check both the screen and the store.
"""

from __future__ import annotations

import re

import pytest
from support.console import make_app, screen_text, wait_for
from textual.widgets import Static

from flowdeck.console.app import FlowdeckApp
from flowdeck.console.screens.data import DataScreen
from flowdeck.console.screens.issue import IssueScreen
from flowdeck.console.screens.lineage import LineageScreen
from flowdeck.console.screens.quality import QualityScreen
from flowdeck.console.screens.raw import RawScreen
from flowdeck.console.state import ConsoleState
from flowdeck.console.widgets import DeckTable
from flowdeck.pipeline.config import BUNDLED_CONFIG, load_config
from flowdeck.pipeline.core.clock import ManualClock
from flowdeck.pipeline.engine.engine import Engine
from flowdeck.pipeline.serve.control import LocalControl
from flowdeck.storage.store import Store

START = 1_795_521_630.0  # 2026-11-24T12:00:30Z, as the fixture



def table_lines(table: DeckTable) -> list[str]:
    """Each shown row of a table as the words in its cells."""
    return [" ".join(str(c) for c in table.get_row_at(i)) for i in range(table.row_count)]



def select_row(table: DeckTable, pred) -> dict:
    for i, row in enumerate(table.shown):
        if pred(row):
            table.move_cursor(row=i, animate=False)
            return row
    raise AssertionError(f"no row matches in {[r.get('_key') for r in table.shown]}")


# ---------------------------------------------------------------- fixture state: Quality


async def test_quality_lists_sorts_and_filters_issues():
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("3")
        assert isinstance(app.screen, QualityScreen)
        text = screen_text(app)
        assert "Quality" in text.splitlines()[0]
        fixture = app.state.issues()
        assert len(fixture) == 5
        table = app.screen.query_one("#issues", DeckTable)
        rows = table_lines(table)
        assert len(rows) == 5
        for issue in fixture:
            assert issue["title"][:30] in text
        # Severity and state as symbol + word, never colour alone.
        assert "✖ error" in text and "▲ warning" in text
        assert "○ open" in text and "◔ acknowledged" in text
        # Most severe first, then most recent (id 1 is the oldest warning).
        assert [r["id"] for r in table.shown] == [3, 5, 4, 2, 1]
        assert rows[0].startswith("3 ✖ error ○ open fx anomaly")
        assert "Severity ▲" in text
        # The lower half details the highlighted issue.
        assert "#3 EURUSD: rate=1.101 is anomalous" in text
        assert "1 record(s) · 2 raw payload(s)" in text

        await pilot.press("s")  # sort by the next column: State
        assert "State ▲" in screen_text(app)
        assert table.shown[0]["state"] == "acknowledged"
        await pilot.press("S")
        assert "State ▼" in screen_text(app)
        assert table.shown[-1]["state"] == "acknowledged"

        await pilot.press("slash", "f", "x")
        assert {r["id"] for r in table.shown} == {3, 4}
        upper = screen_text(app).split("Selected issue")[0]
        assert "EURUSD" in upper and "USDCHF" in upper and "KDEN" not in upper
        await pilot.press("escape")  # closes the filter bar, keeps the filter
        assert isinstance(app.screen, QualityScreen)
        assert app.focused is table and len(table.shown) == 2


async def test_quality_quarantine_browser_and_drilldowns_without_a_connection():
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("3", "a")
        assert any("not connected" in n.message for n in app._notifications)
        await pilot.press("enter")
        assert isinstance(app.screen, IssueScreen) and app.screen.issue_id == 3
        text = screen_text(app)
        assert "✖ not connected" in text
        assert "#3 EURUSD: rate=1.101 is anomalous" in text
        await pilot.press("escape")
        assert isinstance(app.screen, QualityScreen)

        await pilot.press("tab")
        table = app.screen.query_one("#quarantine", DeckTable)
        assert table.display and app.focused is table
        fixture = app.state.snapshot["quarantine"]
        assert len(fixture) == 7 and len(table.shown) == 7
        text = screen_text(app)
        assert "Quarantine 7 open item(s) in weather" in text
        for reason in ("invalid", "encoding", "columns", "missing_key"):
            assert reason in text
        assert "invalid UTF-8 at byte 50" in text
        # Newest first; the highlighted item's full message and record below.
        assert table.shown[0]["raw_id"] == 44
        assert "(got 'warm')" in text and "temperature=warm" in text
        # enter opens the raw payload screen, which says it needs a connection.
        await pilot.press("enter")
        assert isinstance(app.screen, RawScreen) and app.screen.raw_id == 44
        assert "not connected" in screen_text(app)
        await pilot.press("escape")
        assert isinstance(app.screen, QualityScreen)
        await pilot.press("tab")
        assert "Selected issue" in screen_text(app)

        # Still usable at 80x24: low-priority columns give way, the essentials stay.
        await pilot.resize_terminal(80, 24)
        text = screen_text(app)
        assert "✖ error" in text and "○ open" in text and "EURUSD: rate=1.101" in text
        await pilot.press("tab")
        text = screen_text(app)
        assert "invalid" in text and "encoding" in text


async def test_data_screen_lists_weather_stations_then_fx():
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("6")
        assert isinstance(app.screen, DataScreen)
        screen = app.screen
        assert screen.flow == "weather"  # fx is paused in the fixture: start on an active flow
        text = screen_text(app)
        assert "◆ weather" in text
        latest = {r["key"]: r for r in app.state.snapshot["latest"]["weather"]}
        assert len(latest) == 12
        table = screen.query_one("#latest", DeckTable)
        assert [r["key"] for r in table.shown] == sorted(latest)
        for header in (
            "Key ▲",
            "temperature",
            "pressure",
            "wind_speed",
            "temperature_f",
            "Quality",
            "Anomaly",
        ):
            assert header in text
        # Converted values (degC, hPa, m/s, derived degF) and the quality of each station.
        lines = text.splitlines()
        eddf = next(line for line in lines if line.strip().startswith("EDDF"))
        assert re.search(r"EDDF\s+12:06:00\s+8\.1\s+1012\.05\s+7\.79167\s+46\.6\s+0\.97", eddf)
        kden = next(line for line in lines if line.strip().startswith("KDEN"))
        assert "⚠ 0.51 anomalous" in kden
        assert "history needs a connection" in text
        await pilot.press("k")
        assert "History of EDDF pressure" in screen_text(app)

        await pilot.press("right_square_bracket")
        assert screen.flow == "fx"
        text = screen_text(app)
        assert "◆ fx" in text and "‖ paused" in text
        assert [r["key"] for r in table.shown] == ["AUDUSD", "EURUSD", "GBPUSD", "USDCHF", "USDJPY"]
        assert "1.10084" in text and "⚠ 1.00 anomalous" in text
        assert "temperature" not in text.split("History")[0]
        await pilot.press("left_square_bracket")
        assert screen.flow == "weather"

        # Still usable at 80x24: key, converted values and quality stay on screen.
        await pilot.resize_terminal(80, 24)
        text = screen_text(app)
        assert "◆ weather" in text and "KSFO" in text
        assert "temperature" in text and "pressure" in text and "Quality" in text

        # enter without a connection: the lineage screen says why it is empty.
        await pilot.press("enter")
        assert isinstance(app.screen, LineageScreen)
        assert "not connected" in screen_text(app)


# ---------------------------------------------------------------- a real engine


async def start_engine(tmp_path, runs: int = 2):
    clock = ManualClock(START)
    store = Store(f"sqlite:///{tmp_path / 'flowdeck.db'}")
    engine = Engine(load_config(BUNDLED_CONFIG), store, clock=clock, scenario="chaos", seed=7)
    await engine.start(schedule=False)
    for _ in range(runs):
        await engine.run_all_once()
        clock.advance(30)
    return engine, store, clock


def live_app(engine, clock) -> FlowdeckApp:
    return FlowdeckApp(LocalControl(engine), state=ConsoleState(), clock=clock, refresh=0.5)


@pytest.fixture
async def live(tmp_path):
    engine, store, clock = await start_engine(tmp_path)
    try:
        yield engine, store, clock
    finally:
        await engine.stop()
        store.close()


async def test_drilldowns_and_operator_actions_on_a_real_engine(live):
    engine, store, clock = live
    app = live_app(engine, clock)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(
            pilot, lambda: app.state.latest_info("weather")["keys"], "the first snapshot"
        )

        # Quality: enter on the quarantine issue shows its raw payload excerpts.
        await pilot.press("3")
        table = app.screen.query_one("#issues", DeckTable)
        await wait_for(pilot, lambda: table.shown, "issues on screen")
        issue = select_row(table, lambda r: r["kind"] == "quarantine")
        await pilot.press("enter")
        assert isinstance(app.screen, IssueScreen)
        issue_screen = app.screen
        await wait_for(pilot, lambda: issue_screen.data is not None, "the issue query")
        await pilot.pause()
        text = screen_text(app)
        raws = issue_screen.data["raw"]
        assert raws and len(raws) == len(issue["raw_ids"])
        assert f"Raw payloads {len(raws)}" in text
        first = raws[0]
        assert f"#{first['id']} {first['source']}" in text
        assert f"{first['size']} bytes" in text
        assert first["text"].splitlines()[0][:60] in text
        await pilot.press("escape")
        await pilot.pause()

        # ... and on the conflict issue, its records.
        issue = select_row(table, lambda r: r["kind"] == "conflict")
        await pilot.press("enter")
        issue_screen = app.screen
        await wait_for(pilot, lambda: issue_screen.data is not None, "the issue query")
        await pilot.pause()
        records = issue_screen.query_one("#records", DeckTable)
        assert records.shown and all(r["key"] == issue["key"] for r in records.shown)
        assert f"{issue['key']}" in table_lines(records)[0]
        await pilot.press("escape")
        await pilot.pause()

        # Data: the history chart of the highlighted station loads through the control.
        await pilot.press("6")
        await pilot.pause()
        data = app.screen
        latest = data.query_one("#latest", DeckTable)
        await wait_for(pilot, lambda: latest.shown, "latest rows")
        row = select_row(latest, lambda r: "metnet" in r["sources"])
        await wait_for(
            pilot,
            lambda: data._hist.get("state") == "loaded" and data._hist["target"][1] == row["key"],
            "the history query",
        )
        await pilot.pause()
        points = data._hist["points"]
        assert points
        assert f"History of {row['key']} temperature  {len(points)} points" in screen_text(app)
        assert data.query_one("#history-plot").display

        # enter: the record's lineage, with metnet's degF -> degC transform.
        await pilot.press("enter")
        assert isinstance(app.screen, LineageScreen)
        lin = app.screen
        await wait_for(pilot, lambda: lin.info is not None or lin.error, "the lineage query")
        assert lin.error is None
        await pilot.pause()
        text = screen_text(app)
        assert f"Record #{lin.info['record']['id']}" in text
        assert "Pipeline version" in text and "transform/1" in text
        assert "metnet" in text and "Raw payloads" in text
        # The whole scrollable list (the screen shows its top; the rest is a scroll away).
        body = str(lin.query_one("#lineage-body", Static).content)
        m = re.search(
            r"transform \[metnet\].*?\n\s+temperature: (-?[\d.]+) → (-?[\d.]+)", body, re.S
        )
        assert m, body
        f, c = float(m.group(1)), float(m.group(2))
        assert c == pytest.approx((f - 32) / 1.8, abs=1e-3)
        assert "resolve" in body and "detect" in body
        await pilot.press("y")
        await pilot.pause()
        assert f"record {lin.info['record']['id']}" in app.clipboard
        await pilot.press("escape")
        assert isinstance(app.screen, DataScreen)

        # Back on Quality: the operator actions, checked in the store and on screen.
        await pilot.press("3")
        assert isinstance(app.screen, QualityScreen)

        # a: acknowledge the selected open issue.
        issue = select_row(table, lambda r: r["state"] == "open")
        await pilot.press("a")
        await wait_for(
            pilot,
            lambda: store.get_issue(issue["id"])["state"] == "acknowledged",
            "the store to record the acknowledgement",
        )
        await wait_for(
            pilot,
            lambda: any(
                r["id"] == issue["id"] and r["state"] == "acknowledged" for r in table.shown
            ),
            "the row to update",
        )
        row = next(line for line in table_lines(table) if line.startswith(f"{issue['id']} "))
        assert "◔ acknowledged" in row
        assert any(f"issue {issue['id']} acknowledged" in n.message for n in app._notifications)

        # x + y: resolve after confirmation; resolved issues leave the list.
        select_row(table, lambda r: r["id"] == issue["id"])
        await pilot.press("x")
        await pilot.pause()
        assert "Resolve issue" in screen_text(app)
        await pilot.press("y")
        await wait_for(
            pilot,
            lambda: store.get_issue(issue["id"])["state"] == "resolved",
            "the store to record the resolution",
        )
        await wait_for(
            pilot,
            lambda: all(r["id"] != issue["id"] for r in table.shown),
            "the resolved issue to leave the list",
        )

        # tab, R + y: replay the quarantine of the selected item's flow.
        await pilot.press("tab")
        q_table = app.screen.query_one("#quarantine", DeckTable)
        await wait_for(pilot, lambda: q_table.shown, "quarantined items")
        flow = q_table.selected()["flow"]
        before = len(store.actions())
        await pilot.press("R")
        await pilot.pause()
        assert f"Replay the quarantine of {flow}" in screen_text(app)
        await pilot.press("y")
        await wait_for(pilot, lambda: len(store.actions()) > before, "the replay action row")
        act = store.actions()[0]
        assert act["action"] == "replay_quarantine" and act["flow"] == flow
        assert act["outcome"] == "ok"
        await wait_for(
            pilot,
            lambda: any(
                n.message.startswith("replayed") and flow in n.message for n in app._notifications
            ),
            "the toast",
        )

        # enter: the raw payload, scrollable; y copies its text.
        await pilot.press("enter")
        assert isinstance(app.screen, RawScreen)
        raw_screen = app.screen
        await wait_for(pilot, lambda: raw_screen.raw is not None, "the raw payload")
        await pilot.pause()
        assert f"Raw payload #{raw_screen.raw_id}" in screen_text(app)
        await pilot.press("y")
        await pilot.pause()
        assert app.clipboard == raw_screen.raw["text"] and app.clipboard
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, QualityScreen)


# ---------------------------------------------------------------- anomaly reasons

KDEN_REASON = {"metric": "temperature", "detector": "rate", "observed": -1.8,
               "expected": 6.2, "low": 5.1, "high": 7.3, "score": 1.0,
               "probability": 3e-12, "episode": 2}


def flagged_state() -> ConsoleState:
    """The fixture with KDEN's latest value flagged and explained, and its anomaly issue
    carrying the same reason (as the detect stage writes them)."""
    import copy
    import json

    from support.console import FIXTURE

    data = json.loads(FIXTURE.read_text())
    snap = data["snapshot"]
    for r in snap["latest"]["weather"]:
        if r["key"] == "KDEN":
            r["data"]["anomaly_reason"] = KDEN_REASON
    for i in snap["issues"]:
        if i["kind"] == "anomaly" and i["key"] == "KDEN":
            i["detail"]["reason"] = KDEN_REASON
            i["detail"]["episode"] = 2
            i["severity"] = "critical"  # listed first: its detail is the one shown
    state = ConsoleState()
    state.update(copy.deepcopy(snap), data["now"] - 10)
    state.update(snap, data["now"])
    return state


class ChartControl:
    """Answers the Data screen's two chart queries: KDEN's history and its flagged points."""

    def __init__(self, base) -> None:
        self.base = base
        self.base.snap = flagged_state().snapshot  # what it polls: the flagged picture too
        self.asked: list[tuple[str, dict]] = []

    def __getattr__(self, name):
        return getattr(self.base, name)

    async def query(self, name: str, **params):
        self.asked.append((name, params))
        t0 = 1_795_521_960_000 - 30 * 60_000
        if name == "history":
            return [[t0 + i * 60_000, 6.0 + 0.1 * (i % 3)] for i in range(30)] + [
                [t0 + 30 * 60_000, -1.8]]
        if name == "anomalies":
            return [[t0 + 30 * 60_000, -1.8, 1.0]]
        return None


async def test_data_screen_explains_a_flagged_row_and_marks_it_on_the_chart():
    from support.console import FixtureControl

    control = ChartControl(FixtureControl())
    app = FlowdeckApp(control, state=flagged_state(), clock=ManualClock(START + 600))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("6")
        screen = app.screen
        table = screen.query_one("#latest", DeckTable)
        select_row(table, lambda r: r["key"] == "KDEN")
        await wait_for(pilot, lambda: screen._hist.get("state") == "loaded", "the chart")
        await pilot.pause()
        caption = str(screen.query_one("#history-caption", Static).render())
        assert "History of KDEN temperature" in caption and "1 flagged (x)" in caption
        assert ("⚠ temperature: rate · observed -1.8 · expected 6.2 (normal 5.1..7.3)"
                " · p 3e-12 · episode 2") in caption
        assert screen._hist["flagged"] == [(1_795_521_960_000, -1.8)]
        assert ("anomalies", {"flow": "weather", "key": "KDEN", "metric": "temperature",
                              "since_ms": control.asked[-1][1]["since_ms"]}) in control.asked
        # The cross is drawn over the line, inside the plot (its title has no "x").
        region = screen.query_one("#history-plot").region
        lines = screen_text(app).splitlines()[region.y + 1:region.y + region.height]
        assert any("x" in line[region.x:region.right] for line in lines)
        # A row without a reason: no explanation under the caption.
        select_row(table, lambda r: r["key"] == "EDDF")
        await wait_for(pilot, lambda: screen._hist.get("target", ("",) * 2)[1] == "EDDF"
                       and screen._hist.get("state") == "loaded", "EDDF's chart")
        await pilot.pause()
        assert "⚠" not in str(screen.query_one("#history-caption", Static).render())


async def test_quality_issue_detail_gives_the_anomaly_reason():
    app = make_app(state=flagged_state())
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("3")
        table = app.screen.query_one("#issues", DeckTable)
        select_row(table, lambda r: r["kind"] == "anomaly" and r["key"] == "KDEN")
        await pilot.pause()
        text = screen_text(app)
        assert ("why ⚠ temperature: rate · observed -1.8 · expected 6.2 (normal 5.1..7.3) · "
                "p 3e-12 · episode 2") in text
        assert "reason metric=" not in text  # not repeated as a raw dict in the detail
