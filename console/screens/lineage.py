"""Data & lineage: the latest value of every key of a flow, its history, a record's lineage.

``DataScreen`` shows one flow at a time (``[`` / ``]`` cycle flows): the latest
row per key with every metric of the flow, quality, anomaly score, sources and
flags, and below it a history chart of the highlighted key's chosen metric
(``k`` cycles the metric), loaded through the control. ``enter`` opens
``LineageScreen``: the record, the pipeline version that made it, every raw
payload it came from and what each stage changed, top to bottom.
"""

from __future__ import annotations

import json
import math
from contextlib import suppress
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.css.query import NoMatches
from textual.widgets import Static
from textual_plotext import PlotextPlot

from flowdeck.console.screens.base import DeckScreen
from flowdeck.console.state import fmt_age, fmt_time, symbol
from flowdeck.console.widgets import Col, DeckTable, status_text

HISTORY_WINDOW_MS = 6 * 3600 * 1000
NOT_CONNECTED = "✖ not connected"


# ---------------------------------------------------------------- formatting helpers


def fmt_value(v: Any) -> str:
    """A field value, compactly: floats to six significant digits, lists joined."""
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        return f"{v:.6g}"
    if isinstance(v, list | tuple):
        return ", ".join(fmt_value(x) for x in v) or "-"
    if isinstance(v, dict):
        return json.dumps(v, default=str, separators=(", ", ": "))
    return str(v)


def data_text(data: dict | None, skip: tuple = (), first: list | tuple = ()) -> str:
    """A record's fields on one line: ``temperature=7.3 pressure=1015.3 …``.

    Fields named in ``first`` (a flow's metrics) lead; fields in ``skip`` are left out."""
    data = data or {}
    order = [k for k in first if k in data] + [k for k in data if k not in first]
    return " ".join(f"{k}={fmt_value(data[k])}" for k in order if k not in skip)


def excerpt_lines(text: str | None, lines: int = 4, width: int = 160) -> list[str]:
    """The first lines of a payload, each cut to ``width`` characters."""
    out = []
    for line in (text or "").splitlines()[:lines]:
        out.append(line if len(line) <= width else line[: width - 1] + "…")
    return out


def anomaly_text(score: float | None, anomalous: bool | None, app=None) -> Text:
    """The anomaly score, marked ⚠ with the word when the detector called it anomalous."""
    if score is None:
        return Text("-")
    if anomalous:
        colour = app.theme_variables.get("warning", "") if app is not None else ""
        return Text(f"⚠ {score:.2f} anomalous", style=colour)
    return Text(f"{score:.2f}")


class ViewScreen(DeckScreen):
    """A DeckScreen that draws in ``draw()``; ``refresh_view`` skips a redraw that arrives
    before the screen has composed its widgets (the live loop can redraw a screen the
    moment it becomes current), since ``on_mount`` draws it again."""

    def draw(self) -> None:
        pass

    def refresh_view(self) -> None:
        try:
            self.draw()
        except NoMatches:
            return
        super().refresh_view()


class QueryScreen(ViewScreen):
    """A drill-down screen whose content is asked of the engine (``control.query``) in a
    worker; ``r`` reloads. Subclasses implement ``fetch()`` (the query) and ``loaded()``
    (keep the value); ``render_loaded()`` fills widgets once the answer is in. While it
    loads, ``loading`` is true; a failed query leaves its message in ``error``."""

    loading = False
    error: str | None = None

    async def fetch(self):
        """The query; may raise. Returns the loaded value."""
        return None

    def loaded(self, value) -> None:
        """Keep a successfully fetched value."""

    def failed(self) -> None:
        """What a failed query leaves behind (default: the previous value stays)."""

    def render_loaded(self) -> None:
        """Fill widgets from the loaded value (skipped if the screen went away)."""

    def on_mount(self) -> None:
        # Textual runs each class's on_mount in the MRO itself: no super() call here
        # (or below), or the query would start twice.
        self.action_reload()

    def action_reload(self) -> None:
        if self.app.control is None:
            self.refresh_view()
            return
        self.loading = True
        self.refresh_view()
        self.run_worker(self._load(), exclusive=True, group=type(self).__name__)

    async def _load(self) -> None:
        try:
            self.loaded(await self.fetch())
            self.error = None
        except Exception as exc:  # shown in the screen's header, never a crash
            self.failed()
            self.error = str(exc)
        self.loading = False
        with suppress(NoMatches):  # the screen went away while the query ran
            self.render_loaded()
        self.refresh_view()


def _heading(text: str, app) -> Text:
    return Text(text, style=f"bold {app.theme_variables.get('primary', '')}")


# ---------------------------------------------------------------- data screen


