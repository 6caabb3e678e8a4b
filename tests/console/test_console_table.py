"""DeckTable on its own: a big live table draws what its rows say, on screen and after a
scroll, keeps the cursor on its row through re-sorts, and reports highlight and select."""

from __future__ import annotations

from textual.app import App, ComposeResult

from flowdeck.console.widgets import Col, DeckTable


def rows(n: int, bump: dict[int, int] | None = None) -> list[dict]:
    bump = bump or {}
    return [{"_key": f"k{i:05d}", "name": f"k{i:05d}", "value": i + bump.get(i, 0)}
            for i in range(n)]


class TableApp(App):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, int]] = []

    def compose(self) -> ComposeResult:
        yield DeckTable([Col("name", "Name", 8), Col("value", "Value", 8)],
                        default_sort="name", id="t")

    def on_deck_table_row_highlighted(self, event: DeckTable.RowHighlighted) -> None:
        self.events.append(("highlighted", event.cursor_row))

    def on_deck_table_row_selected(self, event: DeckTable.RowSelected) -> None:
        self.events.append(("selected", event.cursor_row))


def lines(app: App) -> list[str]:
    return [s.text.rstrip() for s in app.screen._compositor.render_strips()]


async def test_a_big_live_table_draws_current_values_on_screen_and_after_scrolling():
    app = TableApp()
    async with app.run_test(size=(40, 12)) as pilot:
        table = app.query_one(DeckTable)
        table.set_rows(rows(5000))
        await pilot.pause()
        assert lines(app)[0].split() == ["Name", "▲", "Value"]
        assert lines(app)[1].split() == ["k00000", "0"]
        # A live update: a row on screen and one far below change.
        table.set_rows(rows(5000, {1: 100, 4000: 7}))
        await pilot.pause()
        assert lines(app)[2].split() == ["k00001", "101"]
        table.move_cursor(4000)
        await pilot.pause()
        shown = {ln.split()[0]: ln.split()[1] for ln in lines(app)[1:] if ln.strip()}
        assert shown["k04000"] == "4007" and table.selected()["_key"] == "k04000"
        assert table.get_row_at(4999) == ["k04999", "4999"]


async def test_the_cursor_stays_on_its_row_through_a_resort_and_reports_selection():
    app = TableApp()
    async with app.run_test(size=(40, 12)) as pilot:
        table = app.query_one(DeckTable)
        table.set_rows(rows(50))
        await pilot.pause()
        await pilot.press("down", "down")
        assert table.selected()["_key"] == "k00002"
        table.sort_by("value")
        table.sort_by("value")  # again: the other way, shown by the arrow
        await pilot.pause()
        assert lines(app)[0].split() == ["Name", "Value", "▼"]
        assert table.selected()["_key"] == "k00002" and table.cursor_row == 47
        await pilot.press("enter")
        await pilot.pause()
        assert ("selected", 47) in app.events
        assert ("highlighted", 2) in app.events
        # A click on a row moves the cursor there; a click on the cursor's row selects it.
        await pilot.click(DeckTable, offset=(2, 3))
        await pilot.pause()
        assert table.cursor_row == table.scroll_y + 2 and app.events[-1][0] == "highlighted"
        await pilot.click(DeckTable, offset=(2, 3))
        await pilot.pause()
        assert app.events[-1] == ("selected", table.cursor_row)


async def test_drawing_leaves_no_strips_in_reference_cycles():
    """Every drawn line used to be a strip caching itself (see console/textual_fixes.py):
    garbage only the cycle collector frees, in pauses that delayed key-to-repaints."""
    import gc

    from textual.strip import Strip

    app = TableApp()
    async with app.run_test(size=(60, 20)) as pilot:
        table = app.query_one(DeckTable)
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for n in range(20):  # twenty live updates, each redrawn
                table.set_rows(rows(200, {i: n for i in range(0, 200, 3)}))
                await pilot.pause()
            gc.collect()
            cyclic = [o for o in gc.garbage if isinstance(o, Strip)]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
        assert lines(app)[2].split() == ["k00001", "1"]
        assert cyclic == []
