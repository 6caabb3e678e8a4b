"""Sources, Recovery, Insights and Events screens, driven by keys as an operator would.

Rendering tests use the recorded fixture state with no engine (``control=None``);
the action keys are checked against a small fake Control that only records what it
is asked to do (the real engine path is tested elsewhere).
"""

from __future__ import annotations

import pytest
from rich.text import Text
from support.console import FixtureControl as FakeControl
from support.console import fixture_state, make_app, screen_text

from flowdeck.console.widgets import ConfirmScreen, DeckTable

SOURCES = {"fx": ["fxquote", "ecbx", "slowfx"], "weather": ["metnet", "airnet", "skyobs"]}


# ------------------------------------------------------------ helpers


def _plain(cell) -> str:
    return cell.plain if isinstance(cell, Text) else str(cell)


def table_view(table: DeckTable) -> tuple[list[str], list[list[str]]]:
    """(column headers, rows) exactly as the table draws them."""
    headers = [label.plain for label in table.labels()]
    rows = [[_plain(c) for c in table.get_row_at(i)] for i in range(table.row_count)]
    return headers, rows


def column(table: DeckTable, label: str) -> list[str]:
    headers, rows = table_view(table)
    i = next(k for k, h in enumerate(headers) if h.split(" ")[0] == label)
    return [r[i] for r in rows]


async def goto(pilot, key: str) -> None:
    await pilot.press(key)
    await pilot.pause()
    await pilot.pause()


async def settle(app, pilot) -> None:
    await pilot.pause()
    await app.workers.wait_for_complete()
    await pilot.pause()


# ------------------------------------------------------------ Sources


async def test_sources_lists_every_source_with_state_and_role():
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await goto(pilot, "2")
        text = screen_text(app)
        assert "flowdeck ▸ Sources" in text.splitlines()[0]
        table = app.screen.query_one(DeckTable)
        headers, rows = table_view(table)
        seen = {(r[0], r[1]): r for r in rows}
        assert set(seen) == {(f, s) for f, srcs in SOURCES.items() for s in srcs}
        for row in rows:
            assert "● up" in row  # symbol and word, not colour alone
        # the lowest priority number is the primary, the rest fail over in order
        assert seen[("fx", "fxquote")][2] == "primary"
        assert seen[("fx", "ecbx")][2] == "failover #1"
        assert seen[("fx", "slowfx")][2] == "failover #2"
        # the detail panel shows the selected source's full last error
        for _ in range(len(rows)):
            if table.selected()["source"] == "metnet":
                break
            await pilot.press("down")
        await pilot.pause()
        text = screen_text(app)
        assert "weather/metnet" in text
        assert "service unavailable" in text
        assert "unchanged (304)" in text


async def test_sources_shows_down_and_disabled_in_words():
    state = fixture_state()
    srcs = state.snapshot["flows"]["weather"]["sources"]
    srcs["metnet"].update(consecutive_failures=3, errors=4)
    srcs["skyobs"]["enabled"] = False
    app = make_app(state=state)
    async with app.run_test(size=(120, 40)) as pilot:
        await goto(pilot, "2")
        _, rows = table_view(app.screen.query_one(DeckTable))
        by = {(r[0], r[1]): r for r in rows}
        assert "✖ down" in by[("weather", "metnet")]
        assert "3" in by[("weather", "metnet")]  # consecutive failures
        assert "⊘ disabled" in by[("weather", "skyobs")]
        assert by[("weather", "skyobs")][2] == "off"
        assert by[("weather", "metnet")][2] == "primary"  # enabled, so still the primary
        await goto(pilot, "5")
        _, flows = table_view(app.screen.query_one("#recovery-flows", DeckTable))
        weather = next(r for r in flows if r[0] == "weather")
        assert "metnet ×3" in weather
        assert "1/3" in weather  # sources up / total


