"""Sources: every source of every flow, its health, latency, errors and failover role.

A flow's enabled sources form a failover chain ordered by priority number: the
lowest is the primary, the others are failovers in order. The engine fetches every
enabled source each run and the resolver prefers the lowest priority number, so
while the primary is down the first healthy failover is the one serving values.
"""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Static

from flowdeck.console.screens.base import DeckScreen
from flowdeck.console.state import fmt_age, fmt_num, fmt_time
from flowdeck.console.widgets import Col, DeckTable, status_text

OFF_RANK = 99


def role_word(rank: int | None) -> str:
    """0 → primary, k → failover #k, disabled → off."""
    if rank is None or rank >= OFF_RANK:
        return "off"
    return "primary" if rank == 0 else f"failover #{rank}"


def failover_ranks(sources: dict[str, dict]) -> dict[str, int]:
    """Position of each source in its flow's failover chain (disabled ones are off)."""
    enabled = sorted(
        (s.get("priority", 1), name) for name, s in sources.items() if s.get("enabled", True)
    )
    ranks = {name: OFF_RANK for name in sources}
    ranks.update({name: i for i, (_, name) in enumerate(enabled)})
    return ranks


def _ms(v) -> str:
    return "-" if v is None else f"{v:.0f}"


def _first_line(text: str | None) -> str:
    return (text or "").splitlines()[0] if text else "-"


class SourceDetail(Static):
    """The selected source in full: counts, latency, the whole last error, its chain."""

    def show(self, row: dict | None) -> None:
        app = self.app
        state = app.state
        if row is None:
            self.update(Text("no source selected", style="dim"))
            return
        v = app.theme_variables
        now = state.now_ms
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column(overflow="fold")
        title = Text.assemble(
            (f" {row['flow']}/{row['source']} ", "bold reverse"),
            " ",
            status_text(row["state"], app),
            "  ",
            (
                f"{row['role_word']} · priority {row.get('priority')} · {row.get('kind') or '-'}",
                "dim",
            ),
        )
        grid.add_row(
            "Requests",
            f"{fmt_num(row.get('requests', 0))} · "
            f"{fmt_num(row.get('errors', 0))} errors "
            f"({(row.get('error_rate') or 0) * 100:.1f}%) · "
            f"{row.get('consecutive_failures', 0)} consecutive failures · "
            f"{row.get('unchanged', 0)} unchanged (304)",
        )
        grid.add_row(
            "Latency",
            f"p50 {_ms(row.get('latency_p50_ms'))} ms · p95 {_ms(row.get('latency_p95_ms'))} ms",
        )
        ok = row.get("last_ok_ms")
        grid.add_row(
            "Last success", f"{fmt_time(ok, True)} ({fmt_age(ok, now)} ago)" if ok else "never"
        )
        err_ms = row.get("last_error_ms")
        err = row.get("last_error")
        if err:
            grid.add_row(
                "Last error",
                Text.assemble(
                    (f"{fmt_time(err_ms, True)} ({fmt_age(err_ms, now)} ago) " if err_ms else ""),
                    (err, v.get("error", "")),
                ),
            )
        else:
            grid.add_row("Last error", Text("none", style="dim"))
        grid.add_row("Chain", self._chain(row["flow"]))
        outer = Table.grid(expand=True)
        outer.add_row(title)
        outer.add_row(grid)
        self.update(outer)

    def _chain(self, flow: str) -> Text:
        """primary → failover #1 → …, each with its state, and which one serves now."""
        srcs = self.app.state.flows.get(flow, {}).get("sources", {})
        rows = {r["source"]: r for r in self.app.state.sources() if r["flow"] == flow}
        ranks = failover_ranks(srcs)
        chain = sorted((r, n) for n, r in ranks.items() if r < OFF_RANK)
        t = Text()
        serving = None
        for i, (rank, name) in enumerate(chain):
            st = rows[name]["state"]
            if serving is None and st == "up":
                serving = name
            if i:
                t.append(" → ")
            t.append(status_text(st, self.app))
            t.append(f" {name} ({role_word(rank)})")
        if serving is not None and chain and serving != chain[0][1]:
            t.append(f"  · serving from {serving}", style="bold")
        off = [n for n, r in ranks.items() if r >= OFF_RANK]
        if off:
            t.append(f"  · disabled: {', '.join(sorted(off))}", style="dim")
        return t


class SourcesScreen(DeckScreen):
    TITLE = "Sources"
    BINDINGS = [
        Binding("r", "run_now", "Run flow now", id="run_now"),
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
                Col("latency_p50_ms", "p50 ms", 6, lambda v, r: _ms(v), priority=5),
                Col("latency_p95_ms", "p95 ms", 6, lambda v, r: _ms(v), priority=6),
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
