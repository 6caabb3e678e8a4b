"""The console's state model: plain data built from engine snapshots and events.

Screens render only from this (never from the database), so a fixed state and
a fixed clock always draw the same picture. The same model is filled whether
the engine runs in this process or is reached over the feed.
"""

from __future__ import annotations

import copy
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from flowdeck.pipeline.core.shapes import (
    CacheStatsData,
    HubEvent,
    IssueRow,
    LatestSummary,
    MaintenanceState,
    ViewerFlow,
    ViewerSnapshot,
)
from flowdeck.pipeline.serve.protocol import latest_summary

FLOW_STATES = ("healthy", "degraded", "failing", "paused")
CACHE_LAYERS = ("l1", "l2", "l3", "l4")
CACHE_HISTORY = 120  # sampling intervals kept for the hit-rate chart
SEVERITY_ORDER = {"critical": 0, "error": 1, "warning": 2, "info": 3}

# Status is shown by symbol and word as well as colour (colour-blind safe).
SYMBOLS = {
    "healthy": "●", "ok": "●", "up": "●",
    "degraded": "◐", "partial": "◐", "warning": "▲",
    "failing": "✖", "failed": "✖", "down": "✖", "error": "✖", "critical": "‼",
    "paused": "‖", "info": "i", "open": "○", "acknowledged": "◔", "muted": "◌",
    "resolved": "✔", "running": "▶", "waiting": "…", "disabled": "⊘", "debug": "·",
    "standby": "○",
}


def symbol(status: str | None) -> str:
    return SYMBOLS.get(status or "", "·")


def fmt_time(ms: int | float | None, with_date: bool = False) -> str:
    if ms is None:
        return "-"
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%d %H:%M:%S" if with_date else "%H:%M:%S")


def fmt_age(ms: int | float | None, now_ms: float) -> str:
    if ms is None:
        return "never"
    s = max(0.0, (now_ms - ms) / 1000)
    if s < 60:
        return f"{s:.0f}s"
    if s < 3600:
        return f"{s / 60:.0f}m"
    if s < 86400:
        return f"{s / 3600:.1f}h"
    return f"{s / 86400:.1f}d"


def fmt_num(x: float | int | None, digits: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, int) or float(x).is_integer() and abs(x) >= 1000:
        n = int(x)
        if abs(n) >= 1_000_000:
            return f"{n / 1_000_000:.1f}M"
        if abs(n) >= 10_000:
            return f"{n / 1000:.1f}k"
        return str(n)
    return f"{x:.{digits}f}"


def fmt_bytes(n: int | None) -> str:
    """A size for people: ``512 B``, ``1.5 KiB``, ``20.0 MiB``; ``-`` when unknown."""
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def maintenance_marker(m: MaintenanceState | None) -> str:
    """A table cell's word for a flow in a maintenance window ("" outside one): a
    pausing window stops scheduled runs, a muting one keeps them and silences alerts."""
    if m is None:
        return ""
    return "‖ maint" if m.get("mode") == "pause" else "◌ muted"


def maintenance_line(m: MaintenanceState | None) -> str:
    """One line for a flow's detail: which window, what it does, until when, whose."""
    if m is None:
        return ""
    what = ("scheduled runs paused" if m.get("mode") == "pause"
            else "runs go on, alerts muted, outside SLA")
    by = "configured" if m.get("actor") == "auto" else f"started by {m.get('actor')}"
    return (f"maint: {m.get('mode')} until {fmt_time(m.get('until_ms'))[:5]} UTC "
            f"({m.get('name')}, {by}; {what})")


