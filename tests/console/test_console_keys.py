"""Binding ids: every key of the console has one, no two share one, and ``console.keys``
rebinds any of them (screen keys included); the help screen shows each id by its key."""

from __future__ import annotations

from collections import Counter

from support.console import fixture_state, screen_text, wait_for
from textual.binding import Binding

from flowdeck.console.app import SCREEN_KEYS, FlowdeckApp
from flowdeck.console.screens.help import GLOBAL_KEYS, HelpScreen, binding_ids, console_bindings
from flowdeck.pipeline.config import BUNDLED_CONFIG, parse_config
from flowdeck.pipeline.core.clock import ManualClock


def _app(keys: dict[str, str] | None = None) -> FlowdeckApp:
    state = fixture_state()
    return FlowdeckApp(None, state=state, clock=ManualClock(state.now), keymap=keys)


def test_every_binding_has_an_id_and_no_two_share_one():
    found = console_bindings(FlowdeckApp)
    owners = {cls.__name__ for cls, _b in found}
    # the app, every screen (the eight modes and the drill-downs) and the widgets with keys
    assert {"FlowdeckApp", "DeckScreen", "OverviewScreen", "SourcesScreen", "QualityScreen",
            "CachesScreen", "RecoveryScreen", "DataScreen", "EventsScreen", "IssueScreen",
            "RawScreen", "LineageScreen", "HelpScreen", "DeckTable", "FilterBar", "ScreenMenu",
            "ConfirmScreen"} <= owners
    missing = [(cls.__name__, b) for cls, b in found if not isinstance(b, Binding) or not b.id]
    assert missing == []
    counts = Counter(b.id for _cls, b in found)
    assert [i for i, n in counts.items() if n > 1] == []
    # Textual's own app bindings carry no id that could clash with ours
    assert not {b.id for b in FlowdeckApp.__mro__[1].BINDINGS if isinstance(b, Binding)} \
        & set(counts) - {None}


def test_the_screen_keys_and_the_palette_have_ids():
    ids = binding_ids(FlowdeckApp)
    assert {f"screen.{mode}" for mode in SCREEN_KEYS} <= ids
    assert {"app.palette", "app.help", "app.pause", "app.quit", "table.filter", "table.copy",
            "overview.run_now", "sources.run_now", "recovery.run_now", "quality.ack",
            "issue.ack"} <= ids
    # what the help lists as global keys are real bindings
    assert {binding_id for binding_id, _what in GLOBAL_KEYS} <= ids


def help_rows(app) -> set[tuple[str, ...]]:
    """(key, binding id) of every line of the help on screen."""
    return {tuple(line.strip(" █┃").split()[:2]) for line in screen_text(app).splitlines()}


def _keys_from_config(keys: str) -> dict[str, str]:
    """console.keys as the command line reads it: from the YAML config file."""
    text = BUNDLED_CONFIG.read_text() + f"\nconsole:\n  keys: {keys}\n"
    return parse_config(text, str(BUNDLED_CONFIG), BUNDLED_CONFIG.parent).console.keys


async def test_console_keys_rebinds_a_screen_key():
    keys = _keys_from_config("{screen.quality: g, overview.run_now: u}")
    assert keys == {"screen.quality": "g", "overview.run_now": "u"}
    app = _app(keys)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        assert app.current_mode == "overview"
        await pilot.press("g")
        await wait_for(pilot, lambda: app.current_mode == "quality", "g to show Quality")
        await pilot.press("1")
        await wait_for(pilot, lambda: app.current_mode == "overview", "1 to show Overview")
        await pilot.press("3")  # moved away from 3: it does nothing now
        await pilot.pause(0.2)
        assert app.current_mode == "overview"
        # the footer shows the rebound key of the screen's own binding
        footer = screen_text(app).splitlines()[-1]
        assert " u Run now " in footer and " r Run now " not in footer
        # the menu of screens and the help show the key in effect
        assert app.key_of("screen.quality") == "g"
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen), "the help screen")
        assert ("g", "screen.quality") in help_rows(app)


async def test_an_unknown_binding_id_is_reported():
    app = _app({"screen.nowhere": "z", "app.pause": "P"})
    said: list[str] = []
    notify = app.notify
    app.notify = lambda message, **kw: (said.append(message), notify(message, **kw))[1]
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: said, "the warning")
        assert said == ["console.keys: no binding with id screen.nowhere"]


async def test_help_lists_every_key_with_its_id():
    app = _app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("3", "question_mark")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen), "the help screen")
        rows = help_rows(app)
        for mode, (key, _title) in SCREEN_KEYS.items():
            assert (key, f"screen.{mode}") in rows
        for expected in [("?", "app.help"), ("p", "app.pause"), ("/", "table.filter"),
                         ("y", "table.copy"), ("q", "app.quit"), ("^p", "app.palette"),
                         ("a", "quality.ack"), ("x", "quality.resolve"),
                         ("R", "quality.replay")]:
            assert expected in rows, expected
