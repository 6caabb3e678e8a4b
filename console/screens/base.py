"""What every screen shares: the frame (``DeckScreen``: header, body, filter bar, key bar),
the flow actions, the bases of the drill-down screens (``ViewScreen``, ``QueryScreen``)
and the text they format values with. Each screen renders from the app's ConsoleState in
``refresh_view``; each has its own module, and its styles (if any) are in
console/styles/<module>.tcss."""

from __future__ import annotations

import json
import math
import time
from contextlib import suppress
from typing import Any

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widgets import Input

from flowdeck.console.widgets import DeckTable, FilterBar, KeyBar, StatusHeader

RESUME_REDRAW_S = 0.03  # after a screen switch, its redraw from the state waits this long


class DeckScreen(Screen):
    """Header, body, filter bar, footer: the frame every screen shares."""

    TITLE = ""
    BINDINGS = [
        Binding("slash", "open_filter", "Filter", id="table.filter"),
        Binding("y", "copy", "Copy", id="table.copy"),
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


class ViewScreen(DeckScreen):
    """A DeckScreen that draws in ``draw()``; ``refresh_view`` skips a redraw that arrives
    before the screen has composed its widgets (the live loop can redraw a screen the
    moment it becomes current), since ``on_mount`` draws it again."""

    def draw(self) -> None:
        pass

    def refresh_view(self) -> None:
        try:
            self.draw()
        except NoMatches:
            return
        super().refresh_view()


class QueryScreen(ViewScreen):
    """A drill-down screen whose content is asked of the engine (``control.query``) in a
    worker; ``r`` reloads. Subclasses implement ``fetch()`` (the query) and ``loaded()``
    (keep the value); ``render_loaded()`` fills widgets once the answer is in. While it
    loads, ``loading`` is true; a failed query leaves its message in ``error``."""

    loading = False
    error: str | None = None

    async def fetch(self):
        """The query; may raise. Returns the loaded value."""
        return None

    def loaded(self, value) -> None:
        """Keep a successfully fetched value."""

    def failed(self) -> None:
        """What a failed query leaves behind (default: the previous value stays)."""

    def render_loaded(self) -> None:
        """Fill widgets from the loaded value (skipped if the screen went away)."""

    def on_mount(self) -> None:
        # Textual runs each class's on_mount in the MRO itself: no super() call here
        # (or below), or the query would start twice.
        self.action_reload()

    def action_reload(self) -> None:
        if self.app.control is None:
            self.refresh_view()
            return
        self.loading = True
        self.refresh_view()
        self.run_worker(self._load(), exclusive=True, group=type(self).__name__)

    async def _load(self) -> None:
        try:
            self.loaded(await self.fetch())
            self.error = None
        except Exception as exc:  # shown in the screen's header, never a crash
            self.failed()
            self.error = str(exc)
        self.loading = False
        with suppress(NoMatches):  # the screen went away while the query ran
            self.render_loaded()
        self.refresh_view()


# ---------------------------------------------------------------- text the screens share

NOT_CONNECTED = "✖ not connected"


def fmt_value(v: Any) -> str:
    """A field value, compactly: floats to six significant digits, lists joined."""
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        return f"{v:.6g}"
    if isinstance(v, list | tuple):
        return ", ".join(fmt_value(x) for x in v) or "-"
    if isinstance(v, dict):
        return json.dumps(v, default=str, separators=(", ", ": "))
    return str(v)


REASON_KEY = "anomaly_reason"
"""Where a flagged record's data explains the flag (the detect stage's ``REASON_KEY``)."""


def data_text(data: dict | None, skip: tuple = (), first: list | tuple = ()) -> str:
    """A record's fields on one line: ``temperature=7.3 pressure=1015.3 …``.

    Fields named in ``first`` (a flow's metrics) lead; fields in ``skip`` are left out, and
    so is the anomaly reason (:func:`reason_text` shows it)."""
    data = data or {}
    order = [k for k in first if k in data] + [k for k in data if k not in first]
    return " ".join(f"{k}={fmt_value(data[k])}" for k in order
                    if k not in skip and k != REASON_KEY)


def reason_text(reason: dict | None, app=None) -> Text:
    """Why a point was flagged, on one line: ``⚠ temperature: rate · observed 35 · expected
    20.1 (normal 19.6..20.4) · p 1e-12 · episode 3``; empty when there is no reason."""
    if not reason:
        return Text("")
    colour = app.theme_variables.get("warning", "") if app is not None else ""
    t = Text()
    t.append(f"⚠ {reason.get('metric', '?')}: {reason.get('detector', '?')}", style=colour)
    t.append(f" · observed {fmt_value(reason.get('observed'))}")
    if reason.get("expected") is not None:
        t.append(f" · expected {fmt_value(reason['expected'])}")
    low, high = reason.get("low"), reason.get("high")
    if low is not None and high is not None:
        t.append(f" (normal {fmt_value(low)}..{fmt_value(high)})")
    if reason.get("probability") is not None:
        t.append(f" · p {reason['probability']:.2g}")
    elif reason.get("score") is not None:
        t.append(f" · score {fmt_value(reason['score'])}")
    if reason.get("episode"):
        t.append(f" · episode {reason['episode']}")
    return t


def excerpt_lines(text: str | None, lines: int = 4, width: int = 160) -> list[str]:
    """The first lines of a payload, each cut to ``width`` characters."""
    out = []
    for line in (text or "").splitlines()[:lines]:
        out.append(line if len(line) <= width else line[: width - 1] + "…")
    return out


def anomaly_text(score: float | None, anomalous: bool | None, app=None) -> Text:
    """The anomaly score, marked ⚠ with the word when the detector called it anomalous."""
    if score is None:
        return Text("-")
    if anomalous:
        colour = app.theme_variables.get("warning", "") if app is not None else ""
        return Text(f"⚠ {score:.2f} anomalous", style=colour)
    return Text(f"{score:.2f}")
