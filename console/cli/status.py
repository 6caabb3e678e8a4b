"""`flowdeck status`: each flow's state, last run, breakers and open issues, read from the
store; the exit code is the worst state (0 healthy, 1 degraded, 2 failing)."""

from __future__ import annotations

from typing import Any

from flowdeck.console.cli import common

# Open issues of these kinds make `flowdeck status` say degraded (exit 1).
DEGRADING_ISSUES = {"stale_source", "error_rate", "store_unavailable"}


def add_parsers(sub) -> None:
    p = sub.add_parser("status", help="flows and open issues; exit 0 healthy, 1 degraded, "
                                      "2 failing")
    common.add_common(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_status)


def cmd_status(args) -> int:
    """Flows, last run, open issues; exit 0 healthy, 1 degraded, 2 failing."""
    from flowdeck.pipeline.serve.queries import iso

    config = common.config(args, from_store=True)
    store = common.store(args, config, create=False)
    try:
        counts = store.open_issue_counts()
        out: dict[str, dict[str, Any]] = {}
        worst = 0
        now = common.now_ms()
        for name, flow in config.flows.items():
            runs = store.recent_runs(name, limit=1)
            last = runs[0] if runs else None
            latest = store.latest(name)
            newest = max((r["ts_ms"] for r in latest), default=None)
            stale = newest is None or now - newest > (flow.freshness or 0) * 1000
            if flow.historical:  # history: true / freshness: null is never stale
                stale = False
            if last is None or last["status"] == "failed":
                state = "failing"
            elif last["status"] == "partial" or stale:
                state = "degraded"
            else:
                state = "healthy"
            breakers = {src: st.get("breaker", {}).get("state", "closed")
                        for (_f, src), st in store.source_states(name).items()}
            open_kinds = {i["kind"] for i in
                          store.issues(flow=name, state=("open", "acknowledged"))}
            incident = "incident" in open_kinds
            if incident:
                state = "failing"
            elif state == "healthy" and (any(b != "closed" for b in breakers.values())
                                         or open_kinds & DEGRADING_ISSUES):
                state = "degraded"
            worst = max(worst, {"healthy": 0, "degraded": 1, "failing": 2}[state])
            last_stats = (last or {}).get("stats") or {}
            active = [s for s, i in last_stats.get("sources", {}).items()
                      if "error" not in i and "skipped" not in i]
            window = maintenance_now(config, store, name, now)
            out[name] = {"state": state, "active_sources": active, "maintenance": window,
                         "breakers": {s.name: breakers.get(s.name, "closed")
                                      for s in flow.sources},
                         "incident": incident,
                         "last_run": iso(last["started_ms"]) if last else None,
                         "last_status": last["status"] if last else None,
                         "newest_record": iso(newest), "stale": stale,
                         "issues_open": {sev: n for (f, sev), n in counts.items() if f == name}}
        cluster = cluster_status(store)
    finally:
        store.close()
    if args.json:
        common.print_json({"flows": out, "exit": worst}
                          | ({"cluster": cluster} if cluster is not None else {}))
    else:
        for name, f in out.items():
            issues = ", ".join(f"{n} {s}" for s, n in f["issues_open"].items()) or "no issues"
            open_b = [f"{s} {b}" for s, b in f["breakers"].items() if b != "closed"]
            m = f["maintenance"]
            if m is not None:
                print(f"{name:<10} in maintenance ({m['mode']}, {m['name']}) until "
                      f"{iso(m['until_ms'])}")
            print(f"{name:<10} {f['state']:<9} last run {f['last_run'] or 'never'} "
                  f"({f['last_status'] or '-'}), active {', '.join(f['active_sources']) or '-'}, "
                  f"breakers {', '.join(open_b) or 'all closed'}, newest record "
                  f"{f['newest_record'] or '-'}, {issues}")
        if cluster is not None:
            print_cluster(cluster)
    return worst


def cluster_status(store) -> dict | None:
    """On PostgreSQL with nodes registered: the nodes (live, last heartbeat, their flows)
    and each flow's lease (owner, token, age), by the database's clock."""
    if store.dialect != "postgresql":
        return None
    from flowdeck.storage.leases import cluster_view

    view = cluster_view(store.engine)
    if not view["nodes"]:
        return None
    return {"nodes": [{k: n[k] for k in ("node", "state", "live", "heartbeat_age_ms", "flows",
                                         "info")} for n in view["nodes"]],
            "leases": [{k: lease[k] for k in ("flow", "node", "token", "held", "age_ms",
                                              "expires_in_ms", "target")}
                       for lease in view["leases"]],
            "unowned": sorted({lease["flow"] for lease in view["leases"]
                               if not lease["held"]})}


def print_cluster(cluster: dict) -> None:
    print("cluster:")
    for n in cluster["nodes"]:
        state = "live" if n["live"] else ("stopped" if n["state"] == "stopped" else "dead")
        print(f"  node {n['node']:<16} {state:<7} heartbeat {n['heartbeat_age_ms'] / 1000:.1f}s "
              f"ago, flows {', '.join(n['flows']) or '-'}")
    for lease in cluster["leases"]:
        owner = lease["node"] if lease["held"] else "nobody"
        pin = f", moving to {lease['target']}" if lease["target"] else ""
        print(f"  flow {lease['flow']:<16} on {owner:<16} token {lease['token']}, lease "
              f"{lease['age_ms'] / 1000:.1f}s old{pin}")


def maintenance_now(config, store, flow: str, now_ms: int) -> dict | None:
    """The maintenance window a flow is in: a configured one, or one an operator started
    (its newest maintenance_start action, not ended since)."""
    from flowdeck.pipeline.core.clock import ManualClock
    from flowdeck.pipeline.engine.maintenance import Maintenance

    st = Maintenance(config, ManualClock(now_ms / 1000)).state(flow, now_ms)
    if st is not None:
        return dict(st)
    for a in store.actions(flow, limit=50):
        if a["action"] == "maintenance_end":
            return None
        d = a.get("detail") or {}
        if a["action"] == "maintenance_start" and d.get("until_ms", 0) > now_ms:
            return d
    return None