class DataScreen(ViewScreen):
    """Latest values of one flow, a history chart of the highlighted key, lineage on enter."""

    TITLE = "Data"
    BINDINGS = [
        Binding(
            "left_square_bracket", "cycle_flow(-1)", "Prev flow", key_display="[", id="prev_flow"
        ),
        Binding(
            "right_square_bracket", "cycle_flow(1)", "Next flow", key_display="]", id="next_flow"
        ),
        Binding("k", "cycle_metric", "Chart metric", id="cycle_metric"),
        Binding("enter", "open_lineage", "Lineage", id="open_lineage"),
    ]

    DEFAULT_CSS = """
    DataScreen #flowbar { height: 1; padding: 0 1; background: $boost; text-wrap: nowrap;
                          text-overflow: ellipsis; }
    DataScreen #latest { height: 1fr; }
    DataScreen #history-pane { height: 1fr; min-height: 6; max-height: 18;
                               border-top: solid $panel; }
    DataScreen #history-pane.-collapsed { height: auto; min-height: 0; }
    DataScreen #history-caption { height: auto; padding: 0 1; }
    DataScreen #history-plot { height: 1fr; }
    """

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
            points = await self.app.control.query(
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
            }
        if target == self._hist_target:
            self._hist = result
            with suppress(NoMatches):  # the screen went away while the query ran
                self._draw_history()

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
            caption.update(
                Text(
                    f"History of {key} {metric}: {NOT_CONNECTED} — "
                    "history needs a connection to an engine"
                )
            )
            self._show_plot(False)
            return
        if st == "idle":
            caption.update(Text("History: select a row" + hint, style="dim"))
            self._show_plot(False)
            return
        _, key, metric, _ = h["target"]
        if st == "loading":
            caption.update(Text(f"History of {key} {metric}: loading…{hint}"))
            return
        if st == "error":
            caption.update(Text(f"History of {key} {metric}: ✖ failed: {h['error']}"))
            self._show_plot(False)
            return
        points = h["points"]
        if not points:
            caption.update(Text(f"History of {key} {metric}: no values stored yet{hint}"))
            self._show_plot(False)
            return
        lo = min(v for _, v in points)
        hi = max(v for _, v in points)
        caption.update(
            Text.assemble(
                (f"History of {key} {metric}", "bold"),
                f"  {len(points)} points {fmt_time(points[0][0])}–{fmt_time(points[-1][0])}"
                f"  min {fmt_value(lo)} · max {fmt_value(hi)} · last {fmt_value(points[-1][1])}",
                (hint, "dim"),
            )
        )
        if h.get("drawn") is not True:
            plt = plot.plt
            plt.clear_figure()
            xs = [t / 1000 for t, _ in points]
            ys = [v for _, v in points]
            plt.plot(xs, ys, marker="braille")
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


# ---------------------------------------------------------------- lineage screen


class LineageScreen(QueryScreen):
    """One record's full lineage: record, pipeline version, raw payloads, stage by stage."""

    TITLE = "Lineage"
    BINDINGS = [
        Binding("r", "reload", "Reload", id="reload_lineage"),
        Binding("y", "copy", "Copy lineage", id="copy"),
    ]

    DEFAULT_CSS = """
    LineageScreen #lineage-head { height: auto; padding: 0 1; background: $boost; }
    LineageScreen #lineage-scroll { height: 1fr; padding: 0 1; }
    """

    def __init__(self, flow: str, key: str, ts_ms: int) -> None:
        super().__init__()
        self.flow = flow
        self.key = key
        self.ts_ms = int(ts_ms)
        self.info: dict | None = None

    def compose_body(self) -> ComposeResult:
        yield Static(id="lineage-head")
        with VerticalScroll(id="lineage-scroll"):
            yield Static(id="lineage-body")

    def on_mount(self) -> None:
        self.query_one("#lineage-scroll").focus()

    async def fetch(self):
        control = self.app.control
        rec = await control.query("record", flow=self.flow, key=self.key, ts_ms=self.ts_ms)
        if rec is None:
            raise LookupError("no stored record at this key and time")
        return await control.query("lineage", record_id=rec["id"])

    def loaded(self, value) -> None:
        self.info = value

    def failed(self) -> None:
        self.info = None

    def render_loaded(self) -> None:
        self._render_body()

    def draw(self) -> None:
        head = Text()
        head.append(
            f"Lineage of {self.flow} · {self.key} · {fmt_time(self.ts_ms, True)} UTC", style="bold"
        )
        head.append("   ")
        if self.app.control is None:
            head.append(f"{NOT_CONNECTED} — lineage needs a connection to an engine")
        elif self.loading:
            head.append("loading…")
        elif self.error:
            head.append(f"✖ {self.error}")
        elif self.info is not None:
            head.append(
                f"record #{self.info['record']['id']} · "
                f"{len(self.info['raw'])} raw payload(s) · "
                f"{len(self.info['stages'])} stage step(s)",
                style="dim",
            )
        self.query_one("#lineage-head", Static).update(head)
        if self.info is None:
            self.query_one("#lineage-body", Static).update(
                Text("")
                if self.app.control is not None
                else Text(
                    "Open this screen from a console connected to an engine (flowdeck "
                    "console, or flowdeck console --connect URL) to see the record's "
                    "raw payloads and what each stage did to it.",
                    style="dim",
                )
            )

    def _render_body(self) -> None:
        if self.info is not None:
            self.query_one("#lineage-body", Static).update(render_lineage_text(self.info, self.app))

    def action_copy(self) -> None:
        if self.info is None:
            self.notify("nothing loaded to copy", severity="warning")
            return
        from flowdeck.pipeline.serve.queries import render_lineage

        text = render_lineage(self.info)
        self.app.copy_to_clipboard(text)
        self.notify(f"copied {len(text)} characters to the clipboard")


