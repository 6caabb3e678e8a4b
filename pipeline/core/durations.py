"""The one duration grammar: what a config, a scenario file, ``--since`` and ``--for`` accept.

    duration := number                              seconds: 10, 2.5 (or a YAML number)
              | number unit (number unit)*          10s, 2m, 1h, 250ms, 1d, 1m30s, "10 s"
    number   := digits [ "." digits ]
    unit     := ms | s | m | h | d | w | y         (w: 7 days, y: 365 days; retention)

Whitespace around the whole and between the parts is ignored. A leading ``-`` (or ``+``)
is read only where a negative duration means something (``signed=True``: a scenario's
clock-skew ``offset: -3m``); everywhere else a negative duration is an error.
``format_duration`` writes seconds back in the same grammar, exactly.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from fractions import Fraction
from typing import Any

# Seconds per unit, exact: a value is summed exactly and rounded to a float once.
UNITS = {"ms": Fraction(1, 1000), "s": Fraction(1), "m": Fraction(60), "h": Fraction(3600),
         "d": Fraction(86400), "w": Fraction(7 * 86400), "y": Fraction(365 * 86400)}

_NUMBER = r"\d+(?:\.\d+)?"
_PART = re.compile(rf"({_NUMBER})\s*(ms|s|m|h|d|w|y)")
_WHOLE = re.compile(rf"\s*([+-]?)\s*(?:({_NUMBER})|((?:{_NUMBER}\s*(?:ms|s|m|h|d|w|y)\s*)+))\s*")

HINT = "expected a duration like '10s', '2m' or '1h'"


def parse_duration(value: Any, *, signed: bool = False) -> float:
    """``'10s'``, ``'2m'``, ``'1h'``, ``'250ms'``, ``'1m30s'`` or a number of seconds ->
    seconds (float). Raises ValueError (``HINT``) for anything else, and for a negative
    duration unless ``signed``."""
    if isinstance(value, bool):
        raise ValueError(HINT)
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _WHOLE.fullmatch(value)):
        sign, number, parts = m.groups()
        if number is not None:
            seconds = float(number)
        else:
            seconds = float(sum(Fraction(n) * UNITS[u] for n, u in _PART.findall(parts)))
        if sign == "-":
            seconds = -seconds
    else:
        raise ValueError(f"{HINT}, got {value!r}")
    if seconds < 0 and not signed:
        raise ValueError("a duration cannot be negative")
    return seconds + 0.0  # -0.0 -> 0.0


def format_duration(seconds: float) -> str:
    """Seconds in the grammar above, largest units first: 90 -> '1m30s', 0.25 -> '250ms',
    3600 -> '1h', 0 -> '0s'. ``parse_duration(format_duration(x), signed=True) == x`` for
    every x that is a whole number of milliseconds; other fractions are written as
    seconds ('1.2345s'), also exactly."""
    if not math.isfinite(seconds):
        raise ValueError(f"not a finite duration: {seconds!r}")
    sign, rest = ("-", -seconds) if seconds < 0 else ("", seconds)
    ms = round(rest * 1000)
    if ms / 1000 != rest:  # not whole milliseconds: the shortest exact decimal seconds
        return f"{sign}{Decimal(repr(rest)):f}s"
    if ms == 0:
        return "0s"
    out = []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000),
                       ("ms", 1)):
        n, ms = divmod(ms, size)
        if n:
            out.append(f"{n}{unit}")
    return sign + "".join(out)


YEAR = 365.25 * 86400


def human_duration(seconds: float) -> str:
    """A duration for people, in the unit that reads best: '45s', '12 minutes', '5.5 hours',
    '3.2 days', '10.1 years' (days up to 90 days, years beyond; one decimal from hours on).
    Not parseable: messages use it, configs use :func:`format_duration`."""
    if not math.isfinite(seconds):
        return str(seconds)
    sign, s = ("-", -seconds) if seconds < 0 else ("", seconds)
    if s < 120:
        text = f"{s:.0f}s" if s >= 1 or s == 0 else f"{s * 1000:.0f}ms"
    elif s < 2 * 3600:
        text = f"{s / 60:.0f} minutes"
    elif s < 2 * 86400:
        text = f"{s / 3600:.1f} hours"
    elif s < 90 * 86400:
        text = f"{s / 86400:.1f} days"
    else:
        text = f"{s / YEAR:.1f} years"
    return sign + text