def describe_event(ev: HubEvent) -> tuple[str, str]:
    """(level, one line of text) for the events log."""
    t = ev.get("type")
    d = ev.get("data", {})
    flow = ev.get("flow") or "-"
    if t == "run_finished":
        st = d.get("stages", {})
        level = {"ok": "info", "partial": "warning"}.get(d.get("status"), "error")
        text = (f"{flow}: run {d.get('run_id')} {d.get('status')} in {d.get('duration_ms')} ms, "
                f"{st.get('collect', {}).get('out', 0)} collected, "
                f"{st.get('store', {}).get('out', 0)} stored")
        if d.get("quarantined"):
            text += f", {d['quarantined']} quarantined"
        if d.get("error"):
            text += f" ({d['error']})"
        return level, text
    if t == "run_started":
        return "debug", f"{flow}: run {d.get('run_id')} started ({d.get('trigger')})"
    if t == "fetch":
        if d.get("ok"):
            return "debug", (f"{flow}/{d.get('source')}: fetched {d.get('payloads')} payload(s), "
                             f"{d.get('bytes')} bytes in {d.get('latency_ms')} ms")
        return "error", f"{flow}/{d.get('source')}: fetch failed: {d.get('error')}"
    if t == "issue":
        return d.get("severity", "warning"), f"{flow}: {d.get('title')}"
    if t == "issue_state":
        return "info", f"{flow}: issue {d.get('id')} {d.get('state')} by {d.get('actor')}"
    if t == "quarantine":
        return "warning", (f"{flow}/{d.get('source')}: quarantined ({d.get('reason')}) "
                           f"{d.get('message')}")
    if t == "action":
        level = "info" if d.get("outcome") == "ok" else "error"
        return level, f"{flow}: {d.get('action')} by {d.get('actor')}: {d.get('reason')}"
    if t == "records":
        return "debug", f"{flow}: {d.get('count')} records stored"
    if t == "flow_state":
        return "info", f"{flow}: now {d.get('state')}"
    if t == "log":
        return "info", str(d.get("message"))
    if t == "cache_invalidate":
        layers = ", ".join(str(x).upper() for x in d.get("layers") or ()) or "-"
        return "debug", (f"{d.get('flow') or flow}: cache key {d.get('key') or '*'} "
                         f"invalidated in {layers} ({d.get('reason') or '-'})")
    if t == "cache_stats":
        rates = (d.get("point") or {}).get("rates") or {}
        text = " · ".join(f"{k.upper()} {'-' if v is None else f'{v * 100:.0f}%'}"
                          for k, v in sorted(rates.items()))
        return "debug", f"caches: hit rate this interval {text or '-'}"
    return "debug", f"{t} {flow} {d}"