async def test_sources_sort_by_next_column_with_arrow():
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await goto(pilot, "2")
        table = app.screen.query_one(DeckTable)
        headers, _ = table_view(table)
        assert headers[0] == "Flow ▲"
        before = column(table, "Source")
        await pilot.press("s")
        await pilot.pause()
        headers, _ = table_view(table)
        assert "Source ▲" in headers
        assert "Flow ▲" not in headers
        after = column(table, "Source")
        assert after != before
        assert after == sorted(after)
        assert "Source ▲" in screen_text(app)
        await pilot.press("S")
        await pilot.pause()
        assert column(table, "Source") == sorted(after, reverse=True)
        assert "Source ▼" in table_view(table)[0]


async def test_sources_filter_narrows_rows():
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await goto(pilot, "2")
        table = app.screen.query_one(DeckTable)
        await pilot.press("slash")
        await pilot.press(*"metnet")
        await pilot.pause()
        assert column(table, "Source") == ["metnet"]
        await pilot.press("escape")
        await pilot.pause()
        await pilot.press("slash", *["backspace"] * 6, *"fx")
        await pilot.pause()
        assert sorted(column(table, "Source")) == sorted(SOURCES["fx"])


async def test_sources_r_runs_the_selected_sources_flow():
    control = FakeControl()
    app = make_app(control=control)
    async with app.run_test(size=(120, 40)) as pilot:
        await goto(pilot, "2")
        table = app.screen.query_one(DeckTable)
        for _ in range(6):
            if table.selected()["flow"] == "weather":
                break
            await pilot.press("down")
        await pilot.press("r")
        await settle(app, pilot)
        assert ("run_now", {"flow": "weather"}) in control.calls


# ------------------------------------------------------------ Recovery


async def test_recovery_shows_flows_and_action_timeline():
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await goto(pilot, "5")
        text = screen_text(app)
        assert "flowdeck ▸ Recovery" in text.splitlines()[0]
        headers, flows = table_view(app.screen.query_one("#recovery-flows", DeckTable))
        by = {r[0]: r for r in flows}
        assert "‖ paused" in by["fx"]
        assert "▶ active" in by["weather"]
        assert "3/3" in by["weather"]
        _, breakers = table_view(app.screen.query_one("#recovery-breakers", DeckTable))
        by_src = {(r[0], r[1]): r for r in breakers}
        assert len(by_src) == 6
        assert "● closed" in by_src[("weather", "metnet")]
        assert "primary" in by_src[("weather", "metnet")]
        actions = app.screen.query_one("#recovery-actions", DeckTable)
        headers, rows = table_view(actions)
        assert headers[0] == "Time ▼"  # newest first
        recorded = [(r[3], r[4]) for r in rows]  # (action, actor)
        assert recorded[:2] == [("pause", "alice"), ("ack_issue", "alice")]
        # the chaos scenario's metnet outage: automatic retry, failover and failback
        assert ("failover", "auto") in recorded and ("failback", "auto") in recorded
        assert "paused fx" in text and "issue 1 acknowledged" in text


async def test_recovery_r_retries_the_selected_flow():
    control = FakeControl()
    app = make_app(control=control)
    async with app.run_test(size=(120, 40)) as pilot:
        await goto(pilot, "5")
        flows = app.screen.query_one("#recovery-flows", DeckTable)
        assert flows.selected()["flow"] == "fx"
        await pilot.press("r")
        await settle(app, pilot)
        assert control.calls == [("run_now", {"flow": "fx"})]


async def test_recovery_space_pauses_after_confirmation():
    control = FakeControl()
    app = make_app(control=control)
    async with app.run_test(size=(120, 40)) as pilot:
        await goto(pilot, "5")
        flows = app.screen.query_one("#recovery-flows", DeckTable)
        await pilot.press("down")
        await pilot.pause()
        assert flows.selected()["flow"] == "weather"  # not paused in the fixture
        await pilot.press("space")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        assert "weather" in app.screen.question
        assert control.calls == []  # nothing happens before the answer
        await pilot.press("y")
        await settle(app, pilot)
        assert control.calls == [("pause", {"flow": "weather"})]


