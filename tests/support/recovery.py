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


# ---------------------------------------------------------------- a real daemon

def daemon_config_text(*, every: str = "500ms", timeout: str = "1s", extra: str = "") -> str:
    """The demo flows on a fast clock for a daemon subprocess: weather every ``every``,
    fx every 2 s, quick timeouts and retries, breakers that cool down in a second, issues
    that resolve after 3 s of quiet. ``extra`` is added to the weather flow."""
    from flowdeck.pipeline.config import BUNDLED_DIR

    text = BUNDLED_CONFIG.read_text()
    text = text.replace("schedule: {every: 10s}", f"schedule: {{every: {every}}}", 1)
    text = text.replace("schedule: {every: 10s}", "schedule: {every: 2s}", 1)
    text = text.replace("timeout: 3s", f"timeout: {timeout}\n        backoff: 10ms\n"
                                       "        retries: 1")
    text = text.replace("../reference/stations.csv",
                        str(BUNDLED_DIR / "reference" / "stations.csv"))
    return text.replace(
        "    detect:\n      - {metric: temperature",
        "    recovery: {breaker: {cooldown: 1s, max_cooldown: 4s}}\n"
        "    issues: {auto_resolve: 3s}\n" + extra +
        "    detect:\n      - {metric: temperature", 1)
