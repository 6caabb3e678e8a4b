"""Recovery: each flow's fallback state on top, the recovery-action timeline below.

Top: each flow (paused or not, sources up, failing sources, incident/stale).
Middle: every source's circuit breaker (closed / half-open / open, failure rate,
opens, next probe) and its role (primary, active, pinned by a forced failover).
Bottom: the timeline of recovery actions, automatic and operator.
In a cluster (several daemons on PostgreSQL) a line on top names this node and every
node with its state, last heartbeat and the flows it owns.

Manual actions: on the flow selected in the top table ``r`` retries it now,
``space`` pauses (after confirmation) or resumes it, ``R`` replays its
quarantine (after confirmation); on the source selected in the breakers table
``b`` resets its breaker and ``f`` forces failover to it (both confirmed), ``F``
releases a forced failover. Every action lands in the timeline.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Static

from flowdeck.console.screens.base import DeckScreen, FlowActions
from flowdeck.console.state import fmt_age, fmt_time, maintenance_marker
from flowdeck.console.widgets import Col, DeckTable, status_text
from flowdeck.pipeline.core.shapes import MaintenanceState

BREAKER_LOOK = {"closed": ("● closed", "success"), "half_open": ("◐ half-open", "warning"),
                "open": ("✖ open", "error")}


def breaker_text(state: str | None, app) -> Text | str:
    """A breaker's state as symbol + word, coloured from the theme."""
    if state not in BREAKER_LOOK:
        return "-"
    word, colour = BREAKER_LOOK[state]
    return Text(word, style=app.theme_variables.get(colour, ""))


def cluster_text(cluster: dict | None) -> str | None:
    """The cluster line: this node, then each node (live, stopped or dead; heartbeat age;
    its flows). None outside a cluster."""
    if not cluster:
        return None
    me = f"Cluster: this node {cluster['node']}"
    if not cluster.get("valid", True):
        me += " (cannot renew its leases: its flows are stopped)"
    parts = [me]
    for n in cluster.get("nodes", []):
        state = "live" if n.get("live") else (
            "stopped" if n.get("state") == "stopped" else "dead")
        flows = ", ".join(n.get("flows") or []) or "no flows"
        parts.append(f"{n['node']} {state}, heartbeat {n.get('heartbeat_age_ms', 0) / 1000:.1f}s"
                     f" ago: {flows}")
    return " · ".join(parts)


def _paused_text(paused: bool, maint: MaintenanceState | None = None) -> Text:
    if paused:
        return Text("‖ paused")
    return Text(maintenance_marker(maint) or "▶ active")


