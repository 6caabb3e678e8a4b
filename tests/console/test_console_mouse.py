"""The console with the mouse alone: switch screens, sort by a header, drill into a row,
answer a confirmation, press a footer key. Clicks go through Textual's pilot at the
places a person would click, found from the widgets' own geometry."""

from __future__ import annotations

from support.console import FixtureControl, make_app
from textual.widgets import OptionList

from flowdeck.console.screens.caches import CachesScreen
from flowdeck.console.screens.issue import IssueScreen
from flowdeck.console.screens.quality import QualityScreen
from flowdeck.console.widgets import ConfirmScreen, DeckTable, KeyBar, ScreenMenu, StatusHeader


def header_x(table: DeckTable, label: str) -> int:
    """The x offset, inside the table, of the middle of a column's header."""
    return table.column_x(label)


def key_x(bar: KeyBar, description: str) -> int:
    """Where a key's description starts in the footer line."""
    i = bar.render().plain.find(description)
    assert i >= 0, bar.render().plain
    return i


async def settle(app, pilot) -> None:
    await pilot.pause()
    await app.workers.wait_for_complete()
    await pilot.pause()


async def test_the_console_by_mouse():
    control = FixtureControl()
    app = make_app(control=control)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)

        # The screen's name in the header (after " flowdeck ▸ ") opens the screens menu;
        # a click picks one.
        await pilot.click(StatusHeader, offset=(13, 0))
        await pilot.pause()
        assert isinstance(app.screen, ScreenMenu)
        menu = app.screen.query_one(OptionList)
        caches_row = next(i for i in range(menu.option_count)
                          if "Caches" in str(menu.get_option_at_index(i).prompt))
        await pilot.click(OptionList, offset=(4, 1 + caches_row))  # 1: the menu's border
        await settle(app, pilot)
        assert isinstance(app.screen, CachesScreen)

        # A click on a column header sorts by it, shown by the arrow; again reverses.
        hot = app.screen.query_one("#cache-hot", DeckTable)
        await pilot.click(hot, offset=(header_x(hot, "Hits"), 0))
        await pilot.pause()
        hits = [r["hits"] for r in hot.shown]
        assert hot.sort_key == "hits" and hits == sorted(hits)
        assert "Hits ▲" in [label.plain for label in hot.labels()]
        await pilot.click(hot, offset=(header_x(hot, "Hits"), 0))
        await pilot.pause()
        assert [r["hits"] for r in hot.shown] == sorted(hits, reverse=True)

        # Select a row by clicking it; x (from the footer, clicked) asks; "Yes" purges it.
        await pilot.click(hot, offset=(4, 1 + 2))  # the third row, under the header
        await pilot.pause()
        third = hot.shown[2]
        assert hot.selected() is third
        bar = app.screen.query_one(KeyBar)
        await pilot.click(KeyBar, offset=(key_x(bar, "Purge") + 1, 0))
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.click("#no")
        await settle(app, pilot)
        assert control.calls == []  # "No": nothing asked of the engine
        await pilot.click(KeyBar, offset=(key_x(bar, "Purge") + 1, 0))
        await pilot.pause()
        await pilot.click("#yes")
        await settle(app, pilot)
        assert control.calls == [("purge_cache",
                                  {"flow": third["flow"], "key": third["key"], "layer": None})]

        # Quality: a click on a row selects it, a second click on it drills in.
        await pilot.click(StatusHeader, offset=(13, 0))
        await pilot.pause()
        menu = app.screen.query_one(OptionList)
        quality_row = next(i for i in range(menu.option_count)
                           if "Quality" in str(menu.get_option_at_index(i).prompt))
        await pilot.click(OptionList, offset=(4, 1 + quality_row))
        await settle(app, pilot)
        assert isinstance(app.screen, QualityScreen)
        issues = app.screen.query_one("#issues", DeckTable)
        await pilot.click(issues, offset=(4, 1 + 1))
        await pilot.pause()
        second = issues.shown[1]
        assert issues.selected() is second
        await pilot.click(issues, offset=(4, 1 + 1))
        await settle(app, pilot)
        assert isinstance(app.screen, IssueScreen)
        assert app.screen.issue_id == second["id"]