def _stage_title(st: dict) -> str:
    name = st["stage"]
    if st.get("source"):
        name += f" [{st['source']}]"
    return name


def render_lineage_text(info: dict, app, width: int = 110) -> Text:
    """The lineage as a readable vertical list (a Text, so payload brackets stay literal).

    ``width`` cuts payload excerpt lines so each stays on one screen line."""
    v = app.theme_variables
    dim = "dim"
    t = Text()
    rec = info["record"]
    t.append_text(_heading(f"Record #{rec['id']}", app))
    t.append(f"  {rec['flow']} · {rec['key']} · {rec['ts']}\n")
    t.append(f"  quality {fmt_value(rec.get('quality'))} · anomaly ")
    t.append_text(anomaly_text(rec.get("anomaly_score"), rec.get("anomalous"), app))
    t.append(f" · sources {fmt_value(rec.get('sources'))} · flags {fmt_value(rec.get('flags'))}\n")
    data = rec.get("data") or {}
    pad = max((len(k) for k in data), default=0)
    for k, val in data.items():
        t.append(f"    {k:<{pad}}  ", style=dim)
        t.append(fmt_value(val) + "\n")
    t.append("\n")

    ver = info.get("version") or {}
    t.append_text(_heading("Pipeline version", app))
    if ver.get("id") is not None:
        t.append(f"  #{ver['id']}" + (f" created {ver['created']}" if ver.get("created") else ""))
    t.append("\n")
    if ver.get("stages"):
        t.append("  " + " → ".join(ver["stages"].values()) + "\n", style=dim)
    else:
        t.append("  not recorded: traced with the current configuration\n", style=dim)
    t.append("\n")

    raws = info.get("raw") or []
    t.append_text(_heading(f"Raw payloads ({len(raws)})", app))
    t.append("\n")
    for raw in raws:
        t.append(f"  #{raw['id']} {raw['source']}", style="bold")
        t.append(
            f" · fetched {raw.get('fetched')} · {raw.get('size')} bytes"
            f" · {raw.get('content_type') or '-'}"
            f" · sha256 {(raw.get('sha256') or '')[:12]}\n"
        )
        for line in excerpt_lines(raw.get("excerpt"), lines=3, width=width):
            t.append(f"      {line}\n", style=dim)
    t.append("\n")

    stages = info.get("stages") or []
    t.append_text(_heading(f"Stages ({len(stages)})", app))
    t.append("\n")
    for st in stages:
        name = _stage_title(st)
        t.append(f"  {symbol('running')} {name}", style="bold")
        if st.get("version"):
            t.append(f"  {st['version']}", style=dim)
        stage = st["stage"]
        if "note" in st:
            t.append(f"  {st['note']}\n")
            continue
        if "changed" in st:
            changed = st["changed"] or {}
            units = st.get("units") or {}
            if not changed:
                t.append("  no change")
            if st.get("quality") is not None:
                t.append(f"  score {fmt_value(st['quality'])}")
            t.append("\n")
            for field_name, (before, after) in changed.items():
                t.append(f"      {field_name}: ", style=dim)
                t.append(fmt_value(before))
                t.append(" → ", style=v.get("accent", "") or "bold")
                t.append(fmt_value(after), style="bold")
                unit = units.get(field_name)
                if unit:
                    t.append(
                        f"  ({unit[0]} → {unit[1]})"
                        if isinstance(unit, list | tuple)
                        else f"  ({unit})",
                        style=dim,
                    )
                t.append("\n")
        elif stage == "collect":
            t.append("  parsed\n")
            out = st.get("output") or {}
            t.append(
                f"      {data_text(out)}\n" if out else "      record not in payload\n", style=dim
            )
        elif stage == "resolve":
            inputs = st.get("inputs") or {}
            output = st.get("output") or {}
            t.append(f"  {st.get('strategy')} of {len(inputs)} source(s)\n")
            agree = 0
            for field_name, out_val in output.items():
                vals = {s: (d or {}).get(field_name) for s, d in inputs.items()}
                if len(inputs) > 1 and all(x == out_val for x in vals.values()):
                    agree += 1
                    continue
                t.append(f"      {field_name}: ", style=dim)
                t.append(" · ".join(f"{s} {fmt_value(x)}" for s, x in vals.items()))
                t.append(" → ", style=v.get("accent", "") or "bold")
                t.append(fmt_value(out_val) + "\n", style="bold")
            if agree:
                t.append(f"      {agree} other field(s) agree across sources\n", style=dim)
        elif stage == "detect":
            t.append("  ")
            if st.get("anomalous"):
                t.append_text(anomaly_text(st.get("anomaly_score"), True, app))
            else:
                t.append(f"{symbol('ok')} normal, score {fmt_value(st.get('anomaly_score'))}")
            if st.get("flags"):
                t.append(f" · {fmt_value(st['flags'])}")
            t.append("\n")
        else:
            t.append("\n")
    return t
