"""Insights: throughput and quality per flow, SLA compliance, source reliability.

Throughput shows two series: records stored per run (the engine's own history, so
it is there as soon as the console attaches) and the stored-per-second rate the
console measured between snapshots (it fills as the console keeps running).
SLA verdicts are words with a symbol (``✔ met`` / ``✖ missed`` / ``· no data``),
never colour alone.
"""

from __future__ import annotations

from statistics import fmean

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import Static

from flowdeck.console.screens.base import DeckScreen
from flowdeck.console.state import fmt_age, fmt_bytes, fmt_num
from flowdeck.console.widgets import Col, DeckTable, sparkline, status_text


def fmt_duration(s: float | None) -> str:
    if s is None:
        return "-"
    s = max(0.0, s)
    if s < 60:
        return f"{s:.0f}s"
    if s < 3600:
        return f"{s / 60:.0f}m" if s % 60 == 0 or s >= 600 else f"{s / 60:.1f}m"
    if s < 86400:
        return f"{s / 3600:.1f}h"
    return f"{s / 86400:.1f}d"


def verdict(ok: bool, measured: bool, target: bool, app=None) -> Text:
    """✔ met / ✖ missed, or why there is no verdict; symbol + word, coloured from the theme."""
    if not target:
        return Text("· no target")
    if not measured:
        return Text("· no data")
    v = app.theme_variables if app is not None else {}
    if ok:
        return Text("✔ met", style=v.get("success", ""))
    return Text("✖ missed", style=f"bold {v.get('error', '')}")


def _pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x * 100:.{digits}f}%"


def _bar(x: float | None, width: int = 10) -> str:
    """A horizontal bar for a 0..1 value (eighths of a cell)."""
    if x is None:
        return "·" * width
    eighths = round(max(0.0, min(1.0, x)) * width * 8)
    full, part = divmod(eighths, 8)
    return ("█" * full + ("▏▎▍▌▋▊▉"[part - 1] if part else "")).ljust(width, " ")


