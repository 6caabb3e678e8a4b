"""Widgets every screen shares: the status header, sortable/filterable tables, dialogs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

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
    StatusHeader { dock: top; height: 1; background: $panel; color: $foreground; }
    """

    def status_line(self) -> Text:
        app = self.app
        state = app.state
        counts = state.flow_counts()
        v = app.theme_variables
        narrow = (self.size.width or 120) < 110
        t = Text()
        t.append(" flowdeck ", style=f"bold {v.get('primary', '')}")
        t.append(f"▸ {getattr(self.screen, 'TITLE', '') or ''} ")
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
        if (not force_columns and rows == self.rows_data and self.columns
                and [c.key for c in visible] == [c.key for c in self._visible]
                and self._shown_filter == self.filter_text
                and self._shown_theme == self.app.theme):
            return  # nothing changed: rebuilding the table would only cost time
        self.rows_data = rows
        self._shown_filter = self.filter_text
        self._shown_theme = self.app.theme
        cursor_key = None
        if self.shown and 0 <= self.cursor_row < len(self.shown):
            cursor_key = self.shown[self.cursor_row].get("_key")
        if force_columns or [c.key for c in visible] != [c.key for c in self._visible] \
                or not self.columns:
            self.clear(columns=True)
            for c in visible:
                self.add_column(self._label(c), width=c.width, key=c.key)
            self._visible = visible
        else:
            self.clear()
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
        self.shown = shown
        for i, r in enumerate(shown):
            self.add_row(*(self._display(c, r) for c in visible), key=str(r.get("_key", i)))
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
