"""Lineage: one record, the pipeline version that made it, every raw payload it came
from and what each stage changed, top to bottom (opened from the Data and Issue screens).
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Static

from flowdeck.console.screens.base import (
    NOT_CONNECTED,
    REASON_KEY,
    QueryScreen,
    anomaly_text,
    data_text,
    excerpt_lines,
    fmt_value,
    reason_text,
)
from flowdeck.console.state import fmt_time, symbol


def _heading(text: str, app) -> Text:
    return Text(text, style=f"bold {app.theme_variables.get('primary', '')}")


class LineageScreen(QueryScreen):
    """One record's full lineage: record, pipeline version, raw payloads, stage by stage."""

    TITLE = "Lineage"
    BINDINGS = [
        Binding("r", "reload", "Reload", id="lineage.reload"),
        Binding("y", "copy", "Copy lineage", id="lineage.copy"),
    ]

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
    data = dict(rec.get("data") or {})
    stored_reason = data.pop(REASON_KEY, None)  # an older engine's lineage keeps it in data
    reason = rec.get("anomaly_reason") or stored_reason
    if reason:
        t.append("  ")
        t.append_text(reason_text(reason, app))
        t.append("\n")
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
            if st.get("anomaly_reason"):
                t.append("    ")
                t.append_text(reason_text(st["anomaly_reason"], app))
                t.append("\n")
        else:
            t.append("\n")
    return t
