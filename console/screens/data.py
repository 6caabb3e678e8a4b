"""Data: the latest value of every key of a flow and the history of the highlighted one.

``DataScreen`` shows one flow at a time (``[`` / ``]`` cycle flows): the latest
row per key with every metric of the flow, quality, anomaly score, sources and
flags, and below it a history chart of the highlighted key's chosen metric
(``k`` cycles the metric), loaded through the control. ``enter`` opens the
record's lineage (``LineageScreen``).
"""

from __future__ import annotations

from contextlib import suppress
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.color import Color, ColorParseError
from textual.containers import Vertical
from textual.css.query import NoMatches
from textual.widgets import Static
from textual_plotext import PlotextPlot

from flowdeck.console.screens.base import (
    NOT_CONNECTED,
    REASON_KEY,
    ViewScreen,
    anomaly_text,
    fmt_value,
    reason_text,
)
from flowdeck.console.screens.lineage import LineageScreen
from flowdeck.console.state import fmt_age, fmt_time
from flowdeck.console.widgets import Col, DeckTable, status_text

HISTORY_WINDOW_MS = 6 * 3600 * 1000


class DataScreen(ViewScreen):
    """Latest values of one flow, a history chart of the highlighted key, lineage on enter."""

    TITLE = "Data"
    BINDINGS = [
        Binding("left_square_bracket", "cycle_flow(-1)", "Prev flow", key_display="[",
                id="data.prev_flow"),
        Binding("right_square_bracket", "cycle_flow(1)", "Next flow", key_display="]",
                id="data.next_flow"),
        Binding("k", "cycle_metric", "Chart metric", id="data.cycle_metric"),
        Binding("enter", "open_lineage", "Lineage", id="data.open_lineage"),
    ]

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.flow: str | None = None
        self._metric_choice: dict[str, int] = {}  # flow -> index into its metrics
        self._cols_flow: str | None = None
        self._hist_target: tuple | None = None
        self._hist: dict[str, Any] = {"state": "idle"}

    def compose_body(self) -> ComposeResult:
        yield Static(id="flowbar")
        yield DeckTable(self._columns(None), default_sort="key", id="latest")
        with Vertical(id="history-pane"):
            yield Static(id="history-caption")
            yield PlotextPlot(id="history-plot")

    # ---- flows and metrics

    def _flows(self) -> list[str]:
        state = self.app.state
        names = list(state.flows)
        names += [n for n in state.snapshot.get("latest", {}) if n not in names]
        return names

    def _ensure_flow(self) -> str | None:
        flows = self._flows()
        if self.flow in flows:
            return self.flow
        if not flows:
            self.flow = None
            return None
        active = [n for n in flows if not self.app.state.flows.get(n, {}).get("paused")]
        self.flow = (active or flows)[0]
        return self.flow

    def metrics(self, flow: str | None) -> list[str]:
        if flow is None:
            return []
        f = self.app.state.flows.get(flow, {})
        metrics = list(f.get("metrics") or [])
        if not metrics:  # an older engine: every numeric field of the latest rows
            for r in self.app.state.snapshot.get("latest", {}).get(flow, []):
                for k, v in r.get("data", {}).items():
                    if isinstance(v, int | float) and not isinstance(v, bool) and k not in metrics:
                        metrics.append(k)
        return metrics

    def chart_metric(self) -> str | None:
        metrics = self.metrics(self.flow)
        if not metrics:
            return None
        return metrics[self._metric_choice.get(self.flow, 0) % len(metrics)]

    # ---- table

    def _columns(self, flow: str | None) -> list[Col]:
        cols = [
            Col("key", "Key", 10, priority=10),
            Col("ts_ms", "Time", 8, lambda v, r: fmt_time(v), priority=7),
        ]
        for i, m in enumerate(self.metrics(flow)):
            cols.append(
                Col(f"_m:{m}", m, max(8, len(m)), lambda v, r: fmt_value(v), priority=max(5, 9 - i))
            )
        cols += [
            Col("quality", "Quality", 7, lambda v, r: "-" if v is None else f"{v:.2f}", priority=8),
            Col(
                "anomaly_score",
                "Anomaly",
                16,
                lambda v, r: anomaly_text(v, r.get("anomalous"), self.app),
                priority=6,
            ),
            Col("sources", "Sources", 18, lambda v, r: ", ".join(v or []) or "-", priority=4),
            Col("flags", "Flags", 22, lambda v, r: ", ".join(v or []) or "-", priority=3),
        ]
        return cols

    def _rows(self, flow: str | None) -> list[dict]:
        if flow is None:
            return []
        metrics = self.metrics(flow)
        rows = []
        for r in self.app.state.snapshot.get("latest", {}).get(flow, []):
            data = r.get("data") or {}
            row = {
                "_key": r["key"],
                "key": r["key"],
                "ts_ms": r.get("ts_ms"),
                "quality": r.get("quality"),
                "anomaly_score": r.get("anomaly_score"),
                "anomalous": r.get("anomalous"),
                "sources": r.get("sources") or [],
                "flags": r.get("flags") or [],
                "data": data,
            }
            for m in metrics:
                row[f"_m:{m}"] = data.get(m)
            rows.append(row)
        return rows

    def _flowbar(self) -> Text:
        app = self.app
        state = app.state
        flows = self._flows()
        t = Text()
        t.append("Flow ", style="bold")
        if not flows:
            t.append("no flows yet" if state.connected else NOT_CONNECTED)
            return t
        for name in flows:
            if name == self.flow:
                t.append(f" ◆ {name} ", style="bold reverse")
            else:
                t.append(f"  {name} ", style="dim")
        f = state.flows.get(self.flow or "", {})
        t.append("  ")
        if f:
            t.append_text(status_text(f.get("state"), app))
            t.append("  ")
        info = state.latest_info(self.flow or "")
        t.append(f"{info['keys']} keys · newest {fmt_age(info['newest_ms'], state.now_ms)} ago",
                 style="dim")
        t.append("   [ ] flow · k metric · enter lineage", style="dim")
        return t

    def _show_plot(self, show: bool) -> None:
        self.query_one("#history-plot", PlotextPlot).display = show
        self.query_one("#history-pane").set_class(not show, "-collapsed")

    # ---- drawing

    def draw(self) -> None:
        flow = self._ensure_flow()
        table = self.query_one("#latest", DeckTable)
        rows = self._rows(flow)
        if flow != self._cols_flow:
            self._cols_flow = flow
            table.cols = self._columns(flow)
            if table.sort_key not in {c.key for c in table.cols}:
                table.sort_key, table.sort_reverse = "key", False
            table.set_rows(rows, force_columns=True)
            table.move_cursor(row=0, animate=False)
        else:
            table.set_rows(rows)
        self.query_one("#flowbar", Static).update(self._flowbar())
        self._maybe_load_history()
        self._draw_history()

    def on_deck_table_row_highlighted(self, event: DeckTable.RowHighlighted) -> None:
        if event.table.id == "latest":
            self._maybe_load_history()
            self._draw_history()

    def on_deck_table_row_selected(self, event: DeckTable.RowSelected) -> None:
        if event.table.id == "latest":
            event.stop()
            self.action_open_lineage()

    # ---- history

    def _target(self) -> tuple | None:
        row = self.query_one("#latest", DeckTable).selected()
        metric = self.chart_metric()
        if row is None or metric is None or self.flow is None:
            return None
        return (self.flow, row["key"], metric, row.get("ts_ms"))

    def _maybe_load_history(self) -> None:
        target = self._target()
        if target == self._hist_target:
            return
        self._hist_target = target
        if target is None:
            self._hist = {"state": "idle"}
            return
        if self.app.control is None:
            self._hist = {"state": "offline", "target": target}
            return
        self._hist = {"state": "loading", "target": target}
        self.run_worker(self._load_history(target), exclusive=True, group="history")

    async def _load_history(self, target: tuple) -> None:
        flow, key, metric, ts_ms = target
        since = max(0, int((ts_ms or self.app.state.now_ms) - HISTORY_WINDOW_MS))
        try:
            control = self.app.control
            points = await control.query(
                # The 1-minute roll-ups (the L3 layer), not every raw point of six hours.
                "history", flow=flow, key=key, metric=metric, since_ms=since, step_ms=60_000
            )
        except Exception as exc:  # shown in the caption, never raised into the app
            result = {"state": "error", "target": target, "error": str(exc)}
        else:
            result = {
                "state": "loaded",
                "target": target,
                "points": [(int(t), float(v)) for t, v in points or [] if v is not None],
                "flagged": await self._load_flagged(control, flow, key, metric, since),
            }
        if target == self._hist_target:
            self._hist = result
            with suppress(NoMatches):  # the screen went away while the query ran
                self._draw_history()

    async def _load_flagged(
        self, control: Any, flow: str, key: str, metric: str, since: int
    ) -> list:
        """The flagged points to mark on the chart: ``(ts_ms, value)``; none when the
        engine cannot say (an older one) or the query fails (the chart still draws)."""
        try:
            rows = await control.query(
                "anomalies", flow=flow, key=key, metric=metric, since_ms=since
            )
        except Exception:
            return []
        return [
            (int(t), float(v))
            for t, v, *_ in rows or []
            if isinstance(v, int | float) and not isinstance(v, bool)
        ]

    def _reason(self) -> dict | None:
        """The highlighted row's anomaly reason (a flagged latest value), if any."""
        row = self.query_one("#latest", DeckTable).selected()
        reason = ((row or {}).get("data") or {}).get(REASON_KEY)
        return reason if isinstance(reason, dict) else None

    def _set_caption(self, caption: Static, text: Text) -> None:
        """The chart caption, and under it why the highlighted row was flagged (if it was)."""
        reason = self._reason()
        if reason:
            text = Text.assemble(text, "\n", reason_text(reason, self.app))
        caption.update(text)

    def _draw_history(self) -> None:
        caption = self.query_one("#history-caption", Static)
        plot = self.query_one("#history-plot", PlotextPlot)
        h = self._hist
        metric = self.chart_metric()
        metrics = self.metrics(self.flow)
        hint = f"  (k: next of {len(metrics)} metrics)" if len(metrics) > 1 else ""
        st = h.get("state")
        if st == "offline":
            _, key, metric, _ = h["target"]
            self._set_caption(
                caption,
                Text(
                    f"History of {key} {metric}: {NOT_CONNECTED} — "
                    "history needs a connection to an engine"
                ),
            )
            self._show_plot(False)
            return
        if st == "idle":
            self._set_caption(caption, Text("History: select a row" + hint, style="dim"))
            self._show_plot(False)
            return
        _, key, metric, _ = h["target"]
        if st == "loading":
            self._set_caption(caption, Text(f"History of {key} {metric}: loading…{hint}"))
            return
        if st == "error":
            self._set_caption(
                caption, Text(f"History of {key} {metric}: ✖ failed: {h['error']}")
            )
            self._show_plot(False)
            return
        points = h["points"]
        if not points:
            self._set_caption(
                caption, Text(f"History of {key} {metric}: no values stored yet{hint}")
            )
            self._show_plot(False)
            return
        lo = min(v for _, v in points)
        hi = max(v for _, v in points)
        flagged = h.get("flagged") or []
        self._set_caption(
            caption,
            Text.assemble(
                (f"History of {key} {metric}", "bold"),
                f"  {len(points)} points {fmt_time(points[0][0])}–{fmt_time(points[-1][0])}"
                f"  min {fmt_value(lo)} · max {fmt_value(hi)} · last {fmt_value(points[-1][1])}",
                (f" · {len(flagged)} flagged (x)" if flagged else "", self._warning_style()),
                (hint, "dim"),
            ),
        )
        if h.get("drawn") is not True:
            plt = plot.plt
            plt.clear_figure()
            xs = [t / 1000 for t, _ in points]
            ys = [v for _, v in points]
            plt.plot(xs, ys, marker="braille")
            if flagged:
                # Flagged points as crosses over the line, in the theme's warning colour.
                plt.scatter(
                    [t / 1000 for t, _ in flagged],
                    [v for _, v in flagged],
                    marker="x",
                    color=self._warning_colour(),
                )
            n = min(5, len(xs))
            if n > 1:
                idx = [round(i * (len(xs) - 1) / (n - 1)) for i in range(n)]
                span = xs[-1] - xs[0]
                cut = 5 if span >= 600 else 8
                plt.xticks([xs[i] for i in idx], [fmt_time(points[i][0])[:cut] for i in idx])
            plt.title(f"{key} · {metric}")
            h["drawn"] = True
            plot.refresh()
        self._show_plot(True)

    def _warning_style(self) -> str:
        return self.app.theme_variables.get("warning", "")

    def _warning_colour(self) -> str | tuple[int, int, int]:
        """The theme's warning colour as plotext takes it (an RGB tuple), else red."""
        try:
            c = Color.parse(self._warning_style())
        except ColorParseError:
            return "red"
        return (c.r, c.g, c.b)

    # ---- actions

    def action_cycle_flow(self, step: int) -> None:
        flows = self._flows()
        if not flows:
            self.notify("no flows yet", severity="warning")
            return
        i = flows.index(self.flow) if self.flow in flows else 0
        self.flow = flows[(i + step) % len(flows)]
        self.app.request_snapshot()  # this flow's latest values, now
        self.refresh_view()

    def action_cycle_metric(self) -> None:
        metrics = self.metrics(self.flow)
        if not metrics or self.flow is None:
            return
        self._metric_choice[self.flow] = (self._metric_choice.get(self.flow, 0) + 1) % len(metrics)
        self._maybe_load_history()
        self._draw_history()

    def action_open_lineage(self) -> None:
        row = self.query_one("#latest", DeckTable).selected()
        if row is None or self.flow is None:
            self.notify("no row selected", severity="warning")
            return
        self.app.push_screen(LineageScreen(self.flow, row["key"], row["ts_ms"]))
