"""Raw payload: one payload as fetched, scrollable (opened from the quarantine browser)."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Static

from flowdeck.console.screens.base import NOT_CONNECTED, QueryScreen
from flowdeck.console.state import fmt_time


class RawScreen(QueryScreen):
    """One raw payload as fetched, scrollable; ``y`` copies its text."""

    TITLE = "Raw payload"
    BINDINGS = [
        Binding("y", "copy", "Copy payload", id="raw.copy"),
        Binding("r", "reload", "Reload", id="raw.reload"),
    ]

    def __init__(self, raw_id: int, note: str | None = None) -> None:
        super().__init__()
        self.raw_id = int(raw_id)
        self.note = note
        self.raw: dict | None = None

    def compose_body(self) -> ComposeResult:
        yield Static(id="raw-head")
        with VerticalScroll(id="raw-scroll"):
            yield Static(id="raw-body")

    def on_mount(self) -> None:
        self.query_one("#raw-scroll").focus()

    @property
    def text(self) -> str | None:
        return None if self.raw is None else self.raw.get("text", "")

    async def fetch(self):
        return await self.app.control.query("raw", raw_id=self.raw_id)

    def loaded(self, value) -> None:
        self.raw = value

    def render_loaded(self) -> None:
        body = Text()
        if self.raw is not None:
            lines = (self.raw.get("text") or "").splitlines() or [""]
            width = len(str(len(lines)))
            for n, line in enumerate(lines, 1):
                body.append(f"{n:>{width}} │ ", style="dim")
                body.append(line + "\n")
        self.query_one("#raw-body", Static).update(body)

    def draw(self) -> None:
        head = Text(f"Raw payload #{self.raw_id}", style="bold")
        r = self.raw
        if r is not None:
            head.append(
                f"  {r.get('flow')}/{r.get('source')} · fetched "
                f"{fmt_time(r.get('fetched_ms'), True)} · {r.get('size')} bytes · "
                f"{r.get('content_type') or '-'}"
            )
            if r.get("status_code") is not None:
                head.append(f" · HTTP {r['status_code']}")
            if r.get("truncated"):
                head.append(" · truncated")
            shown = len(r.get("text") or "")
            if r.get("size") and shown < r["size"]:
                head.append(f" · first {shown} characters shown", style="dim")
        if self.note:
            head.append(f"\n{self.note}")
        if self.app.control is None:
            head.append(f"\n{NOT_CONNECTED} — the payload needs a connection to an engine")
        elif self.loading:
            head.append("\nloading…")
        elif self.error:
            head.append(f"\n✖ {self.error}")
        self.query_one("#raw-head", Static).update(head)

    def action_copy(self) -> None:
        text = self.text
        if text is None:
            self.notify("nothing loaded to copy", severity="warning")
            return
        self.app.copy_to_clipboard(text)
        self.notify(f"copied {len(text)} characters of raw payload #{self.raw_id}")
