"""The filter bar: `/` opens it at the bottom of a screen; typing narrows its table."""

from __future__ import annotations

from textual.binding import Binding
from textual.widgets import Input


class FilterBar(Input):
    """`/` opens it; typing filters the focused screen's main table; esc closes it."""

    BINDINGS = [Binding("escape", "close", "Close filter", id="filter.close")]

    def action_close(self) -> None:
        self.remove_class("-shown")
        if self.screen.focus_table() is not None:
            self.screen.focus_table().focus()
