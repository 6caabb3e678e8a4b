"""The status header: one line at the top of every screen."""

from __future__ import annotations

from rich.style import Style
from rich.text import Text
from textual.widgets import Static

from flowdeck.console.state import fmt_time, symbol


class StatusHeader(Static):
    """One line: app, screen, connection, flows by state, pause, refresh, clock."""

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
