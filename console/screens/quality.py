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

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.widgets import ContentSwitcher, Static

from flowdeck.console.screens.base import NOT_CONNECTED, ViewScreen, data_text
from flowdeck.console.screens.issue import IssueActions, IssueScreen, issue_bindings, issue_text
from flowdeck.console.screens.raw import RawScreen
from flowdeck.console.state import SEVERITY_ORDER, fmt_age, fmt_time
from flowdeck.console.widgets import Col, DeckTable, status_text


def issue_sort_key(issue: dict) -> tuple:
    """Most severe first, then most recent, then newest id (stable on ties)."""
    return (
        SEVERITY_ORDER.get(issue.get("severity") or "", 9),
        -(issue.get("last_ms") or 0),
        -(issue.get("id") or 0),
    )


class QualityScreen(IssueActions, ViewScreen):
    """Issues above; the selected issue's detail or the quarantine browser below."""

    TITLE = "Quality"
    BINDINGS = [
        *issue_bindings("quality"),
        Binding("enter", "open", "Open", id="quality.open"),
        Binding("tab", "toggle_lower", "Quarantine", id="quality.quarantine"),
        Binding("v", "toggle_lower", "Quarantine", show=False, id="quality.quarantine_alt"),
        Binding("R", "replay", "Replay quarantine", id="quality.replay"),
    ]

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
