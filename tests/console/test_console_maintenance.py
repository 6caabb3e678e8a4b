"""Maintenance windows on the console (issue 16): a flow in a window says so where an
operator looks (its row on Overview and Recovery, its detail under the flows table), and
a flow outside one shows no marker. Driven by keys on the recorded fixture state, with
the window put on a flow the way the engine's snapshot carries it (``maintenance``)."""

from __future__ import annotations

from rich.text import Text
from support.console import fixture_state, make_app, screen_text

from flowdeck.console.widgets import DeckTable


def _plain(cell) -> str:
    return cell.plain if isinstance(cell, Text) else str(cell)


def rows_by_flow(table: DeckTable) -> tuple[list[str], dict[str, list[str]]]:
    headers = [label.plain.split(" ")[0] for label in table.labels()]
    rows = [[_plain(c) for c in table.get_row_at(i)] for i in range(table.row_count)]
    return headers, {r[0]: r for r in rows}


def in_window(mode: str, flow: str = "weather", name: str = "nightly", actor: str = "auto"):
    state = fixture_state()
    now_ms = int(state.now_ms)
    state.snapshot["flows"][flow]["maintenance"] = {
        "mode": mode, "name": name, "start_ms": now_ms - 600_000,
        "until_ms": now_ms + 1_800_000, "actor": actor}  # 03:16:30 -> 12:36:30 UTC
    return state


async def goto(pilot, key: str) -> None:
    await pilot.press(key)
    await pilot.pause()
    await pilot.pause()


async def test_a_flow_in_a_pause_window_shows_the_marker_and_its_detail():
    app = make_app(state=in_window("pause"))
    async with app.run_test(size=(120, 40)) as pilot:
        await goto(pilot, "1")
        table = app.screen.query_one("#flows", DeckTable)
        headers, by = rows_by_flow(table)
        state_col = headers.index("State")
        assert by["weather"][state_col] == "‖ maint"
        assert by["fx"][state_col] == "‖ paused"  # fx's own pause, no window
        await pilot.press("down")
        await pilot.pause()
        assert table.selected()["flow"] == "weather"
        text = screen_text(app)
        assert "maint: pause until 12:36 UTC (nightly, configured; scheduled runs paused)" in text
        await goto(pilot, "5")
        headers, by = rows_by_flow(app.screen.query_one("#recovery-flows", DeckTable))
        assert by["weather"][headers.index("Paused")] == "‖ maint"
        assert by["fx"][headers.index("Paused")] == "‖ paused"


async def test_a_muting_window_started_by_an_operator_says_muted_and_who():
    app = make_app(state=in_window("mute", name="operator", actor="alice"))
    async with app.run_test(size=(120, 40)) as pilot:
        await goto(pilot, "1")
        table = app.screen.query_one("#flows", DeckTable)
        headers, by = rows_by_flow(table)
        assert by["weather"][headers.index("State")] == "● muted"  # healthy, muted
        await pilot.press("down")
        await pilot.pause()
        text = screen_text(app)
        assert ("maint: mute until 12:36 UTC (operator, started by alice; runs go on, "
                "alerts muted, outside SLA)") in text
        await goto(pilot, "5")
        headers, by = rows_by_flow(app.screen.query_one("#recovery-flows", DeckTable))
        assert by["weather"][headers.index("Paused")] == "◌ muted"


async def test_a_failing_flow_in_a_muting_window_still_shows_failing():
    state = in_window("mute")
    state.snapshot["flows"]["weather"]["state"] = "failing"
    app = make_app(state=state)
    async with app.run_test(size=(120, 40)) as pilot:
        await goto(pilot, "1")
        headers, by = rows_by_flow(app.screen.query_one("#flows", DeckTable))
        assert by["weather"][headers.index("State")] == "✖ muted"


async def test_flows_outside_a_window_show_no_marker():
    app = make_app()  # the fixture: no flow in a window
    async with app.run_test(size=(120, 40)) as pilot:
        await goto(pilot, "1")
        table = app.screen.query_one("#flows", DeckTable)
        headers, by = rows_by_flow(table)
        assert [by[f][headers.index("State")] for f in ("fx", "weather")] == [
            "‖ paused", "● healthy"]
        for key in ("1", "5"):
            await goto(pilot, key)
            text = screen_text(app)
            assert "maint" not in text and "◌ muted" not in text
        await goto(pilot, "1")
        await pilot.press("down")
        await pilot.pause()
        assert "maint:" not in screen_text(app)
