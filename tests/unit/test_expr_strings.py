"""The string functions of the expression language: split, regex, replace, substr,
to_number, to_str; regex patterns checked and compiled once, at config load."""

from __future__ import annotations

import pytest

from flowdeck.pipeline.config import ConfigError, parse_config
from flowdeck.pipeline.expr import ExprError, compile_expr


def ev(text: str, **env):
    return compile_expr(text)(env)


URL = "https://api.example.gov/stations/KCNK"


@pytest.mark.parametrize(
    ("text", "env", "want"),
    [
        (r'regex(u, "/stations/([A-Z0-9]+)$")', {"u": URL}, "KCNK"),
        (r'regex(u, "([a-z]+)://([^/]+)", 2)', {"u": URL}, "api.example.gov"),
        (r'regex(u, "stations")', {"u": URL}, "stations"),  # no group: the whole match
        (r'regex(u, "/nothing/(\d+)")', {"u": URL}, None),
        (r'regex(u, "(x)?KCNK")', {"u": URL}, None),  # group that did not take part
        ('regex(u, "(K)")', {"u": None}, None),
        ('regex(u, "(K)")', {"u": 12}, None),
        ('split(u, "/", -1)', {"u": URL}, "KCNK"),
        ('split(u, "/", 2)', {"u": URL}, "api.example.gov"),
        ('split(u, "/", 99)', {"u": URL}, None),
        ('split(u, "", 0)', {"u": URL}, None),
        ('replace(u, "wmoUnit:", "")', {"u": "wmoUnit:degC"}, "degC"),
        ('replace(u, "", "x")', {"u": "abc"}, None),
        ('replace(u, "a", "bbbbbbbbbb")', {"u": "a" * 5000}, None),  # result over 10,000
        ("substr(u, 0, 3)", {"u": "KCNK01"}, "KCN"),
        ("substr(u, -2)", {"u": "KCNK01"}, "01"),
        ("substr(u, 1.5)", {"u": "KCNK01"}, None),
        ("to_number(x)", {"x": " 12 "}, 12),
        ("to_number(x)", {"x": "-1.5e3"}, -1500.0),
        ("to_number(x)", {"x": "12 m"}, None),
        ("to_number(x)", {"x": "nan"}, None),
        ("to_number(x)", {"x": 3.5}, 3.5),
        ("to_str(x)", {"x": 900}, "900"),
        ("to_str(x)", {"x": True}, "true"),
        ("to_str(x)", {"x": "a"}, "a"),
        ("concat(split(u, '/', -1), '-', to_str(n))", {"u": URL, "n": 2}, "KCNK-2"),
    ],
)
def test_string_functions(text, env, want):
    assert ev(text, **env) == want


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (r'regex(u, "(a)\\1")', "back-references"),
        (r'regex(u, "(?P<x>a)(?P=x)")', "back-references"),
        ('regex(u, "(?=a)b")', "look-ahead"),
        ('regex(u, "(?<!a)b")', "look-ahead and look-behind"),
        ('regex(u, "(?>a+)b")', "atomic groups"),
        ('regex(u, "a*+b")', "possessive"),
        ('regex(u, "(a")', "bad regex pattern"),
        ("regex(u, p)", "pattern as a constant string"),
        ('regex(u, "(a)", g)', "group as a constant integer"),
        ('regex(u, "(a)", 2)', "no group 2"),
        ('regex(u, "a{1,2000}")', "RE2"),  # RE2 refuses repeats over 1000
        ('regex(u, "' + "a" * 201 + '")', "too long"),
        ("split(u)", "split() takes 3 arguments"),
        ("u.split('/')", "attribute access"),
        ("__import__('os')", "not allowed"),
    ],
)
def test_refused_at_compile_time(text, message):
    with pytest.raises(ExprError, match=message.replace("(", r"\(").replace(")", r"\)")):
        compile_expr(text)


def test_patterns_that_backtrack_catastrophically_elsewhere_run_in_linear_time():
    # (a+)+$ against 'aaa...a!' takes exponential time in a backtracking engine; RE2 answers
    # at once. The test's own timeout would catch a regression to `re`.
    assert ev('regex(x, "(a+)+$")', x="a" * 9_999 + "!") is None
    assert ev('regex(x, "(a|aa)+$")', x="a" * 9_999 + "!") is None
    assert ev('regex(x, "^(a+)+$")', x="a" * 50) == "a" * 50


def test_input_longer_than_the_cap_gives_null():
    assert ev('regex(x, "(a)")', x="a" * 10_001) is None


CONFIG = """\
flows:
  obs:
    key: station
    sources:
      - name: nws
        kind: file
        path: obs.json
        fields: {{station_url: station, ts: time}}
    fields:
      station_url: {{type: str}}
    derive:
      station: '{expr}'
"""


def test_a_bad_pattern_is_refused_at_config_load_with_file_and_line():
    with pytest.raises(ConfigError) as err:
        parse_config(CONFIG.format(expr=r'regex(station_url, "(?=K)(\\w+)")'), "flows.yaml")
    (problem,) = err.value.problems
    assert str(problem).startswith("flows.yaml:12: flows.obs.derive.station: bad expression: "
                                   "regex pattern uses look-ahead")


def test_a_key_cut_from_a_url_passes_config_load():
    cfg = parse_config(CONFIG.format(expr=r'regex(station_url, "/stations/(\\w+)$")'),
                       "flows.yaml")
    assert cfg.flows["obs"].key_fields == ["station"]
