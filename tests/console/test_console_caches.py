"""The Caches screen: what an operator sees of the cache layers, and purge / pre-warm.

Rendering tests use the recorded fixture state (its caches part is fixed numbers,
see tests/support/fixtures/make_console_state.py); the key tests check what the screen
asks a Control to do, after confirmation where the action is destructive; the
last one does it against a real engine and store.
"""

from __future__ import annotations

import copy

import pytest
from rich.text import Text
from support.console import FixtureControl, fixture_state, make_app, screen_text, wait_for

from flowdeck.console.app import FlowdeckApp
from flowdeck.console.screens.caches import CachesScreen
from flowdeck.console.state import ConsoleState
from flowdeck.console.widgets import ConfirmScreen, DeckTable
from flowdeck.pipeline.config import BUNDLED_CONFIG, load_config
from flowdeck.pipeline.core.clock import ManualClock
from flowdeck.pipeline.engine.engine import Engine
from flowdeck.pipeline.serve.control import LocalControl
from flowdeck.storage.store import Store


def rows(table: DeckTable) -> list[list[str]]:
    return [[c.plain if isinstance(c, Text) else str(c) for c in table.get_row_at(i)]
            for i in range(table.row_count)]


class FakeControl(FixtureControl):
    """The fixture's engine, where purging L1 empties it as an engine would."""

    async def act(self, name: str, **params) -> dict:
        if name == "purge_cache" and params.get("layer") == "l1":
            self.snap["caches"]["layers"]["l1"].update(size=0, invalidations=229)
        return await super().act(name, **params)


async def settle(app, pilot) -> None:
    await pilot.pause()
    await app.workers.wait_for_complete()
    await pilot.pause()


async def test_caches_screen_shows_layers_rates_and_hot_keys():
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("4")
        await pilot.pause()
        assert isinstance(app.screen, CachesScreen)
        text = screen_text(app)
        assert "flowdeck ▸ Caches" in text.splitlines()[0]
        # the chart's legend names each charted layer with the digit its line is drawn with
        assert "1 L1 memory  3 L3 database  4 L4 http" in text
        assert "off: L2 redis" in text
        assert app.screen.query_one("#cache-chart").display
        layers = {r[0]: r for r in rows(app.screen.query_one("#cache-layers", DeckTable))}
        assert list(layers) == ["L1 memory", "L2 redis", "L3 database", "L4 http"]
        l1 = layers["L1 memory"]
        caches = app.state.caches()
        hits, misses = caches["layers"]["l1"]["hits"], caches["layers"]["l1"]["misses"]
        assert l1[1] == "● on"
        assert l1[2] == f"{hits / (hits + misses) * 100:.1f}%"  # cumulative
        last = caches["history"][-1]
        assert l1[3] == f"{last['rates']['l1'] * 100:.1f}%"  # this interval, beside it
        assert l1[4] == f"{last['requests']['l1'] / 5:.1f}"  # requests per second
        assert layers["L2 redis"][1] == "⊘ off" and set(layers["L2 redis"][2:]) == {"-"}
        hot = rows(app.screen.query_one("#cache-hot", DeckTable))
        assert hot[0][:4] == ["1", "weather", "KSFO", "412"]
        actions = rows(app.screen.query_one("#cache-actions", DeckTable))
        assert [r[1] for r in actions] == ["purge_cache", "prewarm"]


async def test_cache_stats_events_update_the_layers_between_snapshots():
    state = fixture_state()
    app = make_app(state=state)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("4")
        await pilot.pause()
        layers = copy.deepcopy(state.caches()["layers"])
        layers["l1"].update(hits=9999, size=42)
        ts = state.caches()["history"][-1]["ts"] + 5
        point = {"ts": ts, "rates": {"l1": 0.5, "l2": None, "l3": 0.25, "l4": None},
                 "requests": {"l1": 20, "l2": 0, "l3": 10, "l4": 0}}
        state.add_events([{"type": "cache_stats", "ts": ts, "flow": None,
                           "data": {"layers": layers, "point": point}}])
        app.redraw()
        await pilot.pause()
        l1 = rows(app.screen.query_one("#cache-layers", DeckTable))[0]
        assert l1[3] == "50.0%" and l1[4] == "4.0" and l1[5] == "9999"
        assert len(state.caches()["history"]) == 61


