"""One fix to Textual's drawing that the console's responsiveness depends on.

Textual's compositor cuts every line it draws with ``Strip.divide``; a line that
needs no cut comes back as ``[self]``, and ``divide`` keeps that list in the strip's
own cache. Each such strip then refers to itself: a reference cycle that only the
garbage collector's cycle search can free. Every line of every frame made one, so
at ten repaints a second the console left ~450 new cycles (≈ 7,000 objects) a
second, and collecting them took pauses of 30-80 ms (measured with ``gc.callbacks``
while bench/bench_console.py ran at 10,000 records/s): the slowest key-to-repaints.

``divide`` here returns the same ``[self]`` without caching it, which is all the
cache saved (it also cached real cuts, which are kept as they are). The behaviour
is Textual's own otherwise; tests/test_console_table.py checks that drawing leaves
no cyclic strips, so a Textual release that changes ``divide`` is noticed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from textual.strip import Strip

_textual_divide = Strip.divide


def _divide(self: Strip, cuts: Iterable[int]) -> Sequence[Strip]:
    cuts = list(cuts)
    if [cut for cut in cuts if cut <= self.cell_length] == [self.cell_length]:
        return [self]  # not cached: a strip whose cache holds itself is a cycle
    return _textual_divide(self, cuts)


def apply() -> None:
    """Install the fix (idempotent)."""
    Strip.divide = _divide
