"""Widgets every screen shares: the status header, sortable/filterable tables, dialogs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.events import Resize
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Input, Label, Static

from flowdeck.console.state import fmt_time, symbol

STATUS_STYLE = {
    "healthy": "$success", "ok": "$success", "up": "$success", "resolved": "$success",
    "degraded": "$warning", "partial": "$warning", "warning": "$warning",
    "acknowledged": "$warning", "waiting": "$secondary",
    "failing": "$error", "failed": "$error", "down": "$error", "error": "$error",
    "critical": "$error", "paused": "$secondary", "muted": "$secondary", "info": "$primary",
    "open": "$warning", "disabled": "$secondary",
}


def status_text(status: str | None, app=None) -> Text:
    """A status as symbol + word, coloured from the theme: never colour alone."""
    label = f"{symbol(status)} {status or '-'}"
    style = STATUS_STYLE.get(status or "", "")
    if app is not None and style.startswith("$"):
        colour = app.theme_variables.get(style[1:])
        return Text(label, style=colour or "")
    return Text(label)


SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float], width: int = 20) -> str:
    """A text sparkline (fits in a table cell; the scale is the window's own max)."""
    vals = list(values)[-width:]
    if not vals:
        return "·" * min(width, 8)
    hi = max(vals)
    if hi <= 0:
        return SPARK[0] * len(vals)
    return "".join(SPARK[min(7, int(v / hi * 7.999))] for v in vals)


class StatusHeader(Static):
    """One line: app, screen, connection, flows by state, pause, refresh, clock."""

    DEFAULT_CSS = """
    StatusHeader { dock: top; height: 1; background: $panel; color: $foreground;
                   link-style: none; link-background: transparent;
                   link-style-hover: bold reverse; }
    """

    def status_line(self) -> Text:
        app = self.app
        state = app.state
        counts = state.flow_counts()
        v = app.theme_variables
        narrow = (self.size.width or 120) < 110
        t = Text()
        t.append(" flowdeck ", style=f"bold {v.get('primary', '')}")
        # Click the screen's name for a menu of screens (the mouse way to switch).
        t.append(f"▸ {getattr(self.screen, 'TITLE', '') or ''} ▾",
                 style=Style(meta={"@click": "app.screen_menu"}))
        t.append(" ")
        t.append("│ ")
        conn = "● " if state.connected else "✖ "
        label = state.connection if not narrow or len(state.connection) < 12 \
            else state.connection[:11] + "…"
        t.append(conn + label + " ", style=v.get("success" if state.connected else "error", ""))
        t.append("│ ")
        for name, style in (("healthy", "success"), ("degraded", "warning"),
                            ("failing", "error"), ("paused", "secondary")):
            n = counts.get(name, 0)
            # Narrow terminals get the symbol and count only; the words return when wide.
            text = f"{symbol(name)}{n} " if narrow else f"{symbol(name)} {n} {name} "
            t.append(text, style=v.get(style, "") if n else "")
        t.append("│ ")
        if state.paused:
            t.append("‖ PAUSED ", style=f"bold reverse {v.get('warning', '')}")
        else:
            t.append("▶ live ")
        t.append(f"{state.refresh_s:g}s ")
        t.append("│ ")
        t.append(fmt_time(state.now_ms) + ("" if narrow else " UTC") + " ")
        return t

    def render(self) -> Text:
        return self.status_line()


class KeyBar(Static):
    """The footer: the keys that apply here, in one line, each clickable.

    Textual's Footer builds a widget per key and rebuilds them all whenever the
    bindings change (every screen switch and focus move): on this console that was
    a sixth of the work of a key-to-repaint. This draws the same keys as one line of
    text; clicking a key presses it."""

    DEFAULT_CSS = """
    KeyBar { dock: bottom; height: 1; background: $footer-background;
             color: $footer-foreground; link-style: none; link-background: transparent;
             link-style-hover: bold reverse; }
    """

    def on_mount(self) -> None:
        self.screen.bindings_updated_signal.subscribe(self, lambda _screen: self.refresh())

    def on_unmount(self) -> None:
        self.screen.bindings_updated_signal.unsubscribe(self)

    def _key(self, text: Text, key: str, display: str, description: str, enabled: bool,
             key_style: str, desc_style: str) -> None:
        click = Style(meta={"@click": f"app.simulate_key({key!r})"})
        dim = "" if enabled else " dim"
        text.append(f" {display} ", style=Style.parse(f"bold {key_style}{dim}") + click)
        text.append(f"{description} ", style=Style.parse(f"{desc_style}{dim}") + click)

    def render(self) -> Text:
        app = self.app
        v = app.theme_variables
        key_style = v.get("footer-key-foreground", "")
        desc_style = v.get("footer-description-foreground", "")
        left, right = Text(no_wrap=True, overflow="ellipsis"), Text(no_wrap=True)
        seen: set[str] = set()
        palette = getattr(app, "COMMAND_PALETTE_BINDING", None)
        for key, (_node, binding, enabled, _tip) in self.screen.active_bindings.items():
            if key == palette and app.ENABLE_COMMAND_PALETTE:
                right.append("▏", style="dim")
                self._key(right, key, app.get_key_display(binding), "palette", enabled,
                          key_style, desc_style)
                continue
            if not binding.show or binding.action in seen:
                continue
            seen.add(binding.action)
            self._key(left, key, app.get_key_display(binding), binding.description, enabled,
                      key_style, desc_style)
        width = self.size.width or 80
        room = max(0, width - right.cell_len)
        left.truncate(room, overflow="ellipsis", pad=True)
        return left + right


@dataclass
class Col:
    """A table column: key into the row, header label, width, display, drop priority.

    Lower ``priority`` columns are dropped first when the terminal is narrow.
    """

    key: str
    label: str
    width: int | None = None
    fmt: Callable[[Any, dict], Any] | None = None
    priority: int = 5


class DeckTable(DataTable):
    """A DataTable that sorts by any column (arrow in the header), filters, and drops
    low-priority columns to fit narrow terminals. Rows are dicts; ``_key`` identifies one."""

    BINDINGS = [
        Binding("s", "cycle_sort", "Sort", show=False),
        Binding("S", "reverse_sort", "Reverse", show=False),
    ]

    def __init__(self, columns: list[Col], *, default_sort: str | None = None,
                 reverse: bool = False, **kw) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kw)
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
        self._cells: list[list] = []

    # ---- layout

    def _fit(self) -> list[Col]:
        width = self.size.width or 200
        chosen = sorted(self.cols, key=lambda c: -c.priority)
        used, keep = 0, []
        for c in chosen:
            w = (c.width or len(c.label) + 2) + 2
            if used + w <= width or not keep:
                keep.append(c)
                used += w
        return [c for c in self.cols if c in keep]

    def on_resize(self, event: Resize) -> None:
        self.set_rows(self.rows_data)

    def _update_dimensions(self, new_rows) -> None:
        """DataTable measures every cell of every added row (on the next idle) to size
        auto-width columns: for the Data screen's 2,000 rows that was over half a second
        on the event loop per refill. A column with a fixed width never reads those
        measurements, and these rows have no labels and a height of 1, so when every
        column is fixed only the virtual size is recomputed."""
        if any(c.auto_width for c in self.columns.values()):
            super()._update_dimensions(new_rows)
        else:
            super()._update_dimensions(())

    # ---- sorting and filtering

    def _label(self, c: Col) -> Text:
        if c.key == self.sort_key:
            return Text(f"{c.label} {'▼' if self.sort_reverse else '▲'}", style="bold")
        return Text(c.label)

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        key = str(event.column_key.value)
        if key == self.sort_key:
            self.sort_reverse = not self.sort_reverse
        else:
            self.sort_key, self.sort_reverse = key, False
        self.set_rows(self.rows_data, force_columns=True)
        event.stop()

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
        same_columns = bool(self.columns) and [c.key for c in visible] == [
            c.key for c in self._visible]
        if (not force_columns and same_columns and rows == self.rows_data
                and self._shown_filter == self.filter_text
                and self._shown_theme == self.app.theme):
            return  # nothing changed: rebuilding the table would only cost time
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
        cells = [[self._display(c, r) for c in visible] for r in shown]
        if not force_columns and same_columns and keys == self._shown_keys:
            # The same rows in the same order (the usual live update): change only the
            # cells that differ, keeping the rows, the cursor and the scroll position.
            for key, new, old in zip(keys, cells, self._cells, strict=True):
                for c, a, b in zip(visible, new, old, strict=True):
                    if a != b:
                        self.update_cell(key, c.key, a, update_width=c.width is None)
            self.shown = shown
            self._cells = cells
            return
        cursor_key = None
        if self.shown and 0 <= self.cursor_row < len(self.shown):
            cursor_key = self.shown[self.cursor_row].get("_key")
        if force_columns or not same_columns:
            self.clear(columns=True)
            for c in visible:
                self.add_column(self._label(c), width=c.width, key=c.key)
            self._visible = visible
        else:
            self.clear()
        self.shown = shown
        self._shown_keys = keys
        self._cells = cells
        for key, row in zip(keys, cells, strict=True):
            self.add_row(*row, key=key)
        if cursor_key is not None:
            for i, r in enumerate(shown):
                if r.get("_key") == cursor_key:
                    self.move_cursor(row=i, animate=False)
                    break

    def selected(self) -> dict | None:
        if self.shown and 0 <= self.cursor_row < len(self.shown):
            return self.shown[self.cursor_row]
        return None