async def test_caches_screen_without_cache_figures_says_so():
    state = fixture_state()
    del state.snapshot["caches"]
    app = make_app(state=state)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("4")
        await pilot.pause()
        assert "no cache figures from this engine yet" in screen_text(app)
        assert not app.screen.query_one("#cache-chart").display


async def test_purge_key_layer_flow_and_prewarm_from_keys():
    control = FakeControl()
    app = make_app(control=control)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("4")
        await settle(app, pilot)
        hot = app.screen.query_one("#cache-hot", DeckTable)
        hot.focus()
        await pilot.pause()
        # x on a hot key: confirm, then the key is purged from every layer
        await pilot.press("x")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        assert "Purge weather/KSFO from every cache layer?" in screen_text(app)
        await pilot.press("n")  # cancelled: nothing is asked of the engine
        await settle(app, pilot)
        assert control.calls == []
        await pilot.press("x")
        await pilot.press("y")
        await settle(app, pilot)
        assert control.calls[-1] == ("purge_cache",
                                     {"flow": "weather", "key": "KSFO", "layer": None})
        # X: every key of the selected key's flow
        await pilot.press("down", "down", "X", "y")
        await settle(app, pilot)
        assert control.calls[-1] == ("purge_cache", {"flow": "fx", "key": None, "layer": None})
        # w: pre-warm needs no confirmation
        await pilot.press("w")
        await settle(app, pilot)
        assert control.calls[-1] == ("prewarm", {"flow": "fx"})
        # x on the layers table purges that layer; the screen shows the engine's new figures
        layers = app.screen.query_one("#cache-layers", DeckTable)
        layers.focus()
        await pilot.pause()
        await pilot.press("x")
        await pilot.pause()
        assert "Purge every key from L1 memory?" in screen_text(app)
        await pilot.press("y")
        await settle(app, pilot)
        assert control.calls[-1] == ("purge_cache", {"flow": None, "key": None, "layer": "l1"})
        assert any(n.message == "purge_cache done" for n in app._notifications)  # the toast
        l1 = rows(app.screen.query_one("#cache-layers", DeckTable))[0]
        assert "229" in l1 and "0/10.0k" in l1


async def test_purge_and_prewarm_from_the_command_palette():
    control = FakeControl()
    app = make_app(control=control)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("4")
        await settle(app, pilot)
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert "Pre-warm caches of weather" in titles
        assert "Purge caches of fx" in titles
        assert "Purge cache layer L3 database" in titles
        assert "Purge cache layer L2 redis" not in titles  # it is off
        assert "Purge cache key weather/KSFO" in titles
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"Pre-warm caches of weather")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await settle(app, pilot)
        assert control.calls == [("prewarm", {"flow": "weather"})]


# ---------------------------------------------------------------- a real engine



@pytest.fixture
async def engine_rig(tmp_path):
    clock = ManualClock(1_795_521_630.0)
    store = Store(f"sqlite:///{tmp_path / 'flowdeck.db'}")
    engine = Engine(load_config(BUNDLED_CONFIG), store, clock=clock, scenario="chaos", seed=7)
    await engine.start(schedule=False)
    try:
        for _ in range(2):
            await engine.run_all_once()
            clock.advance(30)
        yield engine, store, clock
    finally:
        await engine.stop()
        store.close()


def cache_actions(store) -> list[tuple[str, str, str]]:
    return [(a["action"], a["outcome"], a["reason"]) for a in store.actions(limit=50)
            if a["action"] in ("purge_cache", "prewarm")]


