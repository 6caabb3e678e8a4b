"""Tests for flowdeck.pipeline.payload: decoding fetched payloads into items."""

from __future__ import annotations

import json
import math
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowdeck.pipeline.payload import (
    BadItem,
    PayloadError,
    compile_path,
    decode_text,
    parse_payload,
)


def payload_error(body: bytes, fmt: str = "json", **kwargs: object) -> PayloadError:
    with pytest.raises(PayloadError) as info:
        parse_payload(body, fmt, **kwargs)
    return info.value


# --------------------------------------------------------------------------
# decode_text
# --------------------------------------------------------------------------


def test_decode_text_plain_and_bom() -> None:
    assert decode_text(b'{"a": 1}') == '{"a": 1}'
    assert decode_text("\ufeffhé".encode()) == "hé"
    assert decode_text(bytearray(b"ok")) == "ok"


def test_decode_text_invalid_utf8_reports_byte_offset() -> None:
    with pytest.raises(PayloadError) as info:
        decode_text(b'{"name": "caf\xe9"}')
    assert info.value.reason == "encoding"
    assert info.value.message == "invalid UTF-8 at byte 13"
    assert str(info.value) == "invalid UTF-8 at byte 13"


def test_decode_text_hints_at_utf16() -> None:
    with pytest.raises(PayloadError, match="looks like UTF-16"):
        decode_text("[1]".encode("utf-16"))


# --------------------------------------------------------------------------
# Whole-payload errors, one per reason
# --------------------------------------------------------------------------


def test_malformed_json_reports_line_and_column() -> None:
    err = payload_error(b'{\n  "a": 1,\n  "b": 2\n  "c": 3\n}')
    assert err.reason == "malformed"
    assert err.message == "malformed JSON at line 4 column 3: Expecting ',' delimiter"


def test_truncated_json() -> None:
    err = payload_error(b'{"data": [{"t": 1}, {"t": 2')
    assert err.reason == "malformed"
    assert err.message.startswith("malformed JSON at line 1 column 28:")
    assert "truncated" in err.message


def test_concatenated_json_hints_at_json_lines() -> None:
    err = payload_error(b'{"a": 1}\n{"a": 2}\n')
    assert err.reason == "malformed"
    assert "Extra data" in err.message and "JSON Lines" in err.message


def test_huge_integer_literal_is_malformed_not_a_crash() -> None:
    err = payload_error(b"[" + b"9" * 5000 + b"]")
    assert err.reason == "malformed"


@pytest.mark.parametrize("fmt", ["json", "geojson", "jsonl"])
def test_html_body_is_not_json(fmt: str) -> None:
    body = b"\n  <!DOCTYPE html><html><head><title>502 Bad Gateway</title></head></html>"
    err = payload_error(body, fmt)
    assert err.reason == "not_json"
    assert err.message.startswith("expected JSON, got HTML (body starts with '<!DOCTYPE html>")
    assert err.message.endswith(": 502 Bad Gateway")


def test_html_content_type_is_not_json() -> None:
    err = payload_error(b"Service Unavailable", content_type="text/html; charset=utf-8")
    assert (err.reason, err.message) == ("not_json", "expected JSON, got HTML (text/html)")


def test_html_content_type_with_json_looking_body_is_parsed() -> None:
    # Some servers label JSON as text/html; a body that starts like JSON wins.
    assert parse_payload(b'[{"a": 1}]', "json", content_type="text/html") == [{"a": 1}]


def test_xml_body_is_not_json() -> None:
    err = payload_error(b'<?xml version="1.0"?><obs/>')
    assert err.reason == "not_json"
    assert err.message.startswith("expected JSON, got XML")
    err = payload_error(b"<obs/>", content_type="application/xml")
    assert err.message == "expected JSON, got XML (application/xml)"


def test_csv_is_not_sniffed_for_html() -> None:
    assert parse_payload(b"a\n<b>\n", "csv") == [{"a": "<b>"}]


def test_invalid_utf8_payload() -> None:
    err = payload_error(b'[{"name": "Z\xfcrich"}]')
    assert (err.reason, err.message) == ("encoding", "invalid UTF-8 at byte 12")


@pytest.mark.parametrize("fmt", ["json", "geojson"])
def test_ten_thousand_deep_nesting_is_too_deep(fmt: str) -> None:
    err = payload_error(b"[" * 10_000 + b"]" * 10_000, fmt)
    assert err.reason == "too_deep"
    assert err.message == "JSON is nested 10000 levels deep (limit 200)"