class InsightsScreen(DeckScreen):
    TITLE = "Insights"
    BINDINGS = []

    def compose_body(self) -> ComposeResult:
        app = lambda: self.app  # noqa: E731
        yield Static("Throughput and quality", classes="panel-title")
        yield DeckTable(
            [
                Col("flow", "Flow", 9, priority=9),
                Col("state", "State", 11, lambda v, r: status_text(v, app()), priority=6),
                Col("spark", "Stored/run", 18, priority=7),
                Col("rate_spark", "Stored/s trend", 16, priority=2),
                Col("rate", "Rate /s", 8, lambda v, r: f"{v:.1f}", priority=8),
                Col("stored", "Stored", 8, lambda v, r: fmt_num(v), priority=8),
                Col("q_mean", "Quality", 8, lambda v, r: _pct(v), priority=9),
                Col("q_min", "Min q", 7, lambda v, r: _pct(v), priority=5),
                Col("q_spark", "Quality trend", 14, priority=4),
            ],
            default_sort="flow",
            id="insights-flows",
        )
        yield Static("SLA compliance", classes="panel-title")
        yield DeckTable(
            [
                Col("flow", "Flow", 9, priority=9),
                Col("fresh_s", "Freshness", 9, lambda v, r: fmt_duration(v), priority=7),
                Col("fresh_target", "Target", 7, lambda v, r: fmt_duration(v), priority=5),
                Col("fresh_ok", "Fresh?", 12, lambda v, r: r["_fresh_v"], priority=9),
                Col("avail", "Available", 9, lambda v, r: _pct(v), priority=7),
                Col("avail_target", "Target", 7, lambda v, r: _pct(v), priority=5),
                Col("avail_ok", "Available?", 12, lambda v, r: r["_avail_v"], priority=9),
                Col("runs", "Runs", 5, priority=3),
            ],
            default_sort="flow",
            id="insights-sla",
        )
        yield Static("Source reliability: most reliable first", classes="panel-title")
        yield DeckTable(
            [
                Col("rank", "#", 3, priority=9),
                Col("flow", "Flow", 9, priority=8),
                Col("source", "Source", 10, priority=9),
                Col("state", "State", 11, lambda v, r: status_text(v, app()), priority=7),
                Col("success", "Success", 8, lambda v, r: _pct(v), priority=9),
                Col("bar", "", 10, priority=3),
                Col("requests", "Reqs", 6, lambda v, r: fmt_num(v), priority=5),
                Col(
                    "latency_p95_ms",
                    "p95 ms",
                    7,
                    lambda v, r: "-" if v is None else f"{v:.0f}",
                    priority=6,
                ),
            ],
            default_sort="rank",
            id="insights-ranking",
        )
        yield Static("Storage", classes="panel-title")
        yield Static("", id="insights-storage-summary")
        yield DeckTable(
            [
                Col("table", "Table", 17, priority=9),
                Col("rows", "Rows", 9, lambda v, r: fmt_num(v), priority=9),
                Col("oldest", "Oldest kept", 12, priority=8),
                Col("bytes", "Size", 9, lambda v, r: fmt_bytes(v), priority=4),
            ],
            default_sort="table",
            id="insights-storage",
        )

    # ------------------------------------------------------------ rows

    def _flow_rows(self) -> list[dict]:
        state = self.app.state
        rows = []
        for name, f in state.flows.items():
            quality = state.quality_trend(name)
            hist = list(state.rate_history.get(name, ()))
            rows.append(
                {
                    "_key": name,
                    "flow": name,
                    "state": f.get("state"),
                    "spark": sparkline(state.throughput_series(name), 16),
                    "rate_spark": sparkline(hist, 14) if len(hist) >= 2 else "(collecting)",
                    "rate": state.rates.get(name, {}).get("store", 0.0),
                    "stored": f.get("totals", {}).get("store", {}).get("out", 0),
                    "q_mean": fmean(quality) if quality else None,
                    "q_min": min(quality) if quality else None,
                    "q_spark": sparkline(quality, 12),
                }
            )
        return rows

    def _sla_rows(self) -> list[dict]:
        state = self.app.state
        rows = []
        for name in state.flows:
            s = state.sla(name)
            fresh_v = verdict(
                s["fresh"],
                s["freshness_s"] is not None,
                s["freshness_target_s"] is not None,
                self.app,
            )
            avail_v = verdict(
                s["available"],
                s["availability"] is not None,
                s["availability_target"] is not None,
                self.app,
            )
            rows.append(
                {
                    "_key": name,
                    "flow": name,
                    "fresh_s": s["freshness_s"],
                    "fresh_target": s["freshness_target_s"],
                    "fresh_ok": fresh_v.plain,
                    "avail": s["availability"],
                    "avail_target": s["availability_target"],
                    "avail_ok": avail_v.plain,
                    "runs": s["runs"],
                    "_fresh_v": fresh_v,
                    "_avail_v": avail_v,
                }
            )
        return rows

    def _ranking_rows(self) -> list[dict]:
        state = self.app.state
        states = {(s["flow"], s["source"]): s["state"] for s in state.sources()}
        rows = []
        for i, r in enumerate(state.source_ranking(), 1):
            rows.append(
                {
                    **r,
                    "_key": f"{r['flow']}/{r['source']}",
                    "rank": i,
                    "state": states.get((r["flow"], r["source"])),
                    "bar": _bar(r["success"]),
                }
            )
        return rows

    def _storage(self) -> tuple[str, list[dict]]:
        """The summary line and one row per table of the engine's storage statistics."""
        state = self.app.state  # type: ignore[attr-defined]  # FlowdeckApp
        st = state.snapshot.get("storage") or {}
        now_ms = state.now * 1000
        if not st.get("tables"):
            return "database statistics: not measured yet", []
        last = st.get("last_pass")
        if last:
            deleted = sum((last.get("deleted") or {}).values())
            outcome = "stopped: " + last["error"] if last.get("error") else (
                f"{fmt_num(deleted)} rows deleted, {last['duration_s']:.1f}s")
            passed = f"retention {fmt_age(last['finished_ms'], now_ms)} ago: {outcome}"
        else:
            passed = "no retention pass yet"
        summary = f" {st.get('backend') or '-'} {fmt_bytes(st.get('size_bytes'))} · {passed}"
        rows = [{"_key": name, "table": name, "rows": t.get("rows", 0),
                 "oldest": "-" if t.get("oldest_ms") is None else
                 fmt_age(t["oldest_ms"], now_ms) + " ago",
                 "bytes": t.get("bytes")}
                for name, t in st["tables"].items()]
        return summary, rows

    # ------------------------------------------------------------ view

    def refresh_view(self) -> None:
        self.query_one("#insights-flows", DeckTable).set_rows(self._flow_rows())
        self.query_one("#insights-sla", DeckTable).set_rows(self._sla_rows())
        self.query_one("#insights-ranking", DeckTable).set_rows(self._ranking_rows())
        summary, rows = self._storage()
        self.query_one("#insights-storage-summary", Static).update(summary)
        self.query_one("#insights-storage", DeckTable).set_rows(rows)
        super().refresh_view()

    def copy_text(self, row: dict) -> str:
        return super().copy_text(
            {k: v for k, v in row.items() if k not in ("spark", "rate_spark", "q_spark", "bar")}
        )