class RecoveryScreen(FlowActions, DeckScreen):
    TITLE = "Recovery"
    _cluster_line: str | None = None
    BINDINGS = [
        Binding("r", "run_now", "Retry now", id="recovery.run_now"),
        Binding("space", "toggle_flow", "Pause/resume", id="recovery.toggle_flow"),
        Binding("R", "replay_quarantine", "Replay quarantine", id="recovery.replay_quarantine"),
        Binding("b", "reset_breaker", "Reset breaker", id="recovery.reset_breaker"),
        Binding("f", "force_failover", "Force failover", id="recovery.force_failover"),
        Binding("F", "release_failover", "Release failover", show=False,
                id="recovery.release_failover"),
    ]

    def compose_body(self) -> ComposeResult:
        now = lambda: self.app.state.now_ms  # noqa: E731
        yield Static(id="recovery-cluster", classes="hint")
        yield Static(
            "Flows (×N = consecutive failures)",
            classes="panel-title",
        )
        yield DeckTable(
            [
                Col("flow", "Flow", 9, priority=9),
                Col("state", "State", 11, lambda v, r: status_text(v, self.app), priority=9),
                Col("paused", "Paused", 9, lambda v, r: _paused_text(v, r.get("maint")),
                    priority=8),
                Col("up", "Up", 5, lambda v, r: f"{v}/{r['total']}", priority=8),
                Col(
                    "failing",
                    "Failing sources",
                    22,
                    lambda v, r: ", ".join(f"{n} ×{c}" for n, c in v) if v else "none",
                    priority=8,
                ),
                Col(
                    "last_ok_ms",
                    "Last ok",
                    9,
                    lambda v, r: fmt_age(v, now()) + " ago" if v else "never",
                    priority=7,
                ),
                Col(
                    "last_status",
                    "Last run",
                    10,
                    lambda v, r: status_text(v, self.app) if v else "-",
                    priority=4,
                ),
                Col("failed_runs", "Failed runs", 11, priority=3),
                Col("quarantined", "Quarantine", 10, priority=5),
            ],
            default_sort="flow",
            id="recovery-flows",
        )
        yield Static(id="recovery-selected", classes="hint")
        yield Static("Circuit breakers (b reset · f force failover · F release)",
                     classes="panel-title")
        yield DeckTable(
            [
                Col("flow", "Flow", 9, priority=8),
                Col("source", "Source", 9, priority=9),
                Col("breaker", "Breaker", 12,
                    lambda v, r: breaker_text(v, self.app), priority=9),
                Col("role", "Role", 10, priority=7),
                Col("rate", "Fail %", 7, lambda v, r: f"{v * 100:.0f}%", priority=6),
                Col("opens", "Opens", 6, priority=4),
                Col("retry_at_ms", "Next probe", 10,
                    lambda v, r: fmt_time(v) if v else "-", priority=5),
            ],
            default_sort="flow",
            id="recovery-breakers",
        )
        yield Static("Recovery actions: newest first", classes="panel-title")
        yield DeckTable(
            [
                Col("time", "Time", 8, lambda v, r: fmt_time(r.get("ts_ms")), priority=9),
                Col("flow", "Flow", 9, priority=8),
                Col("source", "Source", 9, priority=3),
                Col("action", "Action", 17, priority=9),
                Col("actor", "Actor", 9, priority=7),
                Col("outcome", "Outcome", 10, lambda v, r: status_text(v, self.app), priority=8),
                Col(
                    "duration_ms",
                    "Took",
                    9,
                    lambda v, r: "-" if v is None else f"{v:.1f} ms",
                    priority=4,
                ),
                Col("reason", "Reason", 30, priority=6),
            ],
            default_sort="time",
            reverse=True,
            id="recovery-actions",
        )

    # ------------------------------------------------------------ rows

    def _flow_rows(self) -> list[dict]:
        state = self.app.state
        self._cluster_line = cluster_text(state.snapshot.get("cluster"))  # with the flows
        quarantined: dict[str, int] = {}
        for q in state.snapshot.get("quarantine", []):
            if q.get("state", "open") == "open":
                quarantined[q.get("flow")] = quarantined.get(q.get("flow"), 0) + 1
        by_flow: dict[str, list[dict]] = {}
        for s in state.sources():
            by_flow.setdefault(s["flow"], []).append(s)
        rows = []
        for name, f in state.flows.items():
            srcs = by_flow.get(name, [])
            failing = sorted(
                (
                    (s["source"], s.get("consecutive_failures", 0))
                    for s in srcs
                    if s.get("consecutive_failures", 0) > 0
                ),
                key=lambda t: (-t[1], t[0]),
            )
            rows.append(
                {
                    "_key": name,
                    "flow": name,
                    "state": f.get("state"),
                    "paused": bool(f.get("paused")),
                    "maint": f.get("maintenance"),
                    "up": sum(1 for s in srcs if s["state"] == "up"),
                    "total": len(srcs),
                    "failing": failing,
                    "last_ok_ms": f.get("last_success_ms"),
                    "last_status": (f.get("last_run") or {}).get("status"),
                    "failed_runs": f.get("failed_runs", 0),
                    "stale": bool(f.get("stale")),
                    "quarantined": quarantined.get(name, 0),
                }
            )
        return rows

    def _breaker_rows(self) -> list[dict]:
        rows = []
        for name, f in self.app.state.flows.items():
            for src, s in f.get("sources", {}).items():
                b = s.get("breaker") or {}
                role = ("pinned" if f.get("pinned") == src else
                        "primary" if f.get("primary") == src else
                        "active" if src in (f.get("active") or []) else "standby")
                rows.append({"_key": f"{name}/{src}", "flow": name, "source": src,
                             "breaker": b.get("state"), "role": role,
                             "rate": b.get("failure_rate", 0.0), "opens": b.get("opens", 0),
                             "retry_at_ms": b.get("retry_at_ms")})
        return rows

    def _action_rows(self) -> list[dict]:
        rows = []
        for i, a in enumerate(self.app.state.snapshot.get("actions", [])):
            rows.append(
                {
                    **a,
                    "_key": f"a{a.get('id', f'#{i}')}",
                    "time": (a.get("ts_ms") or 0, a.get("id") or 0),
                }
            )
        return rows

    # ------------------------------------------------------------ view

    @property
    def flows_table(self) -> DeckTable:
        return self.query_one("#recovery-flows", DeckTable)

    def refresh_view(self) -> None:
        self.flows_table.set_rows(self._flow_rows())
        line = self._cluster_line
        cluster = self.query_one("#recovery-cluster", Static)
        cluster.display = line is not None
        if line is not None:
            cluster.update(line)
        self.query_one("#recovery-breakers", DeckTable).set_rows(self._breaker_rows())
        self.query_one("#recovery-actions", DeckTable).set_rows(self._action_rows())
        self._show_selected()
        super().refresh_view()

    def on_deck_table_row_highlighted(self, event) -> None:
        if event.table is self.flows_table:
            self._show_selected()

    def _show_selected(self) -> None:
        row = self.flows_table.selected()
        label = self.query_one("#recovery-selected", Static)
        if row is None:
            label.update("no flow selected")
            return
        f = self.app.state.flows.get(row["flow"], {})
        t = Text.assemble(
            ("▸ ", "bold"),
            (row["flow"], "bold"),
            ": ",
            "r retry now · ",
            "space resume" if f.get("paused") else "space pause",
            f" · R replay quarantine ({row['quarantined']} open)",
        )
        label.update(t)

    # ------------------------------------------------------------ actions

    def _selected_flow(self) -> str | None:
        row = self.flows_table.selected()
        if row is None:
            self.notify("no flow selected", severity="warning")
            return None
        return row["flow"]

    def _selected_source(self) -> dict | None:
        row = self.query_one("#recovery-breakers", DeckTable).selected()
        if row is None:
            self.notify("select a source in the breakers table", severity="warning")
        return row

    def action_reset_breaker(self) -> None:
        row = self._selected_source()
        if row:
            self.app.operator_action(
                "reset_breaker", flow=row["flow"], source=row["source"],
                confirm=f"Reset the breaker of {row['flow']}/{row['source']} "
                        f"(now {row['breaker']})? It will be asked again at the next run.")

    def action_force_failover(self) -> None:
        row = self._selected_source()
        if row:
            self.app.operator_action(
                "force_failover", flow=row["flow"], source=row["source"],
                confirm=f"Force {row['flow']} to use only {row['source']} until released (F)?")

    def action_release_failover(self) -> None:
        row = self._selected_source()
        if row:
            self.app.operator_action("force_failover", flow=row["flow"])

    def action_replay_quarantine(self) -> None:
        flow = self._selected_flow()
        if not flow:
            return
        n = sum(
            1
            for q in self.app.state.snapshot.get("quarantine", [])
            if q.get("flow") == flow and q.get("state", "open") == "open"
        )
        self.app.operator_action(
            "replay_quarantine",
            flow=flow,
            confirm=f"Replay the {n} quarantined payload(s) of {flow} "
            "through the current pipeline?",
        )
