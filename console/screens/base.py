"""The console's screens. Each renders from the app's ConsoleState in ``refresh_view``."""

from __future__ import annotations

import json
import time

from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Input

from flowdeck.console.widgets import DeckTable, FilterBar, KeyBar, StatusHeader

RESUME_REDRAW_S = 0.03  # after a screen switch, its redraw from the state waits this long


class DeckScreen(Screen):
    """Header, body, filter bar, footer: the frame every screen shares."""

    TITLE = ""
    BINDINGS = [
        Binding("slash", "open_filter", "Filter", id="filter"),
        Binding("y", "copy", "Copy", id="copy"),
    ]

    def compose(self) -> ComposeResult:
        yield StatusHeader()
        yield from self.compose_body()
        yield FilterBar(placeholder="filter: type to narrow the list, esc to close")
        yield KeyBar()

    def compose_body(self) -> ComposeResult:
        yield from ()

    def refresh_view(self) -> None:
        """Redraw from ``self.app.state``. Subclasses fill their widgets, then call super."""
        self.query_one(StatusHeader).refresh()

    def on_mount(self) -> None:
        self.refresh_view()

    _styled_with: tuple | None = None

    def on_screen_resume(self, event: events.ScreenResume) -> None:
        """Redraw from the state (just after the first paint); and, since this runs before Textual's own handler (it
        calls one handler per class, subclass first), tell it to keep the widgets' styles
        when neither the theme nor the stylesheet nor the size changed since this screen
        was last styled. Restyling every widget on every screen switch made each table
        render all its lines afresh, the larger part of a key-to-repaint.

        (One handler: a class defining both ``_on_screen_resume`` and this one would only
        have the first called.)"""
        styled_with = (self.app.theme, len(self.app.stylesheet.source), self.app.size)
        if styled_with == self._styled_with:
            event.refresh_styles = False
        self._styled_with = styled_with
        # The screen is painted first as it was last drawn, and brought up to date just
        # after (a timer, so the first frame is written before): the key's repaint does
        # not wait for a table of thousands of rows to be refilled from a state that
        # moved on meanwhile.
        self._resumed_at = time.monotonic()
        self.set_timer(RESUME_REDRAW_S, self.refresh_view)

    _resumed_at = 0.0

    @property
    def resuming(self) -> bool:
        """Just switched to, its own redraw pending: the live loop's redraw can wait."""
        return time.monotonic() - self._resumed_at < RESUME_REDRAW_S

    _last_table: DeckTable | None = None

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        if isinstance(event.widget, DeckTable):
            self._last_table = event.widget

    def focus_table(self) -> DeckTable | None:
        """The table `/` filters and `y` copies from: the focused one, else the one that had
        focus last (opening the filter bar takes focus away from it), else the first."""
        if isinstance(self.focused, DeckTable):
            return self.focused
        if self._last_table is not None and self._last_table.is_attached:
            return self._last_table
        tables = list(self.query(DeckTable))
        return tables[0] if tables else None

    def action_open_filter(self) -> None:
        bar = self.query_one(FilterBar)
        bar.add_class("-shown")
        bar.focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        if isinstance(event.input, FilterBar) and self.focus_table() is not None:
            self.focus_table().set_filter(event.value)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if isinstance(event.input, FilterBar) and self.focus_table() is not None:
            self.focus_table().focus()

    def copy_text(self, row: dict) -> str:
        """What `y` copies for the selected row: JSON of its fields."""
        return json.dumps({k: v for k, v in row.items() if not k.startswith("_")},
                          default=str, indent=1)

    def action_copy(self) -> None:
        table = self.focus_table()
        row = table.selected() if table is not None else None
        if row is None:
            self.notify("nothing selected to copy", severity="warning")
            return
        text = self.copy_text(row)
        self.app.copy_to_clipboard(text)
        self.notify(f"copied {len(text)} characters to the clipboard")


class FlowActions:
    """Run now / pause-resume for the flow a screen has selected (mixed into screens).

    The screen it is mixed into provides ``_selected_flow() -> str | None``.
    """

    def action_run_now(self) -> None:
        flow = self._selected_flow()
        if flow:
            self.app.operator_action("run_now", flow=flow)

    def action_toggle_flow(self) -> None:
        flow = self._selected_flow()
        if not flow:
            return
        if self.app.state.flows.get(flow, {}).get("paused"):
            self.app.operator_action("resume", flow=flow)
        else:
            self.app.operator_action(
                "pause", flow=flow, confirm=f"Pause flow {flow}? It stops fetching until resumed.")
