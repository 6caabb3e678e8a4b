"""Helpers shared by the recovery tests, in-process and against a real daemon."""

from __future__ import annotations

from flowdeck.pipeline.config import BUNDLED_CONFIG, parse_config


def fast_config_text() -> str:
    """The demo flows with quick retries (the fault timing is what is under test)."""
    return BUNDLED_CONFIG.read_text().replace("timeout: 3s", "timeout: 3s\n        backoff: 10ms")


def fast_config(text: str | None = None):
    return parse_config(text or fast_config_text(), str(BUNDLED_CONFIG))


async def run_weather(engine, clock, seconds: float, step: float = 10.0) -> list:
    out = []
    t = 0.0
    while t < seconds:
        out.append(await engine.run_flow("weather", "schedule"))
        clock.advance(step)
        t += step
    return out


def sequence(store, flow="weather") -> list[tuple[str, str | None, str]]:
    """The recovery actions of a flow, oldest first: (action, source, outcome)."""
    return [(a["action"], a["source"], a["outcome"]) for a in reversed(store.actions(flow))]


def first_index(names: list[str], *wanted: str) -> dict[str, int]:
    return {n: names.index(n) for n in wanted}


def issues_of(store, kind: str, flow: str | None = None, state=None) -> list[dict]:
    return [i for i in store.issues(flow=flow, state=state) if i["kind"] == kind]