class FilterBar(Input):
    """`/` opens it; typing filters the focused screen's main table; esc closes it."""

    DEFAULT_CSS = """
    FilterBar { dock: bottom; display: none; height: 3; }
    FilterBar.-shown { display: block; }
    """

    BINDINGS = [Binding("escape", "close", "Close filter")]

    def action_close(self) -> None:
        self.remove_class("-shown")
        if self.screen.focus_table() is not None:
            self.screen.focus_table().focus()


class ScreenMenu(ModalScreen[str | None]):
    """Every screen by number and name, to pick with the mouse (or arrows and enter)."""

    BINDINGS = [Binding("escape", "dismiss_menu", "Close")]

    DEFAULT_CSS = """
    ScreenMenu { align: left top; }
    ScreenMenu > OptionList { width: 26; height: auto; margin: 1 0 0 10;
                              border: round $primary; background: $surface; }
    """

    def __init__(self, screens: list[tuple[str, str, str]], current: str | None) -> None:
        super().__init__()
        self.screens = screens  # (mode, key, title)
        self.current = current

    def compose(self) -> ComposeResult:
        from textual.widgets import OptionList
        from textual.widgets.option_list import Option

        yield OptionList(*(Option(f"{key}  {title}", id=mode)
                           for mode, key, title in self.screens))

    def on_mount(self) -> None:
        from textual.widgets import OptionList

        menu = self.query_one(OptionList)
        modes = [m for m, _, _ in self.screens]
        if self.current in modes:
            menu.highlighted = modes.index(self.current)
        menu.focus()

    def on_option_list_option_selected(self, event) -> None:
        self.dismiss(event.option.id)

    def action_dismiss_menu(self) -> None:
        self.dismiss(None)


class ConfirmScreen(ModalScreen[bool]):
    """Confirmation for destructive actions: y / enter confirms, n / esc cancels."""

    BINDINGS = [Binding("y", "answer(True)", "Yes"), Binding("n", "answer(False)", "No"),
                Binding("escape", "answer(False)", "Cancel")]

    DEFAULT_CSS = """
    ConfirmScreen { align: center middle; }
    ConfirmScreen > Vertical { width: 64; max-width: 100%; height: auto; border: thick $warning;
                               background: $surface; padding: 1 2; }
    ConfirmScreen Label { width: 100%; }
    ConfirmScreen Horizontal { height: auto; align: center middle; margin-top: 1; }
    ConfirmScreen Button { margin: 0 2; }
    """

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.question)
            with Horizontal():
                yield Button("Yes (y)", id="yes", variant="warning")
                yield Button("No (n)", id="no")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)
