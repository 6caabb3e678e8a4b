"""The Recovery screen of a console attached to a node of a cluster: a line names this
node and every node (live, stopped or dead, heartbeat age, its flows)."""

from __future__ import annotations

from support.console import fixture_state, make_app, screen_text

CLUSTER = {
    "node": "node-a", "ttl_s": 15.0, "owned": ["weather"], "tokens": {"weather": 4},
    "valid": True, "last_renewal_age_s": 1.2, "error": None, "takeovers": 2,
    "handovers": 1, "lost": 0,
    "nodes": [
        {"node": "node-a", "state": "up", "live": True, "heartbeat_age_ms": 1200,
         "flows": ["weather"]},
        {"node": "node-b", "state": "up", "live": True, "heartbeat_age_ms": 3400,
         "flows": ["fx"]},
        {"node": "node-c", "state": "up", "live": False, "heartbeat_age_ms": 41000,
         "flows": []},
    ],
    "leases": [
        {"flow": "fx", "node": "node-b", "token": 7, "held": True, "age_ms": 120000,
         "expires_in_ms": 11600, "target": None},
        {"flow": "weather", "node": "node-a", "token": 4, "held": True, "age_ms": 30000,
         "expires_in_ms": 13800, "target": None},
    ],
}


def _app():
    state = fixture_state()
    state.snapshot["cluster"] = CLUSTER
    return make_app("dark", state=state)


def test_recovery_shows_the_cluster(snap_compare):
    assert snap_compare(_app(), press=["5", "_"], terminal_size=(120, 40))


async def test_the_cluster_line_names_each_node_and_its_flows():
    app = _app()
    async with app.run_test(size=(160, 40)) as pilot:
        await pilot.press("5")
        await pilot.pause()
        text = screen_text(app)
    assert "Cluster: this node node-a" in text
    assert "node-b live, heartbeat 3.4s ago: fx" in text
    assert "node-c dead" in text
