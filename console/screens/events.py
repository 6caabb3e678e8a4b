"""Events: the live log of everything the engine reports, newest first.

Newest events are at the top (the table is sorted by time, descending; ``s``/``S``
re-sort as on every screen), so new lines never scroll the one being read out of
view. ``l`` cycles the minimum level: info (the default: debug chatter such as
individual fetches is hidden) → warning → error → all (debug included). ``f``
freezes this log, independently of the global pause (``p``): the lines stay as
they are while the rest of the console keeps updating, and the status line counts
what arrived meanwhile. ``/`` filters the lines by any text in them.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Input, Static

from flowdeck.console.screens.base import DeckScreen
from flowdeck.console.state import fmt_time, symbol
from flowdeck.console.widgets import Col, DeckTable, FilterBar, status_text

LEVEL_RANK = {"debug": 0, "info": 1, "warning": 2, "error": 3, "critical": 4}
MIN_LEVELS = ("all", "info", "warning", "error")  # `l` cycles through these
DEFAULT_MIN_LEVEL = "info"
MAX_ROWS = 500  # the newest matching lines in the table (the filter searches them all)


def _rank(level: str | None) -> int:
    return LEVEL_RANK.get(level or "", 1)


def _haystack(ev: dict, ts_ms: float | None) -> str:
    """The line as the table shows it, for the filter."""
    level = ev.get("level")
    return (
        f"{fmt_time(ts_ms)} {symbol(level)} {level} {ev.get('flow') or '-'} "
        f"{ev.get('type')} {ev.get('text')}"
    ).lower()


class EventsScreen(DeckScreen):
    TITLE = "Events"
    BINDINGS = [
        Binding("l", "cycle_level", "Min level", id="events.cycle_level"),
        Binding("f", "toggle_freeze", "Freeze log", id="events.freeze"),
    ]

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.min_level = DEFAULT_MIN_LEVEL
        self.frozen: list[dict] | None = None  # the events as they were when frozen
        self.frozen_at: float | None = None
        self._drawn: tuple | None = None
        self._matched = 0

    def compose_body(self) -> ComposeResult:
        yield Static(id="events-status", classes="hint")
        yield DeckTable(
            [
                Col("time", "Time", 8, lambda v, r: fmt_time(r["_ts_ms"]), priority=9),
                Col(
                    "level",
                    "Level",
                    10,
                    lambda v, r: status_text(r["_level"], self.app),
                    priority=9,
                ),
                Col("flow", "Flow", 9, priority=7),
                Col("type", "Type", 12, priority=3),
                Col("text", "Text", None, priority=8, min_width=20),
            ],
            default_sort="time",
            reverse=True,
            id="events",
        )
        yield Static(id="events-detail", classes="hint")

    # ------------------------------------------------------------ rows

    def _source_events(self):
        return self.frozen if self.frozen is not None else self.app.state.events

    def _rows(self, evs) -> tuple[list[dict], int]:
        """The newest MAX_ROWS lines at or above the minimum level that match the filter,
        and how many lines in the whole log match (the filter searches all of it)."""
        floor = 0 if self.min_level == "all" else _rank(self.min_level)
        needle = self.query_one(DeckTable).filter_text
        rows: list[dict] = []
        matched = 0
        n = len(evs)
        for j, ev in enumerate(reversed(evs)):
            level = ev.get("level")
            if _rank(level) < floor:
                continue
            ts = ev.get("ts")
            ts_ms = ts * 1000 if ts is not None else None
            if needle and needle not in _haystack(ev, ts_ms):
                continue
            matched += 1
            if len(rows) < MAX_ROWS:
                rows.append(
                    {
                        "_key": str(id(ev)),
                        "_ts_ms": ts_ms,
                        "_level": level,
                        "time": (ts or 0.0, n - 1 - j),
                        "level": _rank(level),
                        "flow": ev.get("flow"),
                        "type": ev.get("type"),
                        "text": ev.get("text"),
                        "ts": ts,
                    }
                )
        rows.reverse()
        return rows, matched

    def _new_since_freeze(self) -> int:
        """How many events arrived after the freeze (they show when unfrozen)."""
        if not self.frozen:
            return len(self.app.state.events) if self.frozen is not None else 0
        last = self.frozen[-1]
        n = 0
        for ev in reversed(self.app.state.events):
            if ev is last:
                return n
            n += 1
        return n

    # ------------------------------------------------------------ view

    def refresh_view(self) -> None:
        table = self.query_one(DeckTable)
        evs = self._source_events()
        key = (
            len(evs),
            id(evs[-1]) if evs else None,
            self.min_level,
            self.frozen is None,
            table.filter_text,
            self.app.theme,
        )
        if key != self._drawn:
            self._drawn = key
            rows, self._matched = self._rows(evs)
            table.set_rows(rows)
        self._show_status(len(table.shown), self._matched, len(evs))
        self._show_detail()
        super().refresh_view()

    def on_deck_table_row_highlighted(self, event) -> None:
        self._show_detail()

    def _show_detail(self) -> None:
        """The highlighted line in full (the table cuts long lines at its edge)."""
        row = self.query_one(DeckTable).selected()
        detail = self.query_one("#events-detail", Static)
        if row is None:
            detail.update("")
            return
        t = Text.assemble(
            fmt_time(row["_ts_ms"], True),
            " ",
            status_text(row["_level"], self.app),
            " ",
            (row.get("flow") or "-", "bold"),
            " ",
            (row.get("type") or "", "dim"),
            " ",
            row.get("text") or "",
        )
        detail.update(t)

    def _show_status(self, shown: int, matched: int, total: int) -> None:
        """One line: following or frozen, the minimum level, how many lines show."""
        v = self.app.theme_variables
        table = self.query_one(DeckTable)
        t = Text()
        if self.frozen is not None:
            t.append(
                f" ❄ FROZEN {fmt_time((self.frozen_at or 0) * 1000)} ",
                style=f"bold reverse {v.get('warning', '')}",
            )
            t.append(f" +{self._new_since_freeze()} new (f resumes)")
        else:
            t.append("▶ following", style="bold")
            t.append(" (f freezes)")
        t.append(" │ ")
        t.append(
            "level: all" if self.min_level == "all" else f"level ≥ {self.min_level}", style="bold"
        )
        t.append(" (l) │ ")
        if table.filter_text:
            t.append(f"“{table.filter_text}” ")
        t.append(f"{matched}/{total} events")
        if shown < matched:
            t.append(f", newest {shown} shown")
        status = self.query_one("#events-status", Static)
        if t.cell_len + 15 <= (status.size.width or 200):
            t.append(" · newest first")
        status.update(t)

    # ------------------------------------------------------------ actions

    def action_cycle_level(self) -> None:
        i = MIN_LEVELS.index(self.min_level) if self.min_level in MIN_LEVELS else 0
        self.min_level = MIN_LEVELS[(i + 1) % len(MIN_LEVELS)]
        self.refresh_view()

    def action_toggle_freeze(self) -> None:
        if self.frozen is None:
            self.frozen = list(self.app.state.events)
            self.frozen_at = self.app.state.now
            self.notify("events log frozen (f resumes)")
        else:
            self.frozen = None
            self.frozen_at = None
            self.notify("events log following again")
        self.refresh_view()

    def on_input_changed(self, event: Input.Changed) -> None:
        if isinstance(event.input, FilterBar):
            # filtered here over the whole log, not only the lines in the table
            event.prevent_default()
            self.query_one(DeckTable).filter_text = event.value.strip().lower()
            self.refresh_view()
