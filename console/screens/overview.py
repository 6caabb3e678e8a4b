"""Overview: every flow, its state, its stage chain with live counts, throughput."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Static

from flowdeck.console.screens.base import DeckScreen, FlowActions
from flowdeck.console.state import fmt_age, fmt_num, fmt_time
from flowdeck.console.widgets import Col, DeckTable, sparkline, status_text
from flowdeck.pipeline.model import STAGE_TITLES, STAGES


class StageChain(Static):
    """The selected flow's stages left to right: in → out, rejected, rate.

    Drawn as lines of text in equal columns, not as a Rich table: a table is measured
    and rendered again on every refresh, and on the live Overview (ten refreshes a
    second) that was two fifths of the console's drawing. The height is fixed (title,
    five rows, legend), so a refresh never needs a new layout."""

    DEFAULT_CSS = "StageChain { height: 8; padding: 0 1; }"

    _shown: Text | None = None
    _flow: str | None = None

    def on_resize(self) -> None:
        self.show(self._flow)

    def _row(self, cells: list[Text], width: int) -> Text:
        n = len(cells)
        gap = 1
        colw = max(1, (width - gap * (n - 1)) // n)
        line = Text(no_wrap=True, overflow="ellipsis")
        for i, cell in enumerate(cells):
            w = colw if i < n - 1 else max(1, width - (colw + gap) * (n - 1))
            cell = cell.copy()
            cell.truncate(w, overflow="ellipsis", pad=True)
            line.append_text(cell)
            if i < n - 1:
                line.append(" " * gap)
        return line

    def show(self, name: str | None) -> None:
        self._flow = name
        app = self.app
        state = app.state
        f = state.flows.get(name or "")
        if f is None:
            self._set(Text("no flow selected", style="dim"))
            return
        rates = state.rates.get(name, {})
        last = (f.get("last_run") or {}).get("stages", {})
        v = app.theme_variables
        heads, totals, lasts, rejects, rate_row = [], [], [], [], []
        for st in STAGES:
            tot = f["totals"][st]
            heads.append(Text(STAGE_TITLES[st], style=f"bold {v.get('primary', '')}"))
            totals.append(Text(f"{fmt_num(tot['in'])}→{fmt_num(tot['out'])}"))
            lr = last.get(st, {})
            lasts.append(Text(f"last {fmt_num(lr.get('out'))} {lr.get('ms', 0):.0f}ms",
                              style="dim"))
            bad = tot["rejected"] + tot["errors"]
            drop = tot.get("dropped", 0)
            rejects.append(Text(f"✖{fmt_num(bad)} ⇣{fmt_num(drop)}",
                                style=v.get("error", "") if bad else "dim"))
            rate_row.append(Text(f"{rates.get(st, 0.0):.1f}/s"))
        width = self.content_region.width or 100
        title = Text.assemble((f" {name} ", "bold reverse"), "  ",
                              f.get("description", ""), "  ", (f.get("schedule", ""), "dim"))
        title.truncate(width, overflow="ellipsis")
        legend = Text("in→out · ✖ rejected+errors · ⇣ duplicates dropped · rate this "
                      "interval · last run", style="dim")
        legend.truncate(width, overflow="ellipsis")
        lines = [title] + [self._row(r, width) for r in
                           (heads, totals, rejects, rate_row, lasts)] + [legend]
        self._set(Text("\n").join(lines))

    def _set(self, text: Text) -> None:
        if text != self._shown:  # unchanged counts: nothing to draw
            self._shown = text
            self.update(text)


class OverviewScreen(FlowActions, DeckScreen):
    TITLE = "Overview"
    BINDINGS = [
        Binding("r", "run_now", "Run now", id="run_now"),
        Binding("space", "toggle_flow", "Pause/resume flow", id="toggle_flow"),
    ]

    def compose_body(self) -> ComposeResult:
        now = lambda: self.app.state.now_ms  # noqa: E731
        yield DeckTable([
            Col("flow", "Flow", 10, priority=9),
            Col("state", "State", 11, lambda v, r: status_text(v, self.app), priority=9),
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