async def test_recovery_space_resumes_a_paused_flow_and_n_cancels_a_replay():
    control = FakeControl()
    app = make_app(control=control)
    async with app.run_test(size=(120, 40)) as pilot:
        await goto(pilot, "5")
        assert app.screen.query_one("#recovery-flows", DeckTable).selected()["flow"] == "fx"
        await pilot.press("space")  # fx is paused: resume needs no confirmation
        await settle(app, pilot)
        assert control.calls == [("resume", {"flow": "fx"})]
        await pilot.press("down", "R")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        assert "7 quarantined" in app.screen.question
        await pilot.press("n")
        await settle(app, pilot)
        assert control.calls == [("resume", {"flow": "fx"})]
        await pilot.press("R")
        await pilot.pause()
        await pilot.press("y")
        await settle(app, pilot)
        assert control.calls[-1] == ("replay_quarantine", {"flow": "weather"})


async def test_recovery_filter_applies_to_the_table_with_focus():
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await goto(pilot, "5")
        flows = app.screen.query_one("#recovery-flows", DeckTable)
        actions = app.screen.query_one("#recovery-actions", DeckTable)
        actions.focus()
        await pilot.pause()
        await pilot.press("slash", *"ack_")
        await pilot.pause()
        assert column(actions, "Action") == ["ack_issue"]
        assert flows.row_count == 2  # the other table is untouched
        await pilot.press("escape")
        await pilot.pause()
        assert app.focused is actions


# ------------------------------------------------------------ Insights


async def test_insights_sla_words_for_both_flows():
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await goto(pilot, "7")
        assert "flowdeck ▸ Insights" in screen_text(app).splitlines()[0]
        _, rows = table_view(app.screen.query_one("#insights-sla", DeckTable))
        by = {r[0]: r for r in rows}
        assert set(by) == {"fx", "weather"}
        for row in by.values():
            assert row.count("✔ met") == 2  # freshness and availability
        _, flows = table_view(app.screen.query_one("#insights-flows", DeckTable))
        assert {r[0] for r in flows} == {"fx", "weather"}
        assert all(any(ch in "".join(r) for ch in "▁▂▃▄▅▆▇█") for r in flows)  # sparklines
        _, ranking = table_view(app.screen.query_one("#insights-ranking", DeckTable))
        assert len(ranking) == 6
        assert ranking[-1][2] == "metnet"  # the only source with errors ranks last
        assert "91.7%" in ranking[-1]


async def test_insights_shows_missed_when_data_is_stale():
    state = fixture_state()
    state.now += 3600  # an hour later, nothing new: freshness target (180 s) missed
    app = make_app(state=state)
    async with app.run_test(size=(120, 40)) as pilot:
        await goto(pilot, "7")
        _, rows = table_view(app.screen.query_one("#insights-sla", DeckTable))
        for row in rows:
            assert "✖ missed" in row
            assert "✔ met" in row  # availability is still met
        assert "✖ missed" in screen_text(app)


# ------------------------------------------------------------ Events


async def test_events_level_filter_hides_debug_until_all():
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await goto(pilot, "8")
        assert "flowdeck ▸ Events" in screen_text(app).splitlines()[0]
        table = app.screen.query_one(DeckTable)
        levels = column(table, "Level")
        assert levels and not any("debug" in lv for lv in levels)
        assert not any("fetched" in t for t in column(table, "Text"))
        assert "level ≥ info" in screen_text(app)
        await pilot.press("l")  # → warning
        await pilot.pause()
        levels = column(table, "Level")
        assert levels and not any(lv.endswith(("info", "debug")) for lv in levels)
        assert "level ≥ warning" in screen_text(app)
        await pilot.press("l")  # → error
        await pilot.pause()
        assert set(column(table, "Level")) <= {"✖ error", "‼ critical"}
        await pilot.press("l")  # → all, debug included
        await pilot.pause()
        levels = column(table, "Level")
        assert any(lv.endswith("debug") for lv in levels)
        assert len(levels) == len(app.state.events)
        assert "level: all" in screen_text(app)


async def test_events_newest_first_and_filter():
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await goto(pilot, "8")
        table = app.screen.query_one(DeckTable)
        times = [r["ts"] for r in table.shown]
        assert times == sorted(times, reverse=True)
        await pilot.press("slash", *"metnet")
        await pilot.pause()
        texts = column(table, "Text")
        assert texts and all("metnet" in t for t in texts)


