"""The hot tables' JSON text: every value reads back as it was written, whichever
encoder wrote it (orjson for flat plain dicts, json for everything else)."""

from __future__ import annotations

import json
import math

import pytest

from flowdeck.storage.codec import JsonCodec


@pytest.mark.parametrize("value", [
    {"station": "KAAA", "temperature": 21.5, "n": 3, "ok": True, "gone": None},
    {"name": "Zürich \"HB\" \\ ☃"},
    {"a": 2 ** 70},  # past 64 bits
    {1: "int key"},
    {"nested": {"a": [1, 2.5, None]}},
    [1, "two", 3.0],
    {},
])
def test_json_text_reads_back_as_written(value):
    text = JsonCodec().dumps(value)
    assert json.loads(text) == json.loads(json.dumps(value))


def test_nan_and_infinity_are_kept_not_turned_into_null():
    text = JsonCodec().dumps({"a": float("nan"), "b": float("inf"), "c": 1.0})
    back = json.loads(text)
    assert math.isnan(back["a"]) and back["b"] == math.inf and back["c"] == 1.0


def test_a_value_json_cannot_encode_raises_as_json_dumps_does():
    with pytest.raises(TypeError):
        JsonCodec().dumps({"a": object()})
