"""The one duration grammar (flowdeck.pipeline.core.durations): configs, scenarios, --since."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml

from flowdeck.pipeline.config import BUNDLED_DIR
from flowdeck.pipeline.core.durations import HINT, format_duration, parse_duration
from flowdeck.pipeline.serve.queries import parse_since


@pytest.mark.parametrize("text,seconds", [
    ("10s", 10), ("2m", 120), ("1h", 3600), ("1d", 86400), ("250ms", 0.25), ("1.5h", 5400),
    ("1m30s", 90), ("1h2m3s4ms", 3723.004), ("10 s", 10), (" 1h ", 3600), ("1 m 30 s", 90),
    ("5", 5), ("2.5", 2.5), ("0s", 0), ("+5s", 5), (5, 5), (2.5, 2.5), (0, 0),
])
def test_what_the_grammar_reads(text, seconds):
    assert parse_duration(text) == seconds
    assert isinstance(parse_duration(text), float)


@pytest.mark.parametrize("text", [
    "10x", "", " ", "s", "m30s", "1m-30s", "1m 30", "1.s", ".5s", "1e3", "inf", "nan", "1_000s",
    "10 seconds", "1h+2m", None, [], {"s": 1},
])
def test_what_it_refuses_and_how_it_says_so(text):
    with pytest.raises(ValueError) as exc:
        parse_duration(text)
    assert str(exc.value) == f"{HINT}, got {text!r}"


def test_the_config_error_message_is_kept():
    # tests/unit/test_config.py checks it within a config error line.
    with pytest.raises(ValueError, match=r"^expected a duration like '10s', '2m' or '1h', got '10x'$"):
        parse_duration("10x")
    with pytest.raises(ValueError, match=r"^expected a duration like '10s', '2m' or '1h'$"):
        parse_duration(True)


@pytest.mark.parametrize("value", ["-10m", "-1", -1, -0.5, "- 3m"])
def test_negative_durations_only_where_they_mean_something(value):
    with pytest.raises(ValueError, match="a duration cannot be negative"):
        parse_duration(value)
    assert parse_duration(value, signed=True) < 0


def test_signed_durations():
    assert parse_duration("-10m", signed=True) == -600
    assert parse_duration("-1m30s", signed=True) == -90  # the sign is the whole duration's
    assert parse_duration("-0s", signed=True) == 0.0
    assert str(parse_duration("-0s", signed=True)) == "0.0"


def test_every_bundled_scenario_and_the_demo_config_parse():
    # The grammar is the union of what the two old ones read: every shipped file still reads.
    from flowdeck.pipeline.config import load_config
    from flowdeck.pipeline.demo.scenarios import Scenario, available_scenarios

    assert load_config(BUNDLED_DIR / "flows" / "demo.yaml").flows
    names = available_scenarios()
    assert len(names) >= 10
    for name in names:
        assert Scenario.load(name).name == name
    skew = yaml.safe_load((BUNDLED_DIR / "scenarios" / "clock-skew.yaml").read_text())
    assert [f.get("offset") for f in skew["faults"]] == ["10m", "-3m"]
    assert [f.offset for f in Scenario.load("clock-skew").faults] == [600, -180]


@pytest.mark.parametrize("seconds,text", [
    (0, "0s"), (10, "10s"), (90, "1m30s"), (120, "2m"), (3600, "1h"), (5400, "1h30m"),
    (86400, "1d"), (0.25, "250ms"), (2.5, "2s500ms"), (3723.004, "1h2m3s4ms"), (-180, "-3m"),
    (1.2345, "1.2345s"), (1e-7, "0.0000001s"),
])
def test_format_writes_the_grammar(seconds, text):
    assert format_duration(seconds) == text
    assert parse_duration(text, signed=True) == seconds


def test_format_and_parse_round_trip_exactly():
    rnd = random.Random(13)
    values = [rnd.randrange(0, 10**12) / 1000 for _ in range(2000)]
    values += [rnd.random() * 10 ** rnd.randrange(-6, 7) for _ in range(2000)]
    for x in values + [-v for v in values[:500]]:
        assert parse_duration(format_duration(x), signed=True) == x, x


def test_format_refuses_what_is_not_a_duration():
    for bad in (float("inf"), float("nan")):
        with pytest.raises(ValueError):
            format_duration(bad)


def test_since_reads_a_duration_ago_in_the_same_grammar():
    now = 1_795_521_600_000
    assert parse_since("15m", now) == now - 900_000
    assert parse_since("2h", now) == now - 7_200_000
    assert parse_since("1h30m", now) == now - 5_400_000
    assert parse_since("250ms", now) == now - 250
    assert parse_since("1795521600000", now) == 1_795_521_600_000  # a bare number: epoch ms
    assert parse_since("2026-11-24T12:00:00Z", now) == now
    assert parse_since("2026-11-24", now) == now - 12 * 3_600_000
    assert parse_since(None, now) is None
    for bad in ("yesterday", "-15m", "1.5", "15x"):
        with pytest.raises(ValueError, match="cannot read time"):
            parse_since(bad, now)


def test_no_module_keeps_a_grammar_of_its_own():
    root = Path(__file__).parents[2]
    for path in [*root.joinpath("pipeline").rglob("*.py"), *root.joinpath("console").rglob("*.py")]:
        text = path.read_text()
        if path.name == "durations.py":
            continue
        assert "def parse_duration" not in text, path
        assert "(ms|s|m|h|d)" not in text, path
