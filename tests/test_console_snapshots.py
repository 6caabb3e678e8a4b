"""Every screen, pictured: dark and high-contrast, at 80x24 and 120x40, from fixed state.

The state is a recorded engine snapshot (tests/fixtures/console_state.json) and the
clock is fixed, so each picture is the same every run. When a screen changes on
purpose: `pytest tests/test_console_snapshots.py --snapshot-update`, then look at
the new SVGs (tests/__snapshots__/) before committing them.
"""

from __future__ import annotations

import pytest
from console_support import make_app

SCREENS = {"overview": "1", "sources": "2", "quality": "3", "recovery": "4", "data": "5",
           "insights": "6", "events": "7"}
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
    assert snap_compare(make_app("dark"), press=["4", "b", "_"], terminal_size=(100, 30))
