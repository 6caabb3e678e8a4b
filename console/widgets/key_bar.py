"""The footer: the keys that apply here, in one clickable line."""

from __future__ import annotations

from rich.style import Style
from rich.text import Text
from textual.widgets import Static


class KeyBar(Static):
    """The footer: the keys that apply here, in one line, each clickable.

    Textual's Footer builds a widget per key and rebuilds them all whenever the
    bindings change (every screen switch and focus move): on this console that was
    a sixth of the work of a key-to-repaint. This draws the same keys as one line of
    text; clicking a key presses it."""

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
        for key, (_node, binding, enabled, _tip) in self.screen.active_bindings.items():
            if binding.action == "command_palette" and app.ENABLE_COMMAND_PALETTE:
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
