"""JSON Lines read whole (one orjson call for the payload) give exactly what reading them
line by line gives: the same items, the same BadItems (index, reason, message, text),
for clean payloads and for odd ones (bad, blank, BOM, CRLF, NaN, huge ints, values or
strings that would cross a line once the lines are joined)."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowdeck.pipeline.payload import (
    _DIGITS_TO_9,
    _LONG_DIGITS,
    _jsonl_lines,
    _jsonl_whole,
    decode_text,
    parse_payload,
)

ODD_LINES = [
    "", " ", "\r", "\t", "NaN", '{"a": NaN}', '{"a": Infinity}', '{"a": -Infinity}',
    "[1, 2]", "3", '"s"', "null", "{", "}", "]", '{"a": [1', "2]}", "{}, {}", "{},{}",
    '{"a": 1}{"b": 2}', '{"a": 1, "a": 2}', '{"x": 123456789012345678901234}',
    '{"x": 18446744073709551615}', '{"x": "\\ud800"}', '{"x": "a\\\\"}', '{"x": "\\"["}',
    '{"x": "[", "y": "]"}', '{"x": "{"}', '{"a": "x', 'y"}', '{"é": "ü", "s": "\u2028"}',
    '{"a": {"b": [1, {"c": []}]}}', "{}", "[]", '{"a": [[1', "2]]}", "{}], [{}",
    '{"a": 1e400}', '{"a": -0.0}', '{"a": 1.5e-7}', "\ufeff{}", '{"a": "\\u0000"}',
    '{"a":' * 150 + "1" + "}" * 150, "[" * 120 + "]" * 120, '{"a":' * 20 + "1" + "}" * 20,
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12)
objects = st.dictionaries(st.text(max_size=6), json_values, max_size=5).map(
    lambda d: json.dumps(d, ensure_ascii=False))
lines = st.lists(objects | st.sampled_from(ODD_LINES), min_size=1, max_size=12)


def line_by_line(text: str, max_depth: int) -> list:
    """The reference: every line by orjson, then the stdlib (only the stdlib when a long
    integer could be misread as a float)."""
    fast = None if _LONG_DIGITS in text.encode().translate(_DIGITS_TO_9) else orjson.loads
    return _jsonl_lines(text, max_depth, fast)


def same(body: bytes, max_depth: int) -> None:
    text = decode_text(body)
    if not text or text.isspace():
        return
    expected = line_by_line(text, max_depth)
    got = parse_payload(body, "jsonl", max_depth=max_depth)
    assert repr(got) == repr(expected)  # repr: NaN equals NaN, -0.0 differs from 0.0


@settings(max_examples=400, deadline=None)
@given(lines, st.sampled_from(["\n", "\r\n"]), st.booleans(), st.sampled_from(["", "\n", "\n\n"]),
       st.sampled_from([1, 2, 5, 30, 200]))
def test_whole_read_matches_line_by_line(rows, eol, bom, tail, max_depth):
    body = (("\ufeff" if bom else "") + eol.join(rows) + tail).encode()
    same(body, max_depth)


@settings(max_examples=200, deadline=None)
@given(st.lists(objects, min_size=1, max_size=20), st.sampled_from([1, 3, 200]))
def test_clean_payloads_match(rows, max_depth):
    same("\n".join(rows).encode(), max_depth)


@pytest.mark.parametrize("text", [
    '{"a": [1\n2]}\n{}, {}',  # a container across lines, made up for by a line of two
    '{"a": "x\ny"}',  # a string across lines
    '{"a": [[1\n2]]}\n{}], [{}',
    '{"a": 1}\n\n{"b": 2}',
    '{"a": 1}\n{"b": NaN}\n',
    '{"a": 1}\n[1]\n{"c": 3}',
    '{"x": 123456789012345678901}\n{"y": 1}',
])
def test_joined_lines_read_as_apart(text):
    same(text.encode(), 200)


def test_a_clean_payload_is_read_whole():
    text = "\n".join(json.dumps({"s": f"S{i}", "t": i, "v": [i, {"w": "x"}]}) for i in range(50))
    whole = _jsonl_whole(text.encode() + b"\r\n\n", 200)
    assert whole is not None
    assert whole == line_by_line(text, 200)