def test_deep_unbalanced_nesting_is_too_deep_not_recursion_error() -> None:
    err = payload_error(b'{"a":' * 50_000)
    assert err.reason == "too_deep"


def test_depth_limit_boundary() -> None:
    ok = b"[" * 200 + b"]" * 200
    assert parse_payload(ok, "json") == [
        BadItem(0, "not_object", "item 0 is an array, expected an object", "[[[[[...]]]]]")
    ]
    err = payload_error(b"[" * 201 + b"]" * 201)
    assert (err.reason, err.message) == ("too_deep", "JSON is nested 201 levels deep (limit 200)")
    err = payload_error(b'{"a": {"b": {"c": 1}}}', max_depth=2)
    assert (err.reason, err.message) == ("too_deep", "JSON is nested 3 levels deep (limit 2)")


def test_brackets_inside_strings_do_not_count_as_depth() -> None:
    body = json.dumps([{"s": "[" * 500, "t": '\\"{{{{', "u": '"]]]]'}]).encode()
    assert parse_payload(body, "json", max_depth=2)[0]["s"] == "[" * 500


def test_max_depth_above_recursion_limit_still_fails_cleanly() -> None:
    err = payload_error(b"[" * 50_000 + b"]" * 50_000, max_depth=100_000)
    assert err.reason == "too_deep"


@pytest.mark.parametrize("body", [b"", b"   ", b"\n\t\r\n", b"\xef\xbb\xbf", b"\xef\xbb\xbf \n"])
@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv", "geojson"])
def test_empty_payload(body: bytes, fmt: str) -> None:
    assert payload_error(body, fmt).reason == "empty"


def test_too_large_is_checked_first() -> None:
    err = payload_error(b"\xff" * 2000, max_bytes=1000)  # also invalid UTF-8
    assert (err.reason, err.message) == ("too_large", "payload is 2,000 bytes (limit 1,000)")
    assert parse_payload(b'{"a": 1}', "json", max_bytes=8) == [{"a": 1}]


def test_missing_records_path() -> None:
    err = payload_error(b'{"type": "FeatureCollection"}', records="features[].properties")
    assert err.reason == "records_path"
    assert err.message == "no 'features' in payload (records path 'features[].properties')"


def test_missing_nested_records_path() -> None:
    err = payload_error(b'{"data": {"count": 0}}', records="data.rows")
    assert err.message == "no 'rows' in 'data' (records path 'data.rows')"
    err = payload_error(b'{"data": [1, 2]}', records="data.rows")
    assert err.message == "'data' is an array, not an object (records path 'data.rows')"
    err = payload_error(b'{"data": null}', records="data.rows")
    assert err.message == "'data' is null, not an object (records path 'data.rows')"


def test_records_path_to_scalar() -> None:
    err = payload_error(b'{"data": {"rows": 5}}', records="data.rows")
    assert err.reason == "records_path"
    assert (
        err.message
        == "'data.rows' is a number, expected an array or object (records path 'data.rows')"
    )
    err = payload_error(b'"just a string"')
    assert err.message == "the payload is a string, expected an array or object"


def test_records_path_iterating_a_non_array() -> None:
    err = payload_error(b'{"features": {"a": 1}}', records="features[]")
    assert err.message == "'features' is an object, not an array (records path 'features[]')"


def test_key_missing_in_every_element_is_a_payload_error() -> None:
    body = b'{"features": [{"props": {"a": 1}}, {"props": {"a": 2}}]}'
    err = payload_error(body, records="features[].properties")
    assert err.reason == "records_path"
    assert "no 'properties' in 'features[]' item" in err.message


def test_columns_errors() -> None:
    body = b'{"cols": ["a", "b"], "rows": [[1, 2]]}'
    err = payload_error(body, records="rows", columns="columns")
    assert (err.reason, err.message) == ("columns", "no 'columns' in payload (columns path)")
    err = payload_error(b'{"columns": "a,b", "rows": []}', records="rows", columns="columns")
    assert err.message == "'columns' is a string, expected an array of column names"
    err = payload_error(b'{"columns": ["a", 1], "rows": []}', records="rows", columns="columns")
    assert err.message == "column names must be strings, got 1"
    err = payload_error(b'{"columns": ["a", "a"], "rows": []}', records="rows", columns="columns")
    assert err.message == "duplicate column name 'a'"


