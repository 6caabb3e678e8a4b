"""Every screen, pictured: dark and high-contrast, at 80x24 and 120x40, from fixed state.

The state is a recorded engine snapshot (tests/support/fixtures/console_state.json) and the
clock is fixed, so each picture is the same every run. When a screen changes on
purpose: `pytest tests/test_console_snapshots.py --snapshot-update`, then look at
the new SVGs (tests/__snapshots__/) before committing them.
"""

from __future__ import annotations

import pytest
from support.console import FixtureControl, make_app

SCREENS = {"overview": "1", "sources": "2", "quality": "3", "caches": "4", "recovery": "5",
           "data": "6", "insights": "7", "events": "8"}
SIZES = {"80x24": (80, 24), "120x40": (120, 40)}


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("theme", ["dark", "high-contrast"])
@pytest.mark.parametrize("screen", SCREENS)
def test_screen(snap_compare, screen, theme, size):
    assert snap_compare(make_app(theme), press=[SCREENS[screen], "_"],
                        terminal_size=SIZES[size])


@pytest.mark.parametrize("theme", ["dark", "light"])
def test_help(snap_compare, theme):
    assert snap_compare(make_app(theme), press=["3", "question_mark", "_"],
                        terminal_size=(120, 40))


def test_confirmation_dialog(snap_compare):
    # with a Control (without one, an action only says "not connected")
    app = make_app("dark", control=FixtureControl())
    assert snap_compare(app, press=["5", "b", "_"], terminal_size=(100, 30))
