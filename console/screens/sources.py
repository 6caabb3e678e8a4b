"""Sources: every source of every flow, its health, latency, errors and failover role.

A flow's enabled sources form a failover chain ordered by priority number: the
lowest is the primary, the others are failovers in order. The engine fetches every
enabled source each run and the resolver prefers the lowest priority number, so
while the primary is down the first healthy failover is the one serving values.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding

from flowdeck.console.screens.base import DeckScreen
from flowdeck.console.state import fmt_age, fmt_num
from flowdeck.console.widgets import Col, DeckTable, SourceDetail, status_text
from flowdeck.console.widgets.source_detail import OFF_RANK, failover_ranks, fmt_ms, role_word


def _first_line(text: str | None) -> str:
    return (text or "").splitlines()[0] if text else "-"


class SourcesScreen(DeckScreen):
    TITLE = "Sources"
    BINDINGS = [
        Binding("r", "run_now", "Run flow now", id="sources.run_now"),
    ]

    def compose_body(self) -> ComposeResult:
        now = lambda: self.app.state.now_ms  # noqa: E731
        yield DeckTable(
            [
                Col("flow", "Flow", 8, priority=9),
                Col("source", "Source", 9, priority=9),
                Col("role", "Role", 11, lambda v, r: r["role_word"], priority=7),
                Col("state", "State", 10, lambda v, r: status_text(v, self.app), priority=9),
                Col("kind", "Kind", 9, priority=1),
                Col("priority", "Prio", 4, priority=2),
                Col("latency_p50_ms", "p50 ms", 6, lambda v, r: fmt_ms(v), priority=5),
                Col("latency_p95_ms", "p95 ms", 6, lambda v, r: fmt_ms(v), priority=6),
                Col("error_rate", "Err %", 5, lambda v, r: f"{(v or 0) * 100:.1f}", priority=7),
                Col("requests", "Reqs", 5, lambda v, r: fmt_num(v), priority=4),
                Col("consecutive_failures", "Fails", 5, priority=8),
                Col(
                    "last_ok_ms",
                    "Last ok",
                    8,
                    lambda v, r: fmt_age(v, now()) + " ago" if v else "never",
                    priority=6,
                ),
                Col("last_error", "Last error", 24, lambda v, r: _first_line(v), priority=3),
            ],
            default_sort="flow",
            id="sources",
        )
        yield SourceDetail(id="source-detail", classes="detail")

    def _rows(self) -> list[dict]:
        state = self.app.state
        ranks = {name: failover_ranks(f.get("sources", {})) for name, f in state.flows.items()}
        rows = []
        for s in state.sources():
            rank = ranks[s["flow"]].get(s["source"], OFF_RANK)
            rows.append(
                {
                    **s,
                    "_key": f"{s['flow']}/{s['source']}",
                    "role": rank,
                    "role_word": role_word(rank),
                }
            )
        rows.sort(key=lambda r: (r["flow"], r["role"], r["source"]))
        return rows

    def refresh_view(self) -> None:
        table = self.query_one(DeckTable)
        table.set_rows(self._rows())
        self.query_one(SourceDetail).show(table.selected())
        super().refresh_view()

    def on_deck_table_row_highlighted(self, event) -> None:
        self.query_one(SourceDetail).show(self.query_one(DeckTable).selected())

    def action_run_now(self) -> None:
        row = self.query_one(DeckTable).selected()
        if row is None:
            self.notify("no source selected", severity="warning")
            return
        self.app.operator_action("run_now", flow=row["flow"])