async def test_events_freeze_holds_the_log():
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await goto(pilot, "8")
        table = app.screen.query_one(DeckTable)
        n = table.row_count
        await pilot.press("f")
        await pilot.pause()
        assert "FROZEN" in screen_text(app)
        app.state.add_events(
            [
                {
                    "type": "log",
                    "ts": app.state.now,
                    "flow": None,
                    "seq": 9999,
                    "data": {"message": "a new line"},
                }
            ]
        )
        app.redraw()
        await pilot.pause()
        assert table.row_count == n
        assert "+1 new" in screen_text(app)
        assert not app.state.paused  # independent of the global pause
        await pilot.press("f")
        await pilot.pause()
        assert table.row_count == n + 1
        assert column(table, "Text")[0] == "a new line"
        assert "following" in screen_text(app)


async def test_events_filter_searches_the_whole_log_not_only_the_shown_lines():
    state = fixture_state()
    now = state.now
    state.add_events([{"type": "log", "ts": now, "flow": None, "data": {"message": "needle-xyz"}}])
    state.add_events(
        [
            {"type": "log", "ts": now + i, "flow": None, "data": {"message": f"line {i}"}}
            for i in range(1, 701)
        ]
    )
    app = make_app(state=state)
    async with app.run_test(size=(120, 40)) as pilot:
        await goto(pilot, "8")
        table = app.screen.query_one(DeckTable)
        assert table.row_count == 500  # the newest lines only
        assert "newest 500 shown" in screen_text(app)
        assert "needle-xyz" not in column(table, "Text")
        await pilot.press("slash", *"needle")
        await pilot.pause()
        assert column(table, "Text") == ["needle-xyz"]


# ------------------------------------------------------------ small terminals


@pytest.mark.parametrize(
    "key,title", [("2", "Sources"), ("4", "Caches"), ("5", "Recovery"), ("7", "Insights"),
     ("8", "Events")]
)
async def test_screens_fit_80x24(key, title):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await goto(pilot, key)
        lines = screen_text(app).splitlines()
        assert len(lines) == 24
        assert lines[0].startswith(f" flowdeck ▸ {title}")
        for table in app.screen.query(DeckTable):
            # low-priority columns dropped: what is left fits without scrolling sideways
            width, room = table.columns_width(), table.scrollable_content_region.width
            assert width <= room, (table.id, width, room)
            assert table.row_count > 0
            assert table.region.height >= 2  # the header and at least one row show


# ------------------------------------------------------------ switching screens


async def test_every_screen_shows_the_state_as_it_is_when_switched_to():
    """Screens are built at start-up; each must still show what arrived since then."""
    from flowdeck.console.state import ConsoleState

    app = make_app(state=ConsoleState())
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        fixed = fixture_state()
        app.state.snapshot, app.state.now = fixed.snapshot, fixed.now  # no redraw asked
        for key, title, needle in [("2", "Sources", "metnet"), ("4", "Caches", "L1 memory"),
                                   ("5", "Recovery", "purge_cache"), ("6", "Data", "KSFO"),
                                   ("7", "Insights", "weather"), ("1", "Overview", "weather")]:
            await goto(pilot, key)
            text = screen_text(app)
            assert f"▸ {title}" in text and needle in text, (title, text)
            assert "12:06:30" in text.splitlines()[0]  # the header too


async def test_insights_storage_panel_shows_size_tables_and_the_last_pass():
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await goto(pilot, "7")
        text = screen_text(app)
        assert "sqlite 178.8 MiB · retention 4m ago: 5230 rows deleted, 1.2s" in text
        _, rows = table_view(app.screen.query_one("#insights-storage", DeckTable))
        by = {r[0]: r for r in rows}
        assert by["records"][1:3] == ["48.2k", "29.9d ago"]
        assert by["series_1h"][2] == "400.0d ago"
        assert len(rows) == 12 and "series" not in by  # the tables retention keeps (no series table since 0006)
