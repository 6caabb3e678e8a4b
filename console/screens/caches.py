"""Caches: hit rate per layer over time, each layer's counters, the hot keys, purge and pre-warm.

Top: the hit rate of every enabled layer (L1 memory, L2 Redis, L3 database, L4
HTTP edge) per sampling interval, charted with plotext; each layer's line is
drawn with its own digit (``1`` … ``4``) as well as its own colour, so the chart
reads without colour. Middle: one row per layer with the cumulative counters
(hits, misses, hit rate, evictions, invalidations, errors, size) beside the
latest interval's hit rate and requests per second. Bottom left: the hot keys;
bottom right: the cache actions taken so far (they are recovery actions).

Actions: ``x`` purges the selected hot key from every layer, or the selected
layer when the layers table has the focus; ``X`` purges every key of the selected
hot key's flow; ``w`` pre-warms that flow. Purges ask for confirmation. Every
flow and layer can also be purged or pre-warmed from the command palette.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Static
from textual_plotext import PlotextPlot

from flowdeck.console.screens.base import DeckScreen
from flowdeck.console.state import CACHE_LAYERS, fmt_num, fmt_time
from flowdeck.console.widgets import Col, DeckTable, status_text

LAYER_TITLES = {"l1": "memory", "l2": "redis", "l3": "database", "l4": "http"}
LAYER_COLOURS = {"l1": "success", "l2": "accent", "l3": "primary", "l4": "warning"}
CACHE_ACTIONS = ("purge_cache", "prewarm")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.1f}%"


def layer_name(layer: str, info: dict | None = None) -> str:
    return f"{layer.upper()} {(info or {}).get('name') or LAYER_TITLES.get(layer, '?')}"


def layer_state(info: dict, app=None) -> Text:
    """on / down / off as symbol + word, coloured from the theme."""
    v = app.theme_variables if app is not None else {}
    if not info.get("enabled", False):
        return Text("⊘ off", style=v.get("secondary", ""))
    if info.get("connected") is False:
        return Text("✖ down", style=f"bold {v.get('error', '')}")
    return Text("● on", style=v.get("success", ""))


def _size(size: int | None, capacity: int | None) -> str:
    if size is None:
        return "-"
    return fmt_num(size) if capacity is None else f"{fmt_num(size)}/{fmt_num(capacity)}"


def interval_stats(history: list[dict]) -> tuple[dict, dict, float | None]:
    """(rate per layer, requests/s per layer, interval seconds) of the newest point."""
    if not history:
        return {}, {}, None
    last = history[-1]
    dt = last["ts"] - history[-2]["ts"] if len(history) > 1 else None
    if not dt or dt <= 0:
        dt = None
    per_s = {k: (n / dt if dt else None) for k, n in (last.get("requests") or {}).items()}
    return last.get("rates") or {}, per_s, dt


class CachesScreen(DeckScreen):
    TITLE = "Caches"
    BINDINGS = [
        Binding("x", "purge", "Purge", id="caches.purge"),
        Binding("X", "purge_flow", "Purge flow", id="caches.purge_flow"),
        Binding("w", "prewarm", "Pre-warm", id="caches.prewarm"),
    ]

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self._chart_drawn: tuple | None = None

    def compose_body(self) -> ComposeResult:
        app = lambda: self.app  # noqa: E731
        yield Static(id="cache-caption")
        yield PlotextPlot(id="cache-chart")
        yield DeckTable(
            [
                Col("layer", "Layer", 11, lambda v, r: r["_name"], priority=9),
                Col("on", "State", 7, lambda v, r: layer_state(r["_info"], app()), priority=8),
                Col("hit_rate", "Hit %", 6, lambda v, r: _pct(v), priority=9),
                Col("rate_now", "Now %", 6, lambda v, r: _pct(v), priority=8),
                Col("req_s", "Req/s", 7, lambda v, r: "-" if v is None else f"{v:.1f}",
                    priority=7),
                Col("hits", "Hits", 7, lambda v, r: fmt_num(v), priority=6),
                Col("misses", "Misses", 7, lambda v, r: fmt_num(v), priority=4),
                Col("size", "Size", 9, lambda v, r: _size(v, r.get("capacity")), priority=4),
                Col("evictions", "Evict", 6, lambda v, r: fmt_num(v), priority=3),
                Col("invalidations", "Inval", 6, lambda v, r: fmt_num(v), priority=6),
                Col("errors", "Errors", 6, lambda v, r: fmt_num(v), priority=5),
            ],
            default_sort="layer",
            id="cache-layers",
        )
        with Horizontal(id="cache-lower"):
            with Vertical():
                yield Static("Hot keys: x purge · X flow · w warm", classes="panel-title")
                yield DeckTable(
                    [
                        Col("rank", "#", 3, priority=9),
                        Col("flow", "Flow", 8, priority=8),
                        Col("key", "Key", 10, priority=9),
                        Col("hits", "Hits", 7, lambda v, r: fmt_num(v), priority=9),
                        Col("share", "Share", 6, lambda v, r: _pct(v), priority=4),
                    ],
                    default_sort="rank",
                    id="cache-hot",
                )
            with Vertical():
                yield Static("Cache actions: newest first", classes="panel-title")
                yield DeckTable(
                    [
                        Col("time", "Time", 8, lambda v, r: fmt_time(r.get("ts_ms")),
                            priority=9),
                        Col("action", "Action", 11, priority=9),
                        Col("outcome", "Outcome", 9,
                            lambda v, r: status_text(v, app()), priority=7),
                        Col("reason", "Result", 24, priority=8),
                        Col("actor", "Actor", 8, priority=3),
                    ],
                    default_sort="time",
                    reverse=True,
                    id="cache-actions",
                )

    # ------------------------------------------------------------ rows

    def _layer_rows(self) -> list[dict]:
        caches = self.app.state.caches()
        rates, per_s, _ = interval_stats(caches["history"])
        rows = []
        for layer in CACHE_LAYERS:
            info = caches["layers"].get(layer)
            if info is None:
                continue
            counters = {} if info.get("enabled", False) else dict.fromkeys(
                ("hits", "misses", "hit_rate", "evictions", "invalidations", "errors", "size"))
            rows.append({
                **info, **counters, "_key": layer, "_info": info, "_name": layer_name(layer, info),
                "layer": layer, "on": (info.get("enabled"), info.get("connected") is not False),
                "rate_now": rates.get(layer),
                "req_s": per_s.get(layer) if info.get("enabled", False) else None,
            })
        return rows

    def _hot_rows(self) -> list[dict]:
        hot = self.app.state.caches()["hot_keys"]
        total = sum(h.get("hits", 0) for h in hot) or 0
        return [{**h, "_key": f"{h.get('flow')}/{h.get('key')}", "rank": i,
                 "share": h.get("hits", 0) / total if total else None}
                for i, h in enumerate(hot, 1)]

    def _action_rows(self) -> list[dict]:
        return [{**a, "_key": f"a{a.get('id', i)}", "time": (a.get("ts_ms") or 0, a.get("id") or 0)}
                for i, a in enumerate(self.app.state.snapshot.get("actions", []))
                if a.get("action") in CACHE_ACTIONS]

    # ------------------------------------------------------------ view

    def refresh_view(self) -> None:
        self.query_one("#cache-layers", DeckTable).set_rows(self._layer_rows())
        self.query_one("#cache-hot", DeckTable).set_rows(self._hot_rows())
        self.query_one("#cache-actions", DeckTable).set_rows(self._action_rows())
        self._draw_chart()
        super().refresh_view()

    def _series(self) -> dict[str, list[tuple[float, float]]]:
        """Per enabled layer: (ts, hit rate %) of every interval that had requests."""
        caches = self.app.state.caches()
        out = {}
        for layer in CACHE_LAYERS:
            info = caches["layers"].get(layer) or {}
            if not info.get("enabled", False):
                continue
            out[layer] = [(p["ts"], p["rates"][layer] * 100) for p in caches["history"]
                          if (p.get("rates") or {}).get(layer) is not None]
        return out

    def _draw_chart(self) -> None:
        caption = self.query_one("#cache-caption", Static)
        plot = self.query_one("#cache-chart", PlotextPlot)
        caches = self.app.state.caches()
        history = caches["history"]
        if not caches["layers"]:
            caption.update(Text("Caches: no cache figures from this engine yet", style="dim"))
            plot.display = False
            return
        series = self._series()
        off = [layer_name(k, caches["layers"][k]) for k in CACHE_LAYERS
               if k in caches["layers"] and not caches["layers"][k].get("enabled", False)]
        _, _, dt = interval_stats(history)
        span = f"{len(history)} intervals" + (f" of {dt:.0f}s" if dt else "")
        v = self.app.theme_variables
        legend = Text()
        for i, layer in enumerate(CACHE_LAYERS, 1):
            if series.get(layer):
                legend.append(f"  {i} {layer_name(layer, caches['layers'][layer])}",
                              style=f"bold {v.get(LAYER_COLOURS[layer], '')}")
        text = Text()
        for k in CACHE_LAYERS:  # a layer that lost its server says why, in words, first
            info = caches["layers"].get(k) or {}
            if info.get("enabled") and info.get("connected") is False:
                text.append(f"✖ {layer_name(k, info)} down: "
                            f"{info.get('error') or 'not connected'}  ",
                            style=f"bold {v.get('error', '')}")
        text.append_text(Text.assemble(
            ("Hit rate per layer", "bold"), legend,
            (f"  · {span}" + (f" to {fmt_time(history[-1]['ts'] * 1000)}" if history else ""),
             "dim"),
            (f"  · off: {', '.join(off)}" if off else "", "dim"),
        ))
        if not any(series.values()):
            text.append("  · no requests yet", style="dim")
        caption.update(text)
        if not any(series.values()):
            plot.display = False
            return
        plot.display = True
        key = (self.app.theme, plot.size, tuple((k, tuple(v)) for k, v in series.items()))
        if key == self._chart_drawn:
            return  # the same picture: plotext need not redraw it
        self._chart_drawn = key
        plt = plot.plt
        plt.clear_figure()
        for i, layer in enumerate(CACHE_LAYERS, 1):
            pts = series.get(layer)
            if not pts:
                continue
            colour = v.get(LAYER_COLOURS[layer])
            kw = {"color": _rgb(colour)} if colour else {}
            plt.plot([t for t, _ in pts], [r for _, r in pts], marker=str(i), **kw)
        plt.ylim(0, 100)
        plt.yticks([0, 25, 50, 75, 100], ["0%", "25%", "50%", "75%", "100%"])
        xs = sorted({t for pts in series.values() for t, _ in pts})
        n = min(5, len(xs))
        idx = [round(i * (len(xs) - 1) / (n - 1)) for i in range(n)] if n > 1 else [0]
        cut = 5 if xs[-1] - xs[0] >= 600 else 8
        plt.xticks([xs[i] for i in idx], [fmt_time(xs[i] * 1000)[:cut] for i in idx])
        plot.refresh()

    # ------------------------------------------------------------ actions

    def _hot(self) -> dict | None:
        return self.query_one("#cache-hot", DeckTable).selected()

    def action_purge(self) -> None:
        table = self.focus_table()
        if table is not None and table.id == "cache-layers":
            row = table.selected()
            if row is None:
                self.notify("no layer selected", severity="warning")
                return
            self.app.operator_action(
                "purge_cache", flow=None, key=None, layer=row["layer"],
                confirm=f"Purge every key from {row['_name']}? "
                        "Reads go to the next layer until it fills again.")
            return
        row = self._hot()
        if row is None:
            self.notify("select a hot key (or a layer) to purge", severity="warning")
            return
        self.app.operator_action(
            "purge_cache", flow=row["flow"], key=row["key"], layer=None,
            confirm=f"Purge {row['flow']}/{row['key']} from every cache layer?")

    def action_purge_flow(self) -> None:
        row = self._hot()
        if row is None:
            self.notify("select a hot key of the flow to purge", severity="warning")
            return
        self.app.operator_action(
            "purge_cache", flow=row["flow"], key=None, layer=None,
            confirm=f"Purge every cached key of {row['flow']} from every layer?")

    def action_prewarm(self) -> None:
        row = self._hot()
        if row is None:
            self.notify("select a hot key of the flow to pre-warm", severity="warning")
            return
        self.app.operator_action("prewarm", flow=row["flow"])

    def copy_text(self, row: dict) -> str:
        return super().copy_text({k: v for k, v in row.items() if k != "on"})


def _rgb(colour: str) -> tuple[int, int, int] | None:
    """A theme colour ('#rrggbb') as plotext wants it."""
    from textual.color import Color

    try:
        return Color.parse(colour).rgb
    except Exception:
        return None