@dataclass
class ConsoleState:
    """Everything the screens show. ``update`` takes a snapshot, ``add_events`` events."""

    snapshot: dict[str, Any] = field(default_factory=lambda: {"flows": {}, "issues": [],
                                                              "actions": [], "quarantine": [],
                                                              "latest": {}, "runs": []})
    events: deque = field(default_factory=lambda: deque(maxlen=5000))
    rates: dict[str, dict[str, float]] = field(default_factory=dict)  # flow -> stage -> /s
    rate_history: dict[str, deque] = field(default_factory=dict)  # flow -> stored/s samples
    now: float = 0.0
    connection: str = "local"
    connected: bool = True
    paused: bool = False
    refresh_s: float = 1.0
    _prev: tuple[float, dict] | None = None

    # ------------------------------------------------------------ input

    def update(self, snap: ViewerSnapshot, now: float) -> None:
        """Take a new snapshot; per-interval rates come from the change since the last one."""
        if self._prev is not None:
            t0, prev = self._prev
            dt = max(1e-6, now - t0)
            for name, f in snap.get("flows", {}).items():
                p = prev.get(name)
                if p is None:
                    continue
                rates = {st: max(0.0, (tot["out"] - p[st]["out"]) / dt)
                         for st, tot in f.get("totals", {}).items() if st in p}
                self.rates[name] = rates
                hist = self.rate_history.setdefault(name, deque(maxlen=120))
                hist.append(rates.get("store", 0.0))
        self._prev = (now, {n: copy.deepcopy(f.get("totals", {}))
                            for n, f in snap.get("flows", {}).items()})
        # A snapshot may carry the latest values of some flows only (the console asks for
        # those of the flow it shows): the others keep the last ones received.
        kept = self.snapshot.get("latest", {})
        if kept and "latest" in snap:
            snap["latest"] = {**{f: rows for f, rows in kept.items()
                                 if f in snap.get("flows", {})}, **snap["latest"]}
        self.snapshot = snap
        self.now = now
        self.connection = snap.get("connection", self.connection)

    def add_events(self, events: list[HubEvent]) -> None:
        for ev in events:
            if ev.get("type") == "cache_stats":
                self._apply_cache_stats(ev.get("data") or {})
            level, text = describe_event(ev)
            self.events.append({"ts": ev.get("ts"), "type": ev.get("type"),
                                "flow": ev.get("flow"), "level": level, "text": text,
                                "seq": ev.get("seq")})

    def _apply_cache_stats(self, data: CacheStatsData) -> None:
        """A sampling interval's cache counters: newer than the last snapshot's, so they
        show at once instead of at the next snapshot."""
        caches = self.snapshot.get("caches")
        if caches is None:
            caches = self.snapshot["caches"] = {"layers": {}, "history": [], "hot_keys": []}
        if data.get("layers"):
            caches["layers"] = data["layers"]
        point = data.get("point")
        if point is not None:
            hist = caches.setdefault("history", [])
            if not hist or hist[-1].get("ts", 0) < point.get("ts", 0):
                hist.append(point)
                del hist[:-CACHE_HISTORY]

    # ------------------------------------------------------------ views

    def caches(self) -> dict[str, Any]:
        """The caches part of the snapshot: layers, history points, hot keys."""
        c = self.snapshot.get("caches") or {}
        return {"layers": c.get("layers") or {}, "history": c.get("history") or [],
                "hot_keys": c.get("hot_keys") or []}

    @property
    def now_ms(self) -> float:
        return self.now * 1000

    @property
    def flows(self) -> dict[str, ViewerFlow]:
        return self.snapshot.get("flows", {})

    def maintenance(self, flow: str) -> MaintenanceState | None:
        """The maintenance window the flow is in now (the engine's snapshot), or None."""
        f = self.flows.get(flow)
        return None if f is None else f.get("maintenance")

    def flow_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(FLOW_STATES, 0)
        for f in self.flows.values():
            counts[f.get("state", "healthy")] = counts.get(f.get("state", "healthy"), 0) + 1
        return counts

    def sources(self) -> list[dict]:
        """Every source of every flow, one row each, with its flow's name."""
        out = []
        for fname, f in self.flows.items():
            for sname, s in f.get("sources", {}).items():
                up = s.get("consecutive_failures", 0) == 0 and s.get("requests", 0) > 0
                state = "up" if up else ("down" if s.get("requests", 0) else "waiting")
                if not s.get("enabled", True):
                    state = "disabled"
                out.append({"flow": fname, "source": sname, "state": state, **s})
        return out

    def issues(self) -> list[IssueRow]:
        return self.snapshot.get("issues", [])

    def throughput_series(self, flow: str) -> list[float]:
        """Records stored per run (from the engine) for sparklines, oldest first."""
        return [float(n) for _, n in self.flows.get(flow, {}).get("throughput", [])]

    def sla(self, flow: str) -> dict[str, Any]:
        """Freshness and availability of a flow against its configured targets."""
        f = self.flows.get(flow, {})
        newest = self.latest_info(flow)["newest_ms"]
        age_s = (self.now_ms - newest) / 1000 if newest is not None else None
        runs = [r for r in self.snapshot.get("runs", []) if r.get("flow") == flow
                and r.get("trigger") in ("schedule", "once", "manual")]
        ok = sum(1 for r in runs if r.get("status") in ("ok", "partial"))
        availability = ok / len(runs) if runs else None
        target_f = f.get("freshness_s")
        target_a = f.get("availability_target")
        return {
            "freshness_s": age_s, "freshness_target_s": target_f,
            "fresh": age_s is not None and target_f is not None and age_s <= target_f,
            "availability": availability, "availability_target": target_a,
            "available": availability is not None and target_a is not None
            and availability >= target_a,
            "runs": len(runs),
        }

    def latest_info(self, flow: str) -> LatestSummary:
        """How many keys a flow has, its newest value's time, each key's quality (oldest
        first): from the snapshot's summary, which covers flows whose values it left out."""
        info = self.snapshot.get("latest_summary", {}).get(flow)
        if info is not None:
            return info
        return latest_summary({flow: self.snapshot.get("latest", {}).get(flow, [])})[flow]

    def quality_trend(self, flow: str) -> list[float]:
        """Quality of the latest values (one point per key, oldest first by time)."""
        return list(self.latest_info(flow)["quality"])

    def source_ranking(self) -> list[dict]:
        """Sources ranked by reliability seen so far: success rate, then latency."""
        rows = []
        for s in self.sources():
            req = s.get("requests", 0)
            success = 1 - s.get("error_rate", 0.0) if req else None
            rows.append({"flow": s["flow"], "source": s["source"], "success": success,
                         "requests": req, "latency_p95_ms": s.get("latency_p95_ms")})
        rows.sort(key=lambda r: (-(r["success"] if r["success"] is not None else -1),
                                 r["latency_p95_ms"] or 1e9))
        return rows
