"""Fixed state and clock for console tests: the same picture every time."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from flowdeck.console.app import FlowdeckApp
from flowdeck.console.state import ConsoleState
from flowdeck.pipeline.clock import ManualClock

FIXTURE = Path(__file__).parent / "fixtures" / "console_state.json"


def fixture_state() -> ConsoleState:
    """The recorded engine snapshot, with a previous one 10 s earlier so rates show."""
    data = json.loads(FIXTURE.read_text())
    snap, now = data["snapshot"], data["now"]
    prev = copy.deepcopy(snap)
    for f in prev["flows"].values():
        for tot in f["totals"].values():
            for k in ("in", "out"):
                tot[k] = int(tot[k] * 0.8)
    state = ConsoleState()
    state.update(prev, now - 10)
    state.update(snap, now)
    state.add_events(data["events"])
    return state


def make_app(theme: str = "dark", state: ConsoleState | None = None, control=None) -> FlowdeckApp:
    st = state or fixture_state()
    return FlowdeckApp(control, state=st, clock=ManualClock(st.now), theme=theme)
