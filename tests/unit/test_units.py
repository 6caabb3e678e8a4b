"""Tests for flowdeck.pipeline.units: pint-backed affine unit conversion."""

from __future__ import annotations

import math

import pytest

from flowdeck.pipeline.units import UnitError, affine, check_unit, convert_values


def convert(value: float, src: str, dst: str) -> float:
    a, b = affine(src, dst)
    return a * value + b


@pytest.mark.parametrize(
    "name",
    [
        "degF",
        "degC",
        "K",
        "kelvin",
        "inHg",
        "hPa",
        "Pa",
        "mbar",
        "mph",
        "m/s",
        "km/h",
        "knot",
        "percent",
        "mm",
        "inch",
        "m**2",
        "m^2/s^2",
        "(m/s)**2",
    ],
)
def test_config_aliases_are_known(name: str) -> None:
    check_unit(name)  # does not raise


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("degFF", "unknown unit 'degFF'"),
        ("furlongs_per_fortnightx", "unknown unit 'furlongs_per_fortnightx'"),
        ("", "unit name is empty"),
        ("   ", "unit name is empty"),
        ("2*m", "invalid unit '2*m'"),
        ("m**10**10**10", "invalid unit"),  # would hang pint: numeric power tower
        ("m**99", "invalid unit"),
        ("m" * 101, "too long"),
    ],
)
def test_check_unit_rejects(name: str, message: str) -> None:
    with pytest.raises(UnitError, match=message.replace("*", r"\*")):
        check_unit(name)


def test_unit_error_is_value_error() -> None:
    with pytest.raises(ValueError):
        check_unit("degFF")


def test_fahrenheit_to_celsius() -> None:
    assert convert(32, "degF", "degC") == pytest.approx(0.0, abs=1e-12)
    assert convert(212, "degF", "degC") == pytest.approx(100.0)
    assert convert(-40, "degF", "degC") == pytest.approx(-40.0)
    a, b = affine("degF", "degC")
    assert a == pytest.approx(5 / 9, rel=1e-15)
    assert b == pytest.approx(-160 / 9, rel=1e-15)
    assert convert_values([32, 212], a, b) == [0.0, 100.0]  # exact, no 1e-14 residue


def test_celsius_kelvin_fahrenheit() -> None:
    assert convert(100, "degC", "degF") == pytest.approx(212.0)
    assert convert(0, "degC", "K") == pytest.approx(273.15)
    assert convert(0, "K", "degC") == pytest.approx(-273.15)
    assert convert(0, "kelvin", "degF") == pytest.approx(-459.67)
    assert convert(273.15, "K", "degF") == pytest.approx(32.0)


def test_pressure() -> None:
    assert convert(29.92, "inHg", "hPa") == pytest.approx(1013.2, abs=0.05)
    assert convert(1013.25, "hPa", "Pa") == pytest.approx(101325.0)
    assert affine("mbar", "hPa") == pytest.approx((1.0, 0.0))


def test_speed() -> None:
    assert affine("mph", "m/s") == pytest.approx((0.44704, 0.0))
    assert convert(10, "m/s", "km/h") == pytest.approx(36.0)
    assert convert(1, "knot", "km/h") == pytest.approx(1.852)


def test_length_and_percent() -> None:
    assert convert(25.4, "mm", "inch") == pytest.approx(1.0)
    assert convert(50, "percent", "dimensionless") == pytest.approx(0.5)


@pytest.mark.parametrize("unit", ["degF", "degC", "K", "hPa", "m/s", "percent"])
def test_identity(unit: str) -> None:
    assert affine(unit, unit) == (1.0, 0.0)


def test_round_trip() -> None:
    a1, b1 = affine("degF", "K")
    a2, b2 = affine("K", "degF")
    for value in (-40.0, 0.0, 98.6, 451.0):
        assert a2 * (a1 * value + b1) + b2 == pytest.approx(value)


def test_incompatible_units() -> None:
    with pytest.raises(UnitError, match="^cannot convert mph to degC: different dimensions$"):
        affine("mph", "degC")
    with pytest.raises(UnitError, match="different dimensions"):
        affine("hPa", "mm")


def test_affine_unknown_unit() -> None:
    with pytest.raises(UnitError, match="unknown unit 'degFF'"):
        affine("degFF", "degC")
    with pytest.raises(UnitError, match="unknown unit 'zork'"):
        affine("degC", "zork")


def test_affine_is_cached() -> None:
    affine("knot", "m/s")
    before = affine.cache_info().hits
    assert affine("knot", "m/s") == affine("knot", "m/s")
    assert affine.cache_info().hits == before + 2


def test_affine_returns_plain_floats() -> None:
    a, b = affine("degF", "degC")
    assert type(a) is float and type(b) is float


def test_convert_values_keeps_non_numbers() -> None:
    marker = object()
    values = [0, 10.0, None, "12", True, marker, float("nan")]
    out = convert_values(values, 2.0, 1.0)
    assert out[:6] == [1.0, 21.0, None, "12", True, marker]
    assert math.isnan(out[6])
    assert values[0] == 0  # input untouched


def test_convert_values_scale_only_and_identity() -> None:
    assert convert_values([1, 2.5, None], 3.0, 0.0) == [3.0, 7.5, None]
    values = [1, 2.5, None]
    copy = convert_values(values, 1.0, 0.0)
    assert copy == values and copy is not values
    assert convert_values([], 2.0, 1.0) == []
