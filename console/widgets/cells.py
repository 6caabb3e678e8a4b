"""What table cells show beside plain text: a status as symbol + word, a sparkline."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text

from flowdeck.console.state import maintenance_marker, symbol
from flowdeck.pipeline.core.shapes import MaintenanceState

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


def flow_state_text(state: str | None, maint: MaintenanceState | None, app=None) -> Text:
    """A flow's state, or, while a maintenance window is in force, the window's marker:
    "‖ maint" in a pausing one (nothing runs), and in a muting one, where runs and their
    failures go on with alerts silenced, the state's own symbol and colour with the word
    "muted" ("✖ muted": failing, muted). The engine's state says nothing of a window,
    and an operator looks here first."""
    marker = maintenance_marker(maint)
    if not marker:
        return status_text(state, app)
    key = "paused" if marker == "‖ maint" else (state or "")
    label = marker if key == "paused" else f"{symbol(state)} muted"
    style = STATUS_STYLE.get(key, "")
    colour = app.theme_variables.get(style[1:]) if app is not None and style else None
    return Text(label, style=colour or "")


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
