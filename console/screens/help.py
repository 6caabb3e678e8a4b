"""Help: every key of the current screen and of the app."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

GLOBAL_KEYS = [
    ("1 … 8", "Overview, Sources, Quality, Caches, Recovery, Data, Insights, Events"),
    ("ctrl+p", "command palette: every screen and action by name"),
    ("?", "this help"),
    ("p", "pause / resume live updates (shown in the header)"),
    ("+ / -", "refresh faster / slower"),
    ("t", "next theme: dark, light, high contrast"),
    ("/", "filter the list on this screen"),
    ("s / S", "sort by the next column / reverse (or click a column header)"),
    ("y", "copy the selected row (OSC 52: works over SSH)"),
    ("enter", "open the selected item"),
    ("esc", "back"),
    ("q", "quit"),
]


class HelpScreen(ModalScreen):
    BINDINGS = [Binding("escape,question_mark,q", "dismiss", "Close")]

    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll { width: 90%; max-width: 100; height: 90%;
                                  border: thick $primary; background: $surface; padding: 0 1; }
    """

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(self._render_keys())

    def _render_keys(self) -> Table:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold", no_wrap=True)
        table.add_column()
        table.add_row(Text("flowdeck keys", style="bold underline"), "")
        for key, what in GLOBAL_KEYS:
            table.add_row(key, what)
        below = self.app.screen_stack[-2] if len(self.app.screen_stack) > 1 else None
        if below is not None:
            title = getattr(below, "TITLE", "") or "this screen"
            table.add_row("", "")
            table.add_row(Text(f"{title} screen", style="bold underline"), "")
            for binding in below.BINDINGS:
                if isinstance(binding, Binding) and binding.key not in ("slash", "y"):
                    table.add_row(binding.key_display or self.app.get_key_display(binding),
                                  binding.description)
        return table
