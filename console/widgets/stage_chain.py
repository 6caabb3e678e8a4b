"""The selected flow's stage chain, left to right, with live counts (Overview)."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from flowdeck.console.state import fmt_num, maintenance_line
from flowdeck.pipeline.model import STAGE_TITLES, STAGES


class StageChain(Static):
    """The selected flow's stages left to right: in → out, rejected, rate.

    Drawn as lines of text in equal columns, not as a Rich table: a table is measured
    and rendered again on every refresh, and on the live Overview (ten refreshes a
    second) that was two fifths of the console's drawing. The height is fixed (title,
    five rows, legend), so a refresh never needs a new layout."""

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
        maint = maintenance_line(f.get("maintenance"))
        if maint:  # a window in force says so first: it explains idle stages
            title = Text.assemble((f" {name} ", "bold reverse"), "  ",
                                  (maint, f"bold {v.get('secondary', '')}"))
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
