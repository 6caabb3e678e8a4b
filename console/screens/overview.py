"""Overview: every flow, its state, its stage chain with live counts, throughput."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Static

from flowdeck.console.screens.base import DeckScreen, FlowActions
from flowdeck.console.state import fmt_age, fmt_num, fmt_time
from flowdeck.console.widgets import (
    Col,
    DeckTable,
    StageChain,
    flow_state_text,
    sparkline,
    status_text,
)


class OverviewScreen(FlowActions, DeckScreen):
    TITLE = "Overview"
    BINDINGS = [
        Binding("r", "run_now", "Run now", id="overview.run_now"),
        Binding("space", "toggle_flow", "Pause/resume flow", id="overview.toggle_flow"),
    ]

    def compose_body(self) -> ComposeResult:
        now = lambda: self.app.state.now_ms  # noqa: E731
        yield DeckTable([
            Col("flow", "Flow", 10, priority=9),
            Col("state", "State", 11, lambda v, r: flow_state_text(v, r["maint"], self.app),
                priority=9),
            Col("spark", "Stored/run", 20, priority=4),
            Col("rate", "Rate /s", 8, lambda v, r: f"{v:.1f}", priority=6),
            Col("stored", "Stored", 8, lambda v, r: fmt_num(v), priority=8),
            Col("rejected", "Rejected", 8, lambda v, r: fmt_num(v), priority=5),
            Col("issues", "Issues", 6, priority=7),
            Col("runs", "Runs", 6, priority=3),
            Col("last_ms", "Last run", 9, lambda v, r: fmt_age(v, now()) + " ago"
                if v else "never", priority=6),
            Col("next_ms", "Next", 8, lambda v, r: fmt_time(v) if v else "-", priority=2),
        ], default_sort="flow", id="flows")
        yield StageChain(id="chain")
        yield Static("Recent events (info and above; all of them on the Events screen, 8)",
                     classes="panel-title")
        yield DeckTable([
            Col("time", "Time", 8, priority=8),
            Col("level", "Level", 10, lambda v, r: status_text(v, self.app), priority=7),
            Col("text", "What happened", None, priority=9),
        ], id="recent")

    def _rows(self) -> list[dict]:
        state = self.app.state
        open_by_flow: dict[str, int] = {}
        for i in state.issues():
            if i.get("state") in ("open", "acknowledged"):
                open_by_flow[i["flow"]] = open_by_flow.get(i["flow"], 0) + 1
        rows = []
        for name, f in state.flows.items():
            tot = f["totals"]
            last = f.get("last_run") or {}
            rows.append({
                "_key": name, "flow": name, "state": f.get("state"),
                "maint": state.maintenance(name),
                "spark": sparkline(state.throughput_series(name), 18),
                "rate": state.rates.get(name, {}).get("store", 0.0),
                "stored": tot["store"]["out"],
                "rejected": sum(tot[s]["rejected"] for s in tot),
                "issues": open_by_flow.get(name, 0), "runs": f.get("runs", 0),
                "last_ms": last.get("finished_ms"), "next_ms": f.get("next_run_ms"),
            })
        return rows

    def refresh_view(self) -> None:
        table = self.query_one("#flows", DeckTable)
        table.set_rows(self._rows())
        sel = table.selected()
        self.query_one(StageChain).show(sel["flow"] if sel else None)
        recent = [e for e in self.app.state.events if e["level"] != "debug"][-50:]
        self.query_one("#recent", DeckTable).set_rows([
            {"_key": str(e.get("seq") or i), "time": fmt_time((e.get("ts") or 0) * 1000),
             "level": e["level"], "text": e["text"]}
            for i, e in enumerate(reversed(recent))])
        super().refresh_view()

    def on_deck_table_row_highlighted(self, event) -> None:
        if event.table.id == "flows":
            sel = event.table.selected()
            self.query_one(StageChain).show(sel["flow"] if sel else None)

    def _selected_flow(self) -> str | None:
        sel = self.query_one("#flows", DeckTable).selected()
        return sel["flow"] if sel else None