def test_payload_error_is_value_error_and_picklable() -> None:
    err = PayloadError("empty", "payload is empty")
    assert isinstance(err, ValueError)
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.reason, copy.message, str(copy)) == (
        "empty",
        "payload is empty",
        "payload is empty",
    )


# --------------------------------------------------------------------------
# Record location
# --------------------------------------------------------------------------


def test_root_array_and_root_object() -> None:
    assert parse_payload(b'[{"a": 1}, {"a": 2}]', "json") == [{"a": 1}, {"a": 2}]
    assert parse_payload(b'{"a": 1}', "json") == [{"a": 1}]
    assert parse_payload(b'{"a": 1}', "json", records="") == [{"a": 1}]
    assert parse_payload(b"[]", "json") == []


def test_geojson_features_properties() -> None:
    collection = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [1, 2]},
                "properties": {"id": "A", "t": 1.5},
            },
            {"type": "Feature", "geometry": None, "properties": None},
            {"type": "Feature", "geometry": None},
            {"type": "Feature", "geometry": None, "properties": {"id": "B", "t": None}},
        ],
    }
    body = json.dumps(collection).encode()
    items = parse_payload(body, "geojson", records="features[].properties")
    assert items[0] == {"id": "A", "t": 1.5}
    assert items[3] == {"id": "B", "t": None}
    assert items[1] == BadItem(1, "not_object", "item 1 is null, expected an object", "None")
    assert isinstance(items[2], BadItem)
    assert items[2].index == 2 and items[2].reason == "records_path"
    assert (
        items[2].message
        == "no 'properties' in 'features[]' item (records path 'features[].properties')"
    )
    # geojson defaults to features[].properties; "" still means the root
    assert parse_payload(body, "geojson") == items
    assert parse_payload(body, "geojson", records="") == [collection]


def test_nested_records_path() -> None:
    body = b'{"response": {"data": {"rows": [{"a": 1}, {"a": 2}]}}}'
    assert parse_payload(body, "json", records="response.data.rows") == [{"a": 1}, {"a": 2}]
    assert parse_payload(body, "json", records="response.data") == [{"rows": [{"a": 1}, {"a": 2}]}]


def test_records_path_with_array_index_and_double_iteration() -> None:
    body = b'{"pages": [{"items": [{"a": 1}, {"a": 2}]}, {"items": [{"a": 3}, 4]}, {"items": 5}]}'
    items = parse_payload(body, "json", records="pages[].items[]")
    assert items[:3] == [{"a": 1}, {"a": 2}, {"a": 3}]
    assert items[3] == BadItem(3, "not_object", "item 3 is a number, expected an object", "4")
    assert items[4].reason == "records_path" and items[4].index == 4
    assert parse_payload(body, "json", records="pages.0.items") == [{"a": 1}, {"a": 2}]
    assert parse_payload(b'[{"d": {"a": 1}}, {"d": {"a": 2}}]', "json", records="[].d") == [
        {"a": 1},
        {"a": 2},
    ]


def test_non_object_items() -> None:
    items = parse_payload(b'[{"a": 1}, 2, "x", null, [1], true]', "json")
    assert items[0] == {"a": 1}
    assert [(i.index, i.reason) for i in items[1:]] == [(n, "not_object") for n in range(1, 6)]
    assert [i.message for i in items[1:]] == [
        "item 1 is a number, expected an object",
        "item 2 is a string, expected an object",
        "item 3 is null, expected an object",
        "item 4 is an array, expected an object",
        "item 5 is a boolean, expected an object",
    ]
    assert [i.text for i in items[1:]] == ["2", "'x'", "None", "[1]", "True"]


def test_bad_item_text_is_bounded() -> None:
    items = parse_payload(json.dumps([["x" * 5000] * 100]).encode(), "json")
    assert len(items[0].text) <= 500


def test_columnar_json() -> None:
    body = json.dumps(
        {
            "meta": {"columns": ["station", "temp", "rh"]},
            "data": {
                "rows": [["KSEA", 12.5, 80], ["KPDX", 14.0], {"station": "X"}, ["KBOI", -1, None]]
            },
        }
    ).encode()
    items = parse_payload(body, "json", records="data.rows", columns="meta.columns")
    assert items[0] == {"station": "KSEA", "temp": 12.5, "rh": 80}
    assert items[1] == BadItem(
        1, "columns", "row 1 has 2 values, expected 3 columns", "['KPDX', 14.0]"
    )
    assert (
        items[2].reason == "columns"
        and items[2].message == "row 2 is an object, expected an array of values"
    )
    assert items[3] == {"station": "KBOI", "temp": -1, "rh": None}