async def test_purge_and_prewarm_reach_the_engine_and_the_store(engine_rig):
    engine, store, clock = engine_rig
    control = LocalControl(engine, actor="carol")
    for _ in range(3):  # an operator's reads make KSFO a hot key, cached in L1
        await control.query("latest", flow="weather", key="KSFO")
    await control.query("latest", flow="fx", key="EURUSD")
    await engine.caches.sample()
    app = FlowdeckApp(control, state=ConsoleState(), clock=clock, refresh=0.5)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("4")
        screen = app.screen
        hot = screen.query_one("#cache-hot", DeckTable)
        await wait_for(pilot, lambda: any(r["key"] == "KSFO" for r in hot.shown), "hot keys")
        l1 = rows(screen.query_one("#cache-layers", DeckTable))[0]
        assert l1[:2] == ["L1 memory", "● on"]
        assert engine.caches.peek("weather", "latest", "KSFO") is not None

        # x on the hot key, confirmed: gone from the engine's L1, recorded, on screen.
        hot.focus()
        for i, r in enumerate(hot.shown):
            if r["key"] == "KSFO":
                hot.move_cursor(row=i, animate=False)
        await pilot.pause()
        await pilot.press("x")
        await pilot.pause()
        assert "Purge weather/KSFO from every cache layer?" in screen_text(app)
        await pilot.press("y")
        await wait_for(pilot, lambda: cache_actions(store), "the purge in the store")
        action, outcome, reason = cache_actions(store)[0]
        assert (action, outcome) == ("purge_cache", "ok") and "purged weather/KSFO" in reason
        assert engine.caches.peek("weather", "latest", "KSFO") is None
        assert any(n.message == reason for n in app._notifications)  # the toast
        actions = screen.query_one("#cache-actions", DeckTable)
        await wait_for(pilot, lambda: any(r["reason"] == reason for r in actions.shown),
                       "the purge on screen")
        assert store.actions(limit=1)[0]["actor"] == "carol"

        # w pre-warms the selected key's flow: the hot key is loaded again.
        await pilot.press("w")
        await wait_for(pilot, lambda: cache_actions(store)[0][0] == "prewarm", "the pre-warm")
        assert cache_actions(store)[0][1] == "ok"
        assert engine.caches.peek("weather", "latest", "KSFO") is not None
        await wait_for(pilot, lambda: any(r["action"] == "prewarm" for r in actions.shown),
                       "the pre-warm on screen")

        # x on the L1 row of the layers table, confirmed: the layer is emptied.
        layers = screen.query_one("#cache-layers", DeckTable)
        layers.focus()
        layers.move_cursor(row=0, animate=False)
        await pilot.pause()
        await pilot.press("x", "y")
        await wait_for(pilot, lambda: "from l1" in cache_actions(store)[0][2], "the layer purge")
        assert cache_actions(store)[0][:2] == ("purge_cache", "ok")
        assert engine.caches.peek("weather", "latest", "KSFO") is None
        reason = cache_actions(store)[0][2]
        await wait_for(pilot, lambda: any(r["reason"] == reason for r in actions.shown),
                       "the layer purge on screen")


async def test_a_layer_that_lost_its_server_says_so():
    state = fixture_state()
    l2 = state.snapshot["caches"]["layers"]["l2"]
    l2.update(enabled=True, connected=False, error="ConnectionError: Connection refused")
    app = make_app(state=state)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("4")
        await pilot.pause()
        assert "✖ L2 redis down: ConnectionError: Connection refused" in screen_text(app)
        layers = {r[0]: r for r in rows(app.screen.query_one("#cache-layers", DeckTable))}
        assert layers["L2 redis"][1] == "✖ down"


async def test_before_the_first_interval_the_chart_waits_for_requests():
    state = fixture_state()
    state.snapshot["caches"]["history"] = []  # a just-started engine
    app = make_app(state=state)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("4")
        await pilot.pause()
        assert "no requests yet" in screen_text(app)
        assert not app.screen.query_one("#cache-chart").display
        assert rows(app.screen.query_one("#cache-layers", DeckTable))[0][0] == "L1 memory"
