"""Issue: one quality issue, the records it concerns and excerpts of its raw payloads;
and what the Quality screen shares with it (the issue as text, the issue actions)."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Static

from flowdeck.console.screens.base import (
    NOT_CONNECTED,
    QueryScreen,
    data_text,
    excerpt_lines,
    fmt_value,
    reason_text,
)
from flowdeck.console.screens.lineage import LineageScreen
from flowdeck.console.state import fmt_age, fmt_time
from flowdeck.console.widgets import Col, DeckTable, status_text

MUTE_SECONDS = 3600

def issue_text(issue: dict, app, now_ms: float, *, with_detail: bool = True) -> Text:
    """An issue as a few lines: title, severity and state (symbol + word), when, detail."""
    t = Text()
    t.append(f"#{issue.get('id')} {issue.get('title') or ''}\n", style="bold")
    t.append_text(status_text(issue.get("severity"), app))
    t.append("  ")
    t.append_text(status_text(issue.get("state"), app))
    t.append(f"  flow {issue.get('flow')} · {issue.get('kind')}")
    if issue.get("key"):
        t.append(f" · key {issue['key']}")
    if issue.get("source"):
        t.append(f" · source {issue['source']}")
    t.append("\n")
    last = issue.get("last_ms")
    t.append(
        f"seen {issue.get('count', 0)}× · first {fmt_time(issue.get('first_ms'), True)}"
        f" · last {fmt_time(last)} ({fmt_age(last, now_ms)} ago)"
    )
    if issue.get("actor") and issue.get("state") != "open":
        t.append(
            f" · {issue.get('state')} by {issue['actor']} at {fmt_time(issue.get('updated_ms'))}"
        )
    if issue.get("muted_until_ms"):
        t.append(f" · muted until {fmt_time(issue['muted_until_ms'], True)}")
    t.append("\n")
    if with_detail and issue.get("detail"):
        parts = []
        reason = issue["detail"].get("reason") if issue.get("kind") == "anomaly" else None
        if isinstance(reason, dict):
            t.append("why ", style="dim")
            t.append_text(reason_text(reason, app))
            t.append("\n")
        for k, v in issue["detail"].items():
            if k == "reason" and isinstance(reason, dict):
                continue
            if isinstance(v, dict):
                v = ", ".join(f"{a}={fmt_value(b)}" for a, b in v.items())
            elif isinstance(v, list | tuple):
                v = "; ".join(fmt_value(x) for x in v)
            elif k == "ts" and isinstance(v, int | float):
                v = fmt_time(v)
            parts.append(f"{k} {fmt_value(v)}")
        t.append("detail ", style="dim")
        t.append(" · ".join(parts) + "\n")
    t.append(
        f"{len(issue.get('record_ids') or [])} record(s) · "
        f"{len(issue.get('raw_ids') or [])} raw payload(s)",
        style="dim",
    )
    return t


class IssueActions:
    """Acknowledge / resolve / mute the issue a screen has selected (mixed into screens).

    The screen it is mixed into provides ``selected_issue() -> dict | None``.
    """

    def _act_on_issue(self, action: str, confirm: str | None = None, **params: Any) -> None:
        issue = self.selected_issue()
        if issue is None:
            self.notify("no issue selected", severity="warning")
            return
        if confirm:
            confirm = confirm.format(id=issue["id"], title=issue.get("title") or "")
        self.app.operator_action(action, issue_id=issue["id"], confirm=confirm, **params)

    def action_ack(self) -> None:
        self._act_on_issue("ack_issue")

    def action_resolve(self) -> None:
        self._act_on_issue("resolve_issue", confirm="Resolve issue #{id}? {title}")

    def action_mute(self) -> None:
        self._act_on_issue(
            "mute_issue", seconds=MUTE_SECONDS, confirm="Mute issue #{id} for 1 hour? {title}"
        )


def issue_bindings(screen: str) -> list[Binding]:
    """The keys of ``IssueActions`` for one screen: ids ``<screen>.ack`` / ``.resolve`` /
    ``.mute``, so each screen's can be remapped on its own."""
    return [
        Binding("a", "ack", "Acknowledge", id=f"{screen}.ack"),
        Binding("x", "resolve", "Resolve", id=f"{screen}.resolve"),
        Binding("m", "mute", "Mute 1h", id=f"{screen}.mute"),
    ]


