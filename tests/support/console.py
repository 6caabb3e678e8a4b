"""Fixed state and clock for console tests: the same picture every time."""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path

from flowdeck.console.app import FlowdeckApp
from flowdeck.console.state import ConsoleState
from flowdeck.pipeline.core.clock import ManualClock
from flowdeck.pipeline.serve.protocol import trim_snapshot

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


class _Never:
    async def get(self):
        await asyncio.Event().wait()


class FixtureControl:
    """A Control that serves the fixture snapshot and records the actions it is asked for."""

    def __init__(self) -> None:
        self.snap = json.loads(FIXTURE.read_text())["snapshot"]
        self.calls: list[tuple[str, dict]] = []

    async def snapshot(self, latest: list[str] | None = None) -> dict:
        return trim_snapshot(copy.deepcopy(self.snap), latest)

    def subscribe(self, types=None) -> _Never:
        return _Never()

    async def act(self, name: str, **params) -> dict:
        self.calls.append((name, params))
        return {"ok": True, "message": f"{name} done"}

    async def query(self, name: str, **params):
        return None


def screen_text(app) -> str:
    """Exactly the characters on the terminal for the top screen."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


async def wait_for(pilot, cond, what: str, timeout: float = 15.0) -> None:
    """Let the app run until ``cond()`` holds; fail with the screen's text if it never does."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}\n{screen_text(pilot.app)}")
        await pilot.pause(0.05)
