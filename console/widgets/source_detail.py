"""The selected source in full, and the failover chain it belongs to (Sources)."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from flowdeck.console.state import fmt_age, fmt_num, fmt_time
from flowdeck.console.widgets.cells import status_text

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


def fmt_ms(v) -> str:
    return "-" if v is None else f"{v:.0f}"


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
            f"p50 {fmt_ms(row.get('latency_p50_ms'))} ms · p95 {fmt_ms(row.get('latency_p95_ms'))} ms",
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
