"""Quality: open issues (acknowledge, resolve, mute, drill in) and the quarantine browser.

The upper half lists the quality issues, most severe and most recent first.
The lower half shows the highlighted issue's detail, or (``tab``) the
quarantine: payload items the pipeline set aside, with the reason. ``enter``
opens an issue's records and raw payloads (``IssueScreen``) or a quarantined
item's raw payload (``RawScreen``); ``R`` replays a flow's quarantine through
the current pipeline. Actions go through ``app.operator_action`` so they are
confirmed, recorded and toasted the same way everywhere.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.widgets import ContentSwitcher, Static

from flowdeck.console.screens.lineage import (
    NOT_CONNECTED,
    LineageScreen,
    QueryScreen,
    ViewScreen,
    data_text,
    excerpt_lines,
    fmt_value,
)
from flowdeck.console.state import SEVERITY_ORDER, fmt_age, fmt_time
from flowdeck.console.widgets import Col, DeckTable, status_text

MUTE_SECONDS = 3600


def issue_sort_key(issue: dict) -> tuple:
    """Most severe first, then most recent, then newest id (stable on ties)."""
    return (
        SEVERITY_ORDER.get(issue.get("severity") or "", 9),
        -(issue.get("last_ms") or 0),
        -(issue.get("id") or 0),
    )


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
        for k, v in issue["detail"].items():
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


ISSUE_BINDINGS = [
    Binding("a", "ack", "Acknowledge", id="ack_issue"),
    Binding("x", "resolve", "Resolve", id="resolve_issue"),
    Binding("m", "mute", "Mute 1h", id="mute_issue"),
]


class QualityScreen(IssueActions, ViewScreen):
    """Issues above; the selected issue's detail or the quarantine browser below."""

    TITLE = "Quality"
    BINDINGS = [
        *ISSUE_BINDINGS,
        Binding("enter", "open", "Open", id="open_item"),
        Binding("tab", "toggle_lower", "Quarantine", id="toggle_quarantine"),
        Binding("v", "toggle_lower", "Quarantine", show=False, id="toggle_quarantine_v"),
        Binding("R", "replay", "Replay quarantine", id="replay_quarantine"),
    ]

    DEFAULT_CSS = """
    QualityScreen #issues { height: 1fr; }
    QualityScreen #lower { height: 1fr; border-top: solid $panel; }
    QualityScreen #issue-detail { height: 1fr; padding: 0 1; }
    QualityScreen #quarantine-pane { height: 1fr; }
    QualityScreen #quarantine { height: 1fr; }
    QualityScreen #quarantine-detail { height: auto; max-height: 4; padding: 0 1;
                                       color: $text-muted; }
    QualityScreen .panel-title { height: 1; }
    """

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.lower = "detail"  # or "quarantine"
        self._active_table = "issues"

    def compose_body(self) -> ComposeResult:
        now = lambda: self.app.state.now_ms  # noqa: E731
        yield Static(id="issues-title", classes="panel-title")
        yield DeckTable(
            [
                Col("id", "#", 4, priority=5),
                Col(
                    "_sev",
                    "Severity",
                    10,
                    lambda v, r: status_text(r.get("severity"), self.app),
                    priority=10,
                ),
                Col("state", "State", 14, lambda v, r: status_text(v, self.app), priority=9),
                Col("flow", "Flow", 8, priority=7),
                Col("kind", "Kind", 10, priority=4),
                Col("count", "Count", 5, priority=3),
                Col("last_ms", "Age", 5, lambda v, r: fmt_age(v, now()), priority=6),
                Col("title", "Title", 40, priority=8),
            ],
            default_sort="_sev",
            id="issues",
        )
        yield Static(id="lower-title", classes="panel-title")
        with ContentSwitcher(initial="issue-detail", id="lower"):
            with VerticalScroll(id="issue-detail"):
                yield Static(id="issue-detail-text")
            with Vertical(id="quarantine-pane"):
                yield DeckTable(
                    [
                        Col("flow", "Flow", 8, priority=7),
                        Col("source", "Source", 8, priority=8),
                        Col("stage", "Stage", 9, priority=4),
                        Col("reason", "Reason", 12, priority=10),
                        Col("message", "Message", 34, priority=9),
                        Col("raw_id", "Raw", 4, priority=5),
                        Col("created_ms", "Age", 5, lambda v, r: fmt_age(v, now()), priority=6),
                    ],
                    default_sort="created_ms",
                    reverse=True,
                    id="quarantine",
                )
                yield Static(id="quarantine-detail")

    # ---- rows

    def _issue_rows(self) -> list[dict]:
        return [{**i, "_key": i["id"], "_sev": issue_sort_key(i)} for i in self.app.state.issues()]

    def _quarantine_rows(self) -> list[dict]:
        return [{**q, "_key": q["id"]} for q in self.app.state.snapshot.get("quarantine", [])]

    @property
    def issues_table(self) -> DeckTable:
        return self.query_one("#issues", DeckTable)

    @property
    def quarantine_table(self) -> DeckTable:
        return self.query_one("#quarantine", DeckTable)

    def selected_issue(self) -> dict | None:
        return self.issues_table.selected()

    def focus_table(self) -> DeckTable | None:
        focused = self.focused
        if isinstance(focused, DeckTable):
            return focused
        if self.lower == "quarantine" and self._active_table == "quarantine":
            return self.quarantine_table
        return self.issues_table

    def on_descendant_focus(self, event) -> None:
        if isinstance(event.widget, DeckTable):
            self._active_table = event.widget.id or "issues"

    # ---- drawing

    def draw(self) -> None:
        state = self.app.state
        issues = state.issues()
        self.issues_table.set_rows(self._issue_rows())
        self.quarantine_table.set_rows(self._quarantine_rows())
        by_state: dict[str, int] = {}
        for i in issues:
            by_state[i.get("state")] = by_state.get(i.get("state"), 0) + 1
        title = Text("Issues ", style="bold")
        if not issues:
            title.append("none open" if state.connected else NOT_CONNECTED, style="dim")
        for name in ("open", "acknowledged", "muted"):
            if by_state.get(name):
                title.append_text(status_text(name, self.app))
                title.append(f" {by_state[name]}  ")
        title.append("  a ack · x resolve · m mute 1h · enter records & raw", style="dim")
        self.query_one("#issues-title", Static).update(title)
        self._draw_lower()

    def _draw_lower(self) -> None:
        state = self.app.state
        lower_title = self.query_one("#lower-title", Static)
        if self.lower == "quarantine":
            rows = state.snapshot.get("quarantine", [])
            flows = sorted({q["flow"] for q in rows})
            t = Text("Quarantine ", style="bold")
            t.append(f"{len(rows)} open item(s)" + (f" in {', '.join(flows)}" if flows else ""))
            t.append("   enter raw payload · R replay flow · tab issue detail", style="dim")
            lower_title.update(t)
            q = self.quarantine_table.selected()
            detail = Text()
            if q is not None:
                detail.append(f"{q.get('reason')}: ", style="bold")
                detail.append(f"{q.get('message')}\n")
                rec = q.get("record") or {}
                detail.append(
                    f"item {q.get('item')} of raw #{q.get('raw_id')} · "
                    f"{fmt_time(q.get('created_ms'), True)} · {data_text(rec)}"
                )
            self.query_one("#quarantine-detail", Static).update(detail)
        else:
            lower_title.update(
                Text.assemble(("Selected issue", "bold"), ("   tab quarantine browser", "dim"))
            )
            issue = self.issues_table.selected()
            text = (
                issue_text(issue, self.app, state.now_ms)
                if issue
                else Text("no issue selected", style="dim")
            )
            self.query_one("#issue-detail-text", Static).update(text)

    def on_deck_table_row_highlighted(self, event: DeckTable.RowHighlighted) -> None:
        if event.table.id in ("issues", "quarantine"):
            self._draw_lower()

    def on_deck_table_row_selected(self, event: DeckTable.RowSelected) -> None:
        if event.table.id == "issues":
            event.stop()
            self._open_issue()
        elif event.table.id == "quarantine":
            event.stop()
            self._open_raw()

    # ---- actions

    def action_toggle_lower(self) -> None:
        self.lower = "detail" if self.lower == "quarantine" else "quarantine"
        switcher = self.query_one("#lower", ContentSwitcher)
        switcher.current = "quarantine-pane" if self.lower == "quarantine" else "issue-detail"
        (self.quarantine_table if self.lower == "quarantine" else self.issues_table).focus()
        self._draw_lower()

    def action_open(self) -> None:
        if self.lower == "quarantine" and self._active_table == "quarantine":
            self._open_raw()
        else:
            self._open_issue()

    def _open_issue(self) -> None:
        issue = self.issues_table.selected()
        if issue is None:
            self.notify("no issue selected", severity="warning")
            return
        self.app.push_screen(IssueScreen(issue["id"]))

    def _open_raw(self) -> None:
        q = self.quarantine_table.selected()
        if q is None:
            self.notify("no quarantined item selected", severity="warning")
            return
        self.app.push_screen(
            RawScreen(
                q["raw_id"],
                note=f"quarantined by {q.get('stage')}: {q.get('reason')}: {q.get('message')}",
            )
        )

    def action_replay(self) -> None:
        flow = None
        if self.lower == "quarantine":
            q = self.quarantine_table.selected()
            flow = q["flow"] if q else None
        else:
            issue = self.issues_table.selected()
            if issue is not None and issue.get("kind") == "quarantine":
                flow = issue["flow"]
        if flow is None:
            self.notify(
                "select a quarantined item first (tab opens the quarantine browser)",
                severity="warning",
            )
            return
        n = sum(1 for q in self.app.state.snapshot.get("quarantine", []) if q["flow"] == flow)
        self.app.operator_action(
            "replay_quarantine",
            flow=flow,
            confirm=f"Replay the quarantine of {flow} ({n} open item(s)) through the current "
            "pipeline?",
        )


class IssueScreen(IssueActions, QueryScreen):
    """One issue: its detail, the records it concerns and excerpts of its raw payloads."""

    TITLE = "Issue"
    BINDINGS = [
        *ISSUE_BINDINGS,
        Binding("enter", "open_record", "Lineage", id="open_lineage"),
        Binding("r", "reload", "Reload", id="reload_issue"),
    ]

    DEFAULT_CSS = """
    IssueScreen #issue-head { height: auto; max-height: 10; padding: 0 1; background: $boost; }
    IssueScreen #records { height: 1fr; }
    IssueScreen #raw-pane { height: 1fr; padding: 0 1; border-top: solid $panel; }
    IssueScreen .panel-title { height: 1; }
    """

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


class RawScreen(QueryScreen):
    """One raw payload as fetched, scrollable; ``y`` copies its text."""

    TITLE = "Raw payload"
    BINDINGS = [
        Binding("y", "copy", "Copy payload", id="copy"),
        Binding("r", "reload", "Reload", id="reload_raw"),
    ]

    DEFAULT_CSS = """
    RawScreen #raw-head { height: auto; padding: 0 1; background: $boost; }
    RawScreen #raw-scroll { height: 1fr; padding: 0 1; }
    """

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
