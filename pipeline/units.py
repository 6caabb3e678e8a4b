"""Unit conversion via pint, reduced to one affine map per (source, target) pair.

Every supported conversion is affine (``dst = a * src + b``; ``b`` is non-zero
only for offset scales such as degF/degC), so a pair of units is resolved once
with pint (:func:`affine`, cached) and whole columns are then converted with a
plain list comprehension (:func:`convert_values`).  The pint registry is slow
to build, so it is created lazily on first use and shared.
"""

from __future__ import annotations

import re
import threading
from fractions import Fraction
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pint

__all__ = ["UnitError", "affine", "check_unit", "convert_values", "unit_code"]

MAX_UNIT_LENGTH = 100

_registry: pint.UnitRegistry | None = None
_registry_lock = threading.Lock()

# pint evaluates numeric powers in unit expressions, so "m**10**10**10" would
# take forever.  Only allow small literal exponents, and only a few of them.
_POWER = re.compile(r"\*\*|\^")
_SMALL_EXPONENT = re.compile(r"(?:\*\*|\^)\s*[-+]?\d(?:\.\d+)?(?![\d.]|\s*(?:\*\*|\^))")
_MAX_POWERS = 3


class UnitError(ValueError):
    """A unit name is unknown, or two units cannot be converted into each other."""


def _ureg() -> pint.UnitRegistry:
    """The shared pint registry, built on first use."""
    global _registry
    if _registry is None:
        with _registry_lock:
            if _registry is None:
                import pint

                # Exact rational arithmetic: conversion factors are computed
                # once per unit pair, so precision costs nothing per value.
                _registry = pint.UnitRegistry(non_int_type=Fraction)
    return _registry


@lru_cache(maxsize=512)
def _parse_unit(name: str) -> pint.Unit:
    """Parse a unit name with pint; UnitError if it is not a plain, known unit."""
    if not isinstance(name, str):
        raise UnitError(f"unit must be a string, not {type(name).__name__}")
    if not name.strip():
        raise UnitError("unit name is empty")
    if len(name) > MAX_UNIT_LENGTH:
        raise UnitError(f"unit name is too long ({len(name)} characters, max {MAX_UNIT_LENGTH})")
    powers = len(_POWER.findall(name))
    if powers > _MAX_POWERS or len(_SMALL_EXPONENT.findall(name)) != powers:
        raise UnitError(f"invalid unit '{name}': exponents must be small numbers like m**2")
    import pint

    try:
        return _ureg().parse_units(name)
    except pint.UndefinedUnitError:
        raise UnitError(f"unknown unit '{name}'") from None
    except (pint.PintError, ValueError, TypeError, AttributeError, SyntaxError) as exc:
        raise UnitError(f"invalid unit '{name}': {exc}") from None
    except Exception as exc:  # pint's parser on e.g. "(m" (TokenError) or "/" (assert)
        raise UnitError(f"invalid unit '{name}': cannot parse it ({type(exc).__name__})") from None


def check_unit(name: str) -> None:
    """Raise :class:`UnitError` unless ``name`` is a unit pint knows (e.g. ``degF``, ``m/s``)."""
    _parse_unit(name)


@lru_cache(maxsize=1024)
def affine(src: str, dst: str) -> tuple[float, float]:
    """Return ``(a, b)`` such that ``value_in_dst = a * value_in_src + b``.

    Found by converting 0 and 1 ``src`` to ``dst`` with pint; offset units
    (degF, degC, K) are handled as absolute temperatures.  The registry works
    in exact fractions, so e.g. degF -> degC gives exactly (5/9, -160/9)
    rounded once to float, and 32 degF converts to exactly 0.0 degC.
    """
    src_unit = _parse_unit(src)
    dst_unit = _parse_unit(dst)
    import pint

    quantity = _ureg().Quantity
    try:
        at_zero = quantity(Fraction(0), src_unit).to(dst_unit).magnitude
        at_one = quantity(Fraction(1), src_unit).to(dst_unit).magnitude
    except pint.DimensionalityError:
        raise UnitError(f"cannot convert {src} to {dst}: different dimensions") from None
    except (pint.PintError, ValueError, TypeError) as exc:
        raise UnitError(f"cannot convert {src} to {dst}: {exc}") from None
    return float(at_one - at_zero), float(at_zero)


def convert_values(values: list[Any], a: float, b: float) -> list[Any]:
    """Apply ``a * v + b`` to every int/float in ``values``; anything else is kept as is.

    ``None``, strings, booleans and other non-numbers pass through unchanged.
    Converted values are floats; for the identity map ``(1.0, 0.0)`` the result
    is a plain copy of ``values``.
    """
    if a == 1.0 and b == 0.0:
        return list(values)
    if b == 0.0:
        return [a * v if (v.__class__ is float or v.__class__ is int) else v for v in values]
    return [a * v + b if (v.__class__ is float or v.__class__ is int) else v for v in values]


# Unit codes as APIs write them beside values: WMO codes (``wmoUnit:degC``, ``unit:m_s-1``,
# ``wmoUnit:km_h-1``) and the symbols of side tables (``°C``, ``km/h``, ``%``).
_CODE_NAMES = {
    "percent": "percent", "%": "percent", "degree_(angle)": "degree", "°": "degree",
    "degC": "degC", "°C": "degC", "degF": "degF", "°F": "degF", "K": "K",
    "kn": "knot", "kt": "knot", "knots": "knot", "mph": "mph", "inch": "inch", "in": "inch",
    "W/m²": "W/m**2", "m²": "m**2", "m³": "m**3", "mm/h": "mm/h",
}
_CODE_PREFIX = re.compile(r"^(?:wmoUnit|wmo|unit|uom):", re.IGNORECASE)
_WMO_FACTOR = re.compile(r"^([A-Za-z]+)(-?[1-4])?$")


@lru_cache(maxsize=256)
def unit_code(code: str) -> str:
    """The pint unit name for a unit code read from a payload; UnitError if unknown.

    ``wmoUnit:degC`` -> ``degC``, ``unit:m_s-1`` -> ``m * s**-1``, ``wmoUnit:km_h-1`` ->
    ``km * h**-1``, ``wmoUnit:Pa`` -> ``Pa``, ``wmoUnit:percent`` -> ``percent``,
    ``°C`` -> ``degC``, ``km/h`` stays ``km/h``. A code pint does not know is refused,
    never guessed.
    """
    if not isinstance(code, str) or not code.strip():
        raise UnitError(f"unit code must be a non-empty string, got {code!r}")
    if len(code) > MAX_UNIT_LENGTH:
        raise UnitError(f"unit code is too long ({len(code)} characters)")
    bare = _CODE_PREFIX.sub("", code.strip())
    name = _CODE_NAMES.get(bare)
    if name is None and "_" in bare and "/" not in bare and "*" not in bare:
        factors = []
        for part in bare.split("_"):
            m = _WMO_FACTOR.match(part)
            if not m:
                raise UnitError(f"unknown unit code '{code}'")
            factors.append(m.group(1) + (f"**{m.group(2)}" if m.group(2) else ""))
        name = " * ".join(factors)
    if name is None:
        name = bare
    try:
        check_unit(name)
    except UnitError:
        raise UnitError(f"unknown unit code '{code}'") from None
    return name