def test_columnar_json_top_level_columns() -> None:
    body = b'{"columns": ["a", "b"], "values": [[1, 2], [3, 4]]}'
    assert parse_payload(body, "json", records="values", columns="columns") == [
        {"a": 1, "b": 2},
        {"a": 3, "b": 4},
    ]


def test_nan_and_infinity_are_accepted() -> None:
    items = parse_payload(b'[{"a": NaN, "b": Infinity, "c": -Infinity}]', "json")
    assert math.isnan(items[0]["a"]) and items[0]["b"] == math.inf and items[0]["c"] == -math.inf


# --------------------------------------------------------------------------
# JSON Lines
# --------------------------------------------------------------------------


def test_jsonl_with_one_bad_line() -> None:
    body = b'{"a": 1}\n\n{"a": 2\n{"a": 3}\r\n   \n[1, 2]\n{"a": 4}'
    items = parse_payload(body, "jsonl")
    assert items[0] == {"a": 1}
    assert items[1] == BadItem(
        1, "malformed", "line 3: malformed JSON at column 8: Expecting ',' delimiter", '{"a": 2'
    )
    assert items[2] == {"a": 3}
    assert items[3] == BadItem(
        3, "not_object", "line 6: expected a JSON object, got an array", "[1, 2]"
    )
    assert items[4] == {"a": 4}


def test_jsonl_deep_line_is_a_bad_item() -> None:
    body = b'{"a": 1}\n' + b"[" * 10_000 + b"]" * 10_000 + b'\n{"a": 2}\n'
    items = parse_payload(body, "jsonl")
    assert items[0] == {"a": 1} and items[2] == {"a": 2}
    assert items[1].reason == "too_deep"
    assert items[1].message == "line 2: JSON is nested 10000 levels deep (limit 200)"
    assert len(items[1].text) <= 500


def test_jsonl_keeps_unicode_line_separators_inside_strings() -> None:
    body = '{"a": "x\u2028y"}\n{"a": "z"}'.encode()
    assert parse_payload(body, "jsonl") == [{"a": "x\u2028y"}, {"a": "z"}]


# --------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------


def test_csv_basic_with_empty_cells_and_quotes() -> None:
    body = b'station,temp,note\nKSEA,12.5,\nKPDX,,"rain, heavy"\n'
    assert parse_payload(body, "csv") == [
        {"station": "KSEA", "temp": "12.5", "note": None},
        {"station": "KPDX", "temp": None, "note": "rain, heavy"},
    ]


def test_csv_with_short_row() -> None:
    body = b"a,b,c\n1,2,3\n4,5\n6,7,8\n"
    items = parse_payload(body, "csv")
    assert items[0] == {"a": "1", "b": "2", "c": "3"}
    assert items[1] == BadItem(1, "columns", "line 3: 2 cells, header has 3", "4,5")
    assert items[2] == {"a": "6", "b": "7", "c": "8"}


def test_csv_with_bom_and_crlf() -> None:
    body = b"\xef\xbb\xbfstation,temp\r\nKSEA,12\r\n\r\nKPDX,14\r\n"
    assert parse_payload(body, "csv") == [
        {"station": "KSEA", "temp": "12"},
        {"station": "KPDX", "temp": "14"},
    ]


def test_csv_quoted_newline_and_header_whitespace() -> None:
    body = b' a , b \n"line1\nline2",x\n'
    assert parse_payload(body, "csv") == [{"a": "line1\nline2", "b": "x"}]


def test_csv_header_only_and_duplicate_header() -> None:
    assert parse_payload(b"a,b\n", "csv") == []
    err = payload_error(b"a,b,a\n1,2,3\n", "csv")
    assert (err.reason, err.message) == ("columns", "duplicate column 'a' in CSV header")


def test_csv_oversized_field_is_a_bad_item() -> None:
    body = b"a,b\n1,2\n" + b"x" * 200_000 + b",3\n4,5\n"
    items = parse_payload(body, "csv")
    assert items[0] == {"a": "1", "b": "2"}
    assert items[1].reason == "malformed" and "field larger than field limit" in items[1].message
    assert items[2] == {"a": "4", "b": "5"}


# --------------------------------------------------------------------------
# Programming errors
# --------------------------------------------------------------------------


