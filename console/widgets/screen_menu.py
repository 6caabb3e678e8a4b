"""The menu of screens the header's screen name opens (the mouse way to switch)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import ModalScreen


class ScreenMenu(ModalScreen[str | None]):
    """Every screen by number and name, to pick with the mouse (or arrows and enter)."""

    BINDINGS = [Binding("escape", "dismiss_menu", "Close", id="menu.close")]

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
