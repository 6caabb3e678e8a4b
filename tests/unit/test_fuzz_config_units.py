"""Fuzzing the config loader and unit conversion (issue 15, item 1).

The config loader, given any text (random YAML, and the bundled demo with random parts
replaced by random values), returns a Config or raises ConfigError whose every problem
reads ``file:line: field: problem`` (``file: problem`` when no line applies): never a
traceback from PyYAML, pydantic or a validator. Unit names and conversions: UnitError
or a finite linear map, and conversions never raise.
"""

from __future__ import annotations

import copy
import math
import os
import re
from datetime import timedelta

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowdeck.pipeline.config import BUNDLED_CONFIG, Config, ConfigError, parse_config
from flowdeck.pipeline.units import UnitError, affine, check_unit, convert_values

EXAMPLES = int(os.environ.get("FLOWDECK_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=timedelta(seconds=5),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FILE = "fuzz.yaml"
PROBLEM = re.compile(rf"^{re.escape(FILE)}(:\d+)?: .*\S", re.S)
DEMO = yaml.safe_load(BUNDLED_CONFIG.read_text())


def load(text: str) -> None:
    try:
        cfg = parse_config(text, FILE, base_dir=BUNDLED_CONFIG.parent)
    except ConfigError as exc:
        assert exc.problems
        for p in exc.problems:
            assert PROBLEM.match(str(p)), str(p)
            assert "Traceback" not in str(p)
        return
    assert isinstance(cfg, Config)


yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=15),
                         st.sampled_from(["1h", "-5s", "10x", "0s", "1e9d", "256MB", "degF",
                                          "m/s", "^[A-Z", "x * 2", "__import__('os')",
                                          "9**9**9", "*", "&a", "!!python/object:os.system",
                                          "{every: 1s}", "[1, 2]"]))
yaml_values = st.recursive(
    yaml_scalars,
    lambda kids: st.one_of(st.lists(kids, max_size=3),
                           st.dictionaries(st.text(max_size=8), kids, max_size=3)),
    max_leaves=15,
)


@FUZZ
@given(text=st.text(max_size=300))
def test_any_text(text):
    load(text)


@FUZZ
@given(doc=yaml_values)
def test_any_yaml_document(doc):
    load(yaml.safe_dump(doc))


@FUZZ
@given(doc=st.dictionaries(st.sampled_from(["flows", "store", "feed", "cache", "console",
                                             "alerts", "bogus"]), yaml_values, max_size=4))
def test_any_top_level_sections(doc):
    load(yaml.safe_dump(doc))


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


DEMO_PATHS = [p for p in _paths(DEMO) if p]


@FUZZ
@given(edits=st.lists(st.tuples(st.sampled_from(DEMO_PATHS), yaml_values), min_size=1,
                      max_size=4))
def test_the_demo_with_random_parts_replaced(edits):
    doc = copy.deepcopy(DEMO)
    for path, value in edits:
        node = doc
        try:
            for k in path[:-1]:
                node = node[k]
            node[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit replaced the parent
    load(yaml.safe_dump(doc, sort_keys=False))


@FUZZ
@given(text=st.text(max_size=200), at=st.integers(0, 10_000))
def test_the_demo_text_with_random_text_spliced_in(text, at):
    src = BUNDLED_CONFIG.read_text()
    at %= len(src) + 1
    load(src[:at] + text + src[at:])


# ------------------------------------------------------------------ units

UNIT_WORDS = ["m", "s", "km", "h", "degC", "degF", "K", "hPa", "inHg", "mph", "m/s", "km/h",
              "kelvin", "percent", "dimensionless", "1", "nonsense", "", " ", "m**2", "m^2",
              "m**99999", "m**9**9", "(m", "m)", "/", "*", "__class__", "eval('1')", "1e999",
              "m**-1", "°C", "degC/s", "knot", "bar", "Pa*m"]
units = st.one_of(st.sampled_from(UNIT_WORDS),
                  st.lists(st.sampled_from(UNIT_WORDS + ["*", "/", "**", "2", " "]),
                           max_size=6).map("".join),
                  st.text(max_size=20))


@FUZZ
@given(src=units, dst=units,
       values=st.lists(st.one_of(st.floats(), st.integers(-(2**70), 2**70), st.none(),
                                 st.text(max_size=3), st.booleans()), max_size=6))
def test_unit_conversion_is_a_clear_error_or_a_finite_linear_map(src, dst, values):
    try:
        check_unit(src)
        a, b = affine(src, dst)
    except UnitError as exc:
        assert str(exc)
        return
    assert math.isfinite(a) and math.isfinite(b)
    out = convert_values(values, a, b)
    assert len(out) == len(values)
    for v, w in zip(values, out, strict=True):
        if type(v) in (int, float):
            assert isinstance(w, float | int)
        else:
            assert w is v


def test_what_the_fuzzers_found_is_a_clear_error():
    """Found by the properties above: a control character in the file (PyYAML's reader
    raised before the loader's error handling) and a unit name pint's tokenizer cannot
    read (TokenError, AssertionError escaped check_unit and the config validators)."""
    for text, where in (("flows:\n  w:\x08 1\n", "fuzz.yaml:2: "),
                        (BUNDLED_CONFIG.read_text().replace("degF", "(degF"), "fuzz.yaml:")):
        try:
            parse_config(text, FILE, base_dir=BUNDLED_CONFIG.parent)
        except ConfigError as exc:
            assert str(exc).startswith(where), str(exc)
        else:
            raise AssertionError("accepted")
    for name in ("(m", "m)", "/", "*"):
        try:
            check_unit(name)
        except UnitError as exc:
            assert "invalid unit" in str(exc)
        else:
            raise AssertionError(name)
