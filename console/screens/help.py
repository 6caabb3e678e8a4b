"""Help: every key of the app and of the current screen, each with its binding id.

The id is what ``console.keys`` rebinds (``keys: {screen.quality: g}``); the keys shown
are the ones in effect, after ``console.keys``.
"""

from __future__ import annotations

import importlib
import pkgutil

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.dom import DOMNode
from textual.screen import ModalScreen
from textual.widgets import Static

from flowdeck.console.screens.base import DeckScreen
from flowdeck.console.widgets import DeckTable

# The keys every screen has, by binding id, in the order listed after the screen keys
# (``screen.<mode>``, one per screen).
GLOBAL_KEYS = [
    ("app.palette", "command palette: every screen and action by name"),
    ("app.help", "this help"),
    ("app.pause", "pause / resume live updates (shown in the header)"),
    ("app.faster", "refresh faster"),
    ("app.slower", "refresh slower"),
    ("app.theme", "next theme: dark, light, high contrast"),
    ("table.filter", "filter the list on this screen"),
    ("table.sort", "sort by the next column (or click a column header)"),
    ("table.reverse_sort", "reverse the sort"),
    ("table.copy", "copy the selected row (OSC 52: works over SSH)"),
    ("table.select", "open the selected item"),
    ("app.back", "back"),
    ("app.quit", "quit"),
]


def console_bindings(app_class: type) -> list[tuple[type, Binding]]:
    """Every binding the console defines, with the class defining it: the app's and those
    of every screen and widget module (each class's own ``BINDINGS``, not inherited ones)."""
    from flowdeck.console import screens, widgets

    found = [(app_class, b) for b in app_class.__dict__.get("BINDINGS", [])]
    for package in (screens, widgets):
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
            module = importlib.import_module(f"{package.__name__}.{info.name}")
            for obj in vars(module).values():
                if (isinstance(obj, type) and issubclass(obj, DOMNode)
                        and obj.__module__ == module.__name__):
                    found += [(obj, b) for b in obj.__dict__.get("BINDINGS", [])]
    return found


def binding_ids(app_class: type) -> set[str]:
    """The ids ``console.keys`` can rebind."""
    return {b.id for _cls, b in console_bindings(app_class) if isinstance(b, Binding) and b.id}


def key_display(app, binding: Binding) -> str:
    """The key(s) of a binding as shown to the operator: ``console.keys`` applied."""
    keys = getattr(app, "key_config", {}).get(binding.id or "")
    if keys is None:
        if binding.key_display:
            return binding.key_display
        keys = binding.key
    return " / ".join(app.get_key_display(binding.with_key(k.strip(), key_display=None))
                      for k in keys.split(","))


class HelpScreen(ModalScreen):
    BINDINGS = [Binding("escape,question_mark,q", "dismiss", "Close", id="help.close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(self._render_keys())

    def _global_rows(self) -> list[tuple[Binding, str]]:
        app = self.app
        by_id = {b.id: b for cls in (type(app), DeckScreen, DeckTable)
                 for b in cls.__dict__.get("BINDINGS", []) if isinstance(b, Binding)}
        rows = [(by_id[f"screen.{mode}"], f"{title} screen")
                for mode, (_key, title, _cls) in app.screen_specs.items()]
        return rows + [(by_id[binding_id], what) for binding_id, what in GLOBAL_KEYS]

    def _render_keys(self) -> Table:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold", no_wrap=True)
        table.add_column(style="dim", no_wrap=True)
        table.add_column()
        table.add_row(Text("flowdeck keys", style="bold underline"), "", "")
        shown = set()
        for binding, what in self._global_rows():
            table.add_row(key_display(self.app, binding), binding.id, what)
            shown.add(binding.id)
        below = self.app.screen_stack[-2] if len(self.app.screen_stack) > 1 else None
        if below is not None:
            title = getattr(below, "TITLE", "") or "this screen"
            table.add_row("", "", "")
            table.add_row(Text(f"{title} screen", style="bold underline"), "", "")
            for binding in below.BINDINGS:
                if isinstance(binding, Binding) and binding.id not in shown:
                    table.add_row(key_display(self.app, binding), binding.id,
                                  binding.description)
        return table