def test_unknown_format_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown payload format 'yaml'") as info:
        parse_payload(b"[]", "yaml")
    assert not isinstance(info.value, PayloadError)


def test_records_with_line_formats_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="only apply to json"):
        parse_payload(b"a\n1\n", "csv", records="rows")


@pytest.mark.parametrize("path", ["a..b", ".a", "a.", "a[0]"])
def test_bad_records_path_is_a_value_error(path: str) -> None:
    with pytest.raises(ValueError, match="invalid records path"):
        parse_payload(b'{"a": []}', "json", records=path)


def test_str_body_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        parse_payload("[]", "json")  # type: ignore[arg-type]


def test_bytearray_and_memoryview_bodies() -> None:
    assert parse_payload(bytearray(b'[{"a": 1}]'), "json") == [{"a": 1}]
    assert parse_payload(memoryview(b'[{"a": 1}]'), "json") == [{"a": 1}]  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# compile_path
# --------------------------------------------------------------------------

ITEM = {
    "temperature": {"value": 12.5, "unit": "degC", "qc": {"flag": "ok"}},
    "coords": [-122.3, 47.6],
    "layers": [{"base": 100}, {"base": 200}],
    "by_id": {"1": "one"},
    "name": "KSEA",
    "nothing": None,
}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("name", "KSEA"),
        ("temperature", ITEM["temperature"]),
        ("temperature.value", 12.5),
        ("temperature.qc.flag", "ok"),
        ("coords.0", -122.3),
        ("coords.1", 47.6),
        ("coords.-1", 47.6),
        ("layers.1.base", 200),
        ("by_id.1", "one"),
        # missing anywhere -> None
        ("missing", None),
        ("temperature.missing", None),
        ("temperature.qc.flag.deeper", None),
        ("missing.value.deeper", None),
        ("nothing.value", None),
        ("name.0", None),  # no indexing into strings
        ("name.upper", None),
        ("coords.2", None),
        ("coords.-3", None),
        ("coords.x", None),
        ("layers.0.base.x", None),
        ("temperature.value.x", None),
    ],
)
def test_compile_path(path: str, expected: object) -> None:
    assert compile_path(path)(ITEM) == expected


@pytest.mark.parametrize("path", ["a", "a.b", "a.b.c", "a.0"])
@pytest.mark.parametrize("item", [None, 5, "text", [1, 2], BadItem(0, "x", "y", "z")])
def test_compile_path_on_non_objects_gives_none(path: str, item: object) -> None:
    assert compile_path(path)(item) is None


def test_compile_path_indexes_lists_at_the_root() -> None:
    assert compile_path("1")([10, 20]) == 20
    assert compile_path("1.a")([{}, {"a": 3}]) == 3


@pytest.mark.parametrize("path", ["", "a..b", ".a", "a.", "features[].properties"])
def test_compile_path_rejects_bad_paths(path: str) -> None:
    with pytest.raises(ValueError):
        compile_path(path)


# --------------------------------------------------------------------------
# Robustness: arbitrary bytes never crash
# --------------------------------------------------------------------------


@settings(max_examples=300)
@given(body=st.binary(max_size=200), fmt=st.sampled_from(["json", "geojson", "jsonl", "csv"]))
def test_arbitrary_bytes_give_items_or_payload_error(body: bytes, fmt: str) -> None:
    try:
        items = parse_payload(body, fmt, max_depth=5)
    except PayloadError as err:
        assert err.reason in {
            "empty",
            "encoding",
            "not_json",
            "malformed",
            "too_deep",
            "records_path",
            "columns",
            "too_large",
        }
        return
    for index, item in enumerate(items):
        assert isinstance(item, dict) or (isinstance(item, BadItem) and item.index == index)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=20,
)


@settings(max_examples=300)
@given(value=json_values)
def test_depth_check_matches_python_json(value: object) -> None:
    body = json.dumps(value).encode()

    def depth(v: object) -> int:
        if isinstance(v, list):
            return 1 + max((depth(x) for x in v), default=0)
        if isinstance(v, dict):
            return 1 + max((depth(x) for x in v.values()), default=0)
        return 0

    limit = 2
    try:
        parse_payload(body, "json", max_depth=limit, records="")
    except PayloadError as err:
        if err.reason == "too_deep":
            assert depth(value) > limit
            return
        assert err.reason == "records_path"  # scalar root
    assert depth(value) <= limit