class IssueScreen(IssueActions, QueryScreen):
    """One issue: its detail, the records it concerns and excerpts of its raw payloads."""

    TITLE = "Issue"
    BINDINGS = [
        *issue_bindings("issue"),
        Binding("enter", "open_record", "Lineage", id="issue.open_lineage"),
        Binding("r", "reload", "Reload", id="issue.reload"),
    ]

    def __init__(self, issue_id: int) -> None:
        super().__init__()
        self.issue_id = int(issue_id)
        self.data: dict | None = None

    def compose_body(self) -> ComposeResult:
        yield Static(id="issue-head")
        yield Static(id="records-title", classes="panel-title")
        yield DeckTable(
            [
                Col("key", "Key", 8, priority=9),
                Col("ts_ms", "Time", 8, lambda v, r: fmt_time(v), priority=8),
                Col(
                    "data",
                    "Data",
                    48,
                    lambda v, r: data_text(
                        v, skip=(r.get("_keyfield"),), first=r.get("_metrics") or ()
                    ),
                    priority=7,
                ),
                Col(
                    "quality",
                    "Quality",
                    7,
                    lambda v, r: "-" if v is None else f"{v:.2f}",
                    priority=6,
                ),
                Col("flags", "Flags", 24, lambda v, r: ", ".join(v or []) or "-", priority=4),
            ],
            default_sort="ts_ms",
            reverse=True,
            id="records",
        )
        yield Static(id="raw-title", classes="panel-title")
        with VerticalScroll(id="raw-pane"):
            yield Static(id="raw-text")

    async def fetch(self):
        return await self.app.control.query("issue", issue_id=self.issue_id)

    def loaded(self, value) -> None:
        self.data = value

    def render_loaded(self) -> None:
        self._render_loaded()

    def issue(self) -> dict | None:
        """The issue as the live snapshot has it, else as last loaded."""
        for i in self.app.state.issues():
            if i.get("id") == self.issue_id:
                return i
        return (self.data or {}).get("issue")

    def selected_issue(self) -> dict | None:
        return self.issue()

    def draw(self) -> None:
        issue = self.issue()
        head = Text()
        if self.app.control is None:
            head.append(
                f"{NOT_CONNECTED} — records and raw payloads need a connection to an engine\n"
            )
        elif self.loading:
            head.append("loading records and raw payloads…\n")
        elif self.error:
            head.append(f"✖ {self.error}\n")
        head.append_text(
            issue_text(issue, self.app, self.app.state.now_ms)
            if issue
            else Text(f"issue #{self.issue_id}", style="bold")
        )
        self.query_one("#issue-head", Static).update(head)
        n_rec = len((self.data or {}).get("records") or [])
        self.query_one("#records-title", Static).update(
            Text.assemble(
                ("Records ", "bold"),
                (f"{n_rec}" if self.data else "-"),
                ("   enter lineage · a ack · x resolve · m mute · esc back", "dim"),
            )
        )
        n_raw = len((self.data or {}).get("raw") or [])
        self.query_one("#raw-title", Static).update(
            Text.assemble(("Raw payloads ", "bold"), (f"{n_raw}" if self.data else "-"))
        )
        if self.data is None:
            self.query_one("#raw-text", Static).update(Text(""))

    def _render_loaded(self) -> None:
        if self.data is None:
            return
        issue = self.data.get("issue") or {}
        flow = self.app.state.flows.get(issue.get("flow") or "", {}) or {}
        keyfield, metrics = flow.get("key_field"), flow.get("metrics") or []
        rows = [
            {**r, "_key": r.get("id", i), "_keyfield": keyfield, "_metrics": metrics}
            for i, r in enumerate(self.data.get("records") or [])
        ]
        self.query_one("#records", DeckTable).set_rows(rows)
        t = Text()
        width = max(40, self.size.width - 8)
        raws = self.data.get("raw") or []
        if not raws:
            t.append("no raw payloads kept for this issue", style="dim")
        for raw in raws:
            t.append(f"#{raw.get('id')} {raw.get('source')}", style="bold")
            t.append(
                f" · fetched {fmt_time(raw.get('fetched_ms'), True)}"
                f" · {raw.get('size')} bytes · {raw.get('content_type') or '-'}"
            )
            if raw.get("status_code") is not None:
                t.append(f" · HTTP {raw['status_code']}")
            if raw.get("truncated"):
                t.append(" · truncated")
            t.append("\n")
            for line in excerpt_lines(raw.get("text"), lines=4, width=width):
                t.append(f"    {line}\n", style="dim")
        self.query_one("#raw-text", Static).update(t)

    def on_deck_table_row_selected(self, event: DeckTable.RowSelected) -> None:
        if event.table.id == "records":
            event.stop()
            self.action_open_record()

    def action_open_record(self) -> None:
        rec = self.query_one("#records", DeckTable).selected()
        if rec is None:
            self.notify("no record selected", severity="warning")
            return
        self.app.push_screen(LineageScreen(rec["flow"], rec["key"], rec["ts_ms"]))
