"""The console's table: dict rows, sortable, filterable, drawn a line at a time."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.cells import cell_len, set_cell_size
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.events import Resize
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip


@dataclass
class Col:
    """A table column: key into the row, header label, width, display, drop priority.

    Lower ``priority`` columns are dropped first when the terminal is narrow.
    """

    key: str
    label: str
    width: int | None = None  # None: whatever the other columns leave, at least min_width
    fmt: Callable[[Any, dict], Any] | None = None
    priority: int = 5
    min_width: int = 0

    @property
    def least(self) -> int:
        """The fewest cells it is shown in (without padding)."""
        return self.width if self.width is not None else max(len(self.label) + 2,
                                                              self.min_width)


class DeckTable(ScrollView, can_focus=True):
    """A table of dict rows that sorts by any column (arrow in the header), filters, and
    drops low-priority columns to fit narrow terminals. ``_key`` identifies a row.

    Drawn with Textual's line API: only the rows on screen are rendered, each into one
    strip kept until that row's cells, the cursor or the styles change. A live update
    that changes a few cells redraws those rows and nothing else, and a table of
    thousands of rows costs what its visible rows cost. (Textual's DataTable, used here
    before, drops every cached cell on any change and renders each cell through Rich:
    at ten updates a second that was most of the console's time and garbage.)

    Keys: up/down, page up/down, home/end move the cursor; enter selects; ``s`` sorts
    by the next column, ``S`` reverses. Mouse: a click on a header sorts by it (again
    reverses), a click on a row moves the cursor there, a click on the cursor's row
    selects it."""

    COMPONENT_CLASSES = {
        "deck-table--header", "deck-table--even-row", "deck-table--odd-row",
        "deck-table--cursor", "deck-table--hover",
    }

    BINDINGS = [
        Binding("up", "cursor(-1)", "Up", show=False, id="table.up"),
        Binding("down", "cursor(1)", "Down", show=False, id="table.down"),
        Binding("pageup", "page(-1)", "Page up", show=False, id="table.page_up"),
        Binding("pagedown", "page(1)", "Page down", show=False, id="table.page_down"),
        Binding("home", "first", "First", show=False, id="table.first"),
        Binding("end", "last", "Last", show=False, id="table.last"),
        Binding("enter", "select", "Select", show=False, id="table.select"),
        Binding("s", "cycle_sort", "Sort", show=False, id="table.sort"),
        Binding("S", "reverse_sort", "Reverse", show=False, id="table.reverse_sort"),
    ]

    class RowHighlighted(Message):
        """The cursor moved to another row (or the rows under it changed)."""

        def __init__(self, table: DeckTable, cursor_row: int) -> None:
            super().__init__()
            self.table = table
            self.cursor_row = cursor_row

        @property
        def control(self) -> DeckTable:
            return self.table

    class RowSelected(RowHighlighted):
        """Enter on the cursor's row, or a click on it."""

    CELL_PAD = 1  # spaces either side of every cell

    def __init__(self, columns: list[Col], *, default_sort: str | None = None,
                 reverse: bool = False, **kw) -> None:
        super().__init__(**kw)
        self.cols = columns
        self.sort_key = default_sort
        self.sort_reverse = reverse
        self.filter_text = ""
        self.rows_data: list[dict] = []
        self.shown: list[dict] = []
        self._visible: list[Col] = []
        self._shown_filter = ""
        self._shown_theme = ""
        self._shown_keys: list[str] = []
        self._cells: dict[int, list] = {}  # shown row -> its cells, made when drawn
        self._cursor = 0
        self._highlighted_key: str | None = None
        self._hover: int | None = None
        # row index -> (its cells, cursor/hover/width, the strip drawn from them)
        self._strips: dict[int, tuple[list, tuple, Strip]] = {}
        self._styles: dict[str, Style] | None = None

    # ---- what the table shows (used by screens and tests)

    @property
    def row_count(self) -> int:
        return len(self.shown)

    @property
    def cursor_row(self) -> int:
        return self._cursor

    def get_row_at(self, index: int) -> list:
        """The cells of a shown row as drawn: strings and Rich Texts."""
        cells = self._cells.get(index)
        if cells is None:
            cells = self._cells[index] = [self._display(c, self.shown[index])
                                          for c in self._visible]
        return cells

    def labels(self) -> list[Text]:
        """The header cells as drawn (the sort column carries its arrow)."""
        return [self._label(c) for c in self._visible]

    def _spans(self):
        """Each shown column with where it starts and ends on the line (padding included)."""
        x = 0
        for c in self._visible:
            w = self._width(c) + 2 * self.CELL_PAD
            yield c, x, x + w
            x += w

    def column_x(self, label: str) -> int:
        """The x offset, inside the table, of the middle of the column headed ``label``."""
        for c, x0, x1 in self._spans():
            if self._label(c).plain.split(" ")[0] == label:
                return (x0 + x1) // 2
        raise KeyError(label)

    def columns_width(self) -> int:
        """The width the shown columns take, their padding included."""
        return sum(x1 - x0 for _c, x0, x1 in self._spans())

    def selected(self) -> dict | None:
        if self.shown and 0 <= self._cursor < len(self.shown):
            return self.shown[self._cursor]
        return None

    # ---- layout

    def _room(self) -> int:
        return self.scrollable_content_region.width or self.size.width or 200

    def _fit(self) -> list[Col]:
        width = self.size.width or 200
        chosen = sorted(self.cols, key=lambda c: -c.priority)
        used, keep = 0, []
        for c in chosen:
            w = c.least + 2 * self.CELL_PAD
            if used + w <= width or not keep:
                keep.append(c)
                used += w
        return [c for c in self.cols if c in keep]

    def _width(self, c: Col) -> int:
        if c.width is not None:
            return c.width
        # A column without a width takes what the fixed ones leave.
        fixed = sum((k.width or 0) + 2 * self.CELL_PAD for k in self._visible if k is not c)
        return max(c.least, self._room() - fixed - 2 * self.CELL_PAD)

    def on_resize(self, event: Resize) -> None:
        self.set_rows(self.rows_data, force_columns=True)  # columns refit, rows redrawn

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._styles = None
        self._strips.clear()

    def on_focus(self, event: events.Focus) -> None:
        self._strips.clear()
        self.refresh()

    def on_blur(self, event: events.Blur) -> None:
        self._strips.clear()
        self.refresh()

    # ---- sorting and filtering

    def _label(self, c: Col) -> Text:
        if c.key == self.sort_key:
            return Text(f"{c.label} {'▼' if self.sort_reverse else '▲'}", style="bold")
        return Text(c.label)

    def sort_by(self, key: str) -> None:
        """Sort by a column; by the same column again, the other way."""
        if key == self.sort_key:
            self.sort_reverse = not self.sort_reverse
        else:
            self.sort_key, self.sort_reverse = key, False
        self.set_rows(self.rows_data, force_columns=True)

    def action_cycle_sort(self) -> None:
        keys = [c.key for c in self._visible]
        if not keys:
            return
        i = keys.index(self.sort_key) + 1 if self.sort_key in keys else 0
        self.sort_key, self.sort_reverse = keys[i % len(keys)], False
        self.set_rows(self.rows_data, force_columns=True)

    def action_reverse_sort(self) -> None:
        self.sort_reverse = not self.sort_reverse
        self.set_rows(self.rows_data, force_columns=True)

    def set_filter(self, text: str) -> None:
        self.filter_text = text.strip().lower()
        self.set_rows(self.rows_data)

    def _display(self, c: Col, row: dict) -> Any:
        v = row.get(c.key)
        if c.fmt is not None:
            return c.fmt(v, row)
        return "-" if v is None else str(v)

    # ---- content

    def set_rows(self, rows: list[dict], force_columns: bool = False) -> None:
        visible = self._fit()
        same_columns = [c.key for c in visible] == [c.key for c in self._visible]
        if (not force_columns and same_columns and rows == self.rows_data
                and self._shown_filter == self.filter_text
                and self._shown_theme == self.app.theme):
            return  # nothing changed: nothing to draw
        self.rows_data = rows
        self._shown_filter = self.filter_text
        self._shown_theme = self.app.theme
        shown = rows
        if self.filter_text:
            f = self.filter_text
            shown = [r for r in rows if any(f in str(self._display(c, r)).lower()
                                            for c in self.cols)]
        if self.sort_key:
            k = self.sort_key
            present = [r for r in shown if r.get(k) is not None]
            missing = [r for r in shown if r.get(k) is None]
            try:
                present.sort(key=lambda r: r[k], reverse=self.sort_reverse)
            except TypeError:
                present.sort(key=lambda r: str(r[k]), reverse=self.sort_reverse)
            shown = present + missing
        keys = [str(r.get("_key", i)) for i, r in enumerate(shown)]
        if not force_columns and same_columns and keys == self._shown_keys:
            # The same rows in the same order (the usual live update): redraw the rows on
            # screen whose cells changed, keeping the cursor and the scroll position. Rows
            # off screen get their cells when they are drawn: a table of thousands of rows
            # costs what its visible rows cost.
            old, self._cells = self._cells, {}
            self.shown = shown
            top = round(self.scroll_y)
            for i in range(top, min(len(shown), top + self._page())):
                new = self.get_row_at(i)
                if new == old.get(i):
                    self._cells[i] = old[i]  # the same list: its strip stays valid
                else:
                    self._strips.pop(i, None)
                    self.refresh_line(i + 1)
            self._highlight_changed()
            return
        # Other rows or another order: keep the cursor on the same row if it is still here.
        cursor_key = self._highlighted_key
        self._visible = visible
        self.shown, self._shown_keys, self._cells = shown, keys, {}
        self._strips.clear()
        self.virtual_size = Size(min(self.columns_width(), self._room()), len(shown) + 1)
        row = keys.index(cursor_key) if cursor_key in keys else self._cursor
        self._cursor = max(0, min(row, len(shown) - 1))
        self.refresh()
        self._highlight_changed()

    def _highlight_changed(self) -> None:
        """Tell the screen when the row under the cursor is another one."""
        sel = self.selected()
        key = None if sel is None else str(sel.get("_key", self._cursor))
        if key != self._highlighted_key:
            self._highlighted_key = key
            if sel is not None:
                self.post_message(self.RowHighlighted(self, self._cursor))

    # ---- cursor

    def move_cursor(self, row: int, animate: bool = False) -> None:
        if not self.shown:
            return
        row = max(0, min(row, len(self.shown) - 1))
        if row != self._cursor:
            for i in (self._cursor, row):
                self._strips.pop(i, None)
                self.refresh_line(i + 1)
            self._cursor = row
        self._scroll_to_cursor(animate)
        self._highlight_changed()

    def _page(self) -> int:
        return max(1, self.scrollable_content_region.height - 1)

    def _scroll_to_cursor(self, animate: bool = False) -> None:
        top = round(self.scroll_y)
        if self._cursor < top:
            self.scroll_to(y=self._cursor, animate=animate, immediate=True)
        elif self._cursor >= top + self._page():
            self.scroll_to(y=self._cursor - self._page() + 1, animate=animate, immediate=True)

    def action_cursor(self, step: int) -> None:
        self.move_cursor(self._cursor + step)

    def action_page(self, direction: int) -> None:
        self.move_cursor(self._cursor + direction * self._page())

    def action_first(self) -> None:
        self.move_cursor(0)

    def action_last(self) -> None:
        self.move_cursor(len(self.shown) - 1)

    def action_select(self) -> None:
        if self.selected() is not None:
            self.post_message(self.RowSelected(self, self._cursor))

    # ---- mouse

    def _row_at(self, y: int) -> int | None:
        """The shown row at line ``y`` of the widget (0 is the header)."""
        if y < 1:
            return None
        i = round(self.scroll_y) + y - 1
        return i if 0 <= i < len(self.shown) else None

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None:
            return
        if offset.y == 0:
            for c, _x0, x1 in self._spans():
                if offset.x < x1:
                    self.sort_by(c.key)
                    break
            event.stop()
            return
        row = self._row_at(offset.y)
        if row is None:
            return
        if row == self._cursor:
            self.post_message(self.RowSelected(self, row))
        else:
            self.move_cursor(row)
        event.stop()

    def on_mouse_move(self, event: events.MouseMove) -> None:
        offset = event.get_content_offset(self)
        self._set_hover(None if offset is None else self._row_at(offset.y))

    def on_leave(self, event: events.Leave) -> None:
        self._set_hover(None)

    def _set_hover(self, row: int | None) -> None:
        if row != self._hover:
            for i in (self._hover, row):
                if i is not None:
                    self._strips.pop(i, None)
                    self.refresh_line(i + 1)
            self._hover = row

    # ---- drawing

    def _style(self, name: str) -> Style:
        if self._styles is None:
            names = ("header", "even-row", "odd-row", "cursor", "hover")
            self._styles = {n: self.get_component_styles(f"deck-table--{n}").rich_style
                            for n in names}
        return self._styles[name]

    def _line(self, cells: list, style: Style, over: Style | None = None) -> Strip:
        """One table line from its cells, each cropped (…) or padded to its column: the
        cells' own styles on ``style``, and ``over`` (the cursor) on top of both."""
        pad = " " * self.CELL_PAD
        line = Text(no_wrap=True, end="")
        for c, cell in zip(self._visible, cells, strict=True):
            w = self._width(c)
            line.append(pad)
            if isinstance(cell, Text):
                text = cell.copy()
                text.truncate(w, overflow="ellipsis", pad=True)
                line.append_text(text)
            else:
                s = str(cell)
                if cell_len(s) > w:
                    s = set_cell_size(s, max(0, w - 1)) + "…" if w else ""
                line.append(set_cell_size(s, w))
            line.append(pad)
        segments = Segment.apply_style(line.render(self.app.console), style, over)
        return Strip(segments, line.cell_len).adjust_cell_length(
            self._room(), style + over if over else style)

    def render_line(self, y: int) -> Strip:
        if y == 0:
            return self._line(self.labels(), self._style("header"))
        i = round(self.scroll_y) + y - 1
        if not 0 <= i < len(self.shown):
            return Strip.blank(self._room())
        cells = self.get_row_at(i)
        drawn_with = (i == self._cursor, i == self._hover, self._room())
        cached = self._strips.get(i)
        if cached is not None and cached[0] is cells and cached[1] == drawn_with:
            return cached[2]
        style = self._style("odd-row" if i % 2 else "even-row")
        if i == self._hover:
            style += self._style("hover")
        strip = self._line(cells, style, self._style("cursor") if i == self._cursor else None)
        self._strips[i] = (cells, drawn_with, strip)
        return strip
