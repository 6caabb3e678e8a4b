"""The console's widgets, one per module (as in Textual's own ``textual.widgets``).

Importing any of them applies ``textual_fixes`` first: every screen draws through
these widgets, so the fix to ``Strip.divide`` is installed here, once. Their styles
are in ``console/styles/widgets.tcss`` (and one stylesheet per dialog), loaded by the
app. The names below are the public ones; screens import them from this package:

- ``StatusHeader`` (header.py): the status line at the top of every screen.
- ``KeyBar`` (key_bar.py): the footer, the keys that apply here, clickable.
- ``Col``, ``DeckTable`` (deck_table.py): a column; the sortable, filterable table of
  dict rows, with its ``RowHighlighted`` / ``RowSelected`` messages.
- ``FilterBar`` (filter_bar.py): the `/` filter input of a screen's table.
- ``ScreenMenu`` (screen_menu.py): the menu of screens the header opens.
- ``ConfirmScreen`` (confirm.py): the yes/no dialog of destructive actions.
- ``StageChain`` (stage_chain.py): a flow's stages with live counts (Overview).
- ``SourceDetail`` (source_detail.py): one source in full and its failover chain
  (Sources); the chain's helpers (``failover_ranks``, ``role_word``) live beside it.
- ``status_text``, ``sparkline``, ``STATUS_STYLE`` (cells.py): a status as symbol +
  word in the theme's colour, a text sparkline; ``flow_state_text``: a flow's state, or
  its maintenance window's marker while one is in force.
"""

from __future__ import annotations

from flowdeck.console import textual_fixes

textual_fixes.apply()

# The fix is installed before any widget module is imported (their import runs this first).
from flowdeck.console.widgets.cells import (  # noqa: E402
    STATUS_STYLE,
    flow_state_text,
    sparkline,
    status_text,
)
from flowdeck.console.widgets.confirm import ConfirmScreen  # noqa: E402
from flowdeck.console.widgets.deck_table import Col, DeckTable  # noqa: E402
from flowdeck.console.widgets.filter_bar import FilterBar  # noqa: E402
from flowdeck.console.widgets.header import StatusHeader  # noqa: E402
from flowdeck.console.widgets.key_bar import KeyBar  # noqa: E402
from flowdeck.console.widgets.screen_menu import ScreenMenu  # noqa: E402
from flowdeck.console.widgets.source_detail import SourceDetail  # noqa: E402
from flowdeck.console.widgets.stage_chain import StageChain  # noqa: E402

__all__ = [
    "STATUS_STYLE", "Col", "ConfirmScreen", "DeckTable", "FilterBar", "KeyBar", "ScreenMenu",
    "SourceDetail", "StageChain", "StatusHeader", "flow_state_text", "sparkline",
    "status_text",
]
