"""Payload shapes beyond plain records: XML (hostile XML refused), parallel arrays (zip),
headerless rows (positional), wide -> long (melt), parent/root field paths, unit codes."""

from __future__ import annotations

import pytest

from flowdeck.pipeline.payload import (
    BadItem,
    Melt,
    PayloadError,
    compile_path,
    parse_payload,
    split_anchor,
)
from flowdeck.pipeline.units import UnitError, affine, unit_code

ECB = b"""<?xml version="1.0" encoding="UTF-8"?>
<gesmes:Envelope xmlns:gesmes="http://www.gesmes.org/xml/2002-08-01"
    xmlns="http://www.ecb.int/vocabulary/2002-08-01/eurofxref">
  <gesmes:subject>Reference rates</gesmes:subject>
  <gesmes:Sender><gesmes:name>European Central Bank</gesmes:name></gesmes:Sender>
  <Cube>
    <Cube time="2024-01-05">
      <Cube currency="USD" rate="1.0921"/>
      <Cube currency="JPY" rate="158.40"/>
    </Cube>
    <Cube time="2024-01-04">
      <Cube currency="USD" rate="1.0953"/>
    </Cube>
  </Cube>
</gesmes:Envelope>
"""


def test_xml_records_by_local_names_with_attributes_and_parent_access():
    items = parse_payload(ECB, "xml", records="Envelope.Cube.Cube.Cube")
    assert items == [{"@currency": "USD", "@rate": "1.0921"},
                     {"@currency": "JPY", "@rate": "158.40"},
                     {"@currency": "USD", "@rate": "1.0953"}]
    time = compile_path("../@time")
    assert [time(i) for i in items] == ["2024-01-05", "2024-01-05", "2024-01-04"]
    assert compile_path("$.subject")(items[0]) == "Reference rates"
    assert compile_path("$.Sender.name")(items[0]) == "European Central Bank"


def test_xml_children_text_and_repeated_elements():
    body = b"""<feed><entry id="a"><title>Hi</title><tag>x</tag><tag>y</tag>
               <value unit="m">1.5</value></entry></feed>"""
    (item,) = parse_payload(body, "xml", records="feed.entry")
    assert item == {"@id": "a", "title": "Hi", "tag": ["x", "y"],
                    "value": {"@unit": "m", "#text": "1.5"}}


def test_xml_namespace_prefixes_are_explicit_when_declared():
    ns = {"g": "http://www.gesmes.org/xml/2002-08-01"}
    days = parse_payload(ECB, "xml", records="g:Envelope.Cube.Cube", namespaces=ns)
    assert [d["@time"] for d in days] == ["2024-01-05", "2024-01-04"]
    with pytest.raises(PayloadError) as exc:
        parse_payload(ECB, "xml", records="g:Envelope.g:Cube", namespaces=ns)
    assert exc.value.reason == "records_path"


@pytest.mark.parametrize("body", [
    # billion laughs: nested entity expansion
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]><r>&lol2;</r>',
    # external entity (XXE)
    b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>',
    # external DTD
    b'<?xml version="1.0"?><!DOCTYPE r SYSTEM "http://127.0.0.1:9/r.dtd"><r/>',
    # parameter entity
    b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY % p SYSTEM "http://127.0.0.1:9/p">%p;]><r/>',
], ids=["entity_expansion", "external_entity", "external_dtd", "parameter_entity"])
def test_hostile_xml_is_refused_with_a_reason(body):
    with pytest.raises(PayloadError) as exc:
        parse_payload(body, "xml")
    assert exc.value.reason == "xml_forbidden"
    assert "DTDs and entities are not accepted" in exc.value.message


def test_malformed_and_html_xml():
    with pytest.raises(PayloadError) as exc:
        parse_payload(b"<r><a></r>", "xml")
    assert exc.value.reason == "malformed"
    with pytest.raises(PayloadError) as exc:
        parse_payload(b"<html><body>502</body></html>", "xml")
    assert exc.value.reason == "not_xml"


def test_zip_parallel_arrays_one_record_per_index_with_the_parent_reachable():
    body = (b'{"latitude": 52.5, "hourly_units": {"temperature_2m": "\xc2\xb0C"},'
            b' "hourly": {"time": ["2024-03-01T00:00", "2024-03-01T01:00"],'
            b' "temperature_2m": [5.2, null]}}')
    items = parse_payload(body, "json", zip="hourly", parents=True)
    assert items == [{"time": "2024-03-01T00:00", "temperature_2m": 5.2},
                     {"time": "2024-03-01T01:00", "temperature_2m": None}]
    assert compile_path("../latitude")(items[1]) == 52.5
    assert compile_path("$.hourly_units.temperature_2m")(items[0]) == "°C"


def test_zip_unequal_lengths_is_a_payload_error():
    body = b'{"hourly": {"time": [1, 2, 3], "temperature_2m": [1.0, 2.0]}}'
    with pytest.raises(PayloadError) as exc:
        parse_payload(body, "json", zip="hourly")
    assert exc.value.reason == "columns"
    assert "differ in length: time has 3, temperature_2m has 2" in exc.value.message
    with pytest.raises(PayloadError, match="expected an array"):
        parse_payload(b'{"hourly": {"time": 5}}', "json", zip="hourly")
    with pytest.raises(PayloadError, match="no 'daily'"):
        parse_payload(b'{"hourly": {"time": []}}', "json", zip="daily")


def test_positional_rows_keep_raw_values_and_short_rows_are_bad_items():
    body = b'[[1700000000000, "37000.1", "37100", "36950.5", "37050"], [1700000060000, "1"]]'
    items = parse_payload(body, "json", positional=["open_time", "open", None, "low"])
    assert items[0] == {"open_time": 1700000000000, "open": "37000.1", "low": "36950.5"}
    assert isinstance(items[1], BadItem) and items[1].reason == "columns"
    assert "expected at least 4 columns" in items[1].message


def test_melt_by_columns_and_by_pattern_group():
    body = b'[{"date": "2024-01-01", "gfs_t2m": 1.5, "ecmwf_t2m": 2.5, "site": "A"}]'
    by_cols = parse_payload(body, "json", melt=Melt("model", "t2m", ("gfs_t2m", "ecmwf_t2m")))
    assert by_cols == [{"date": "2024-01-01", "site": "A", "model": "gfs_t2m", "t2m": 1.5},
                       {"date": "2024-01-01", "site": "A", "model": "ecmwf_t2m", "t2m": 2.5}]
    by_rx = parse_payload(body, "json", melt=Melt("model", "t2m", pattern=r"(\w+)_t2m"))
    assert [(r["model"], r["t2m"]) for r in by_rx] == [("gfs", 1.5), ("ecmwf", 2.5)]
    with pytest.raises(PayloadError, match="no key matches the melt"):
        parse_payload(body, "json", melt=Melt("m", "v", ("icon_t2m",)))


def test_melt_after_csv():
    body = b"date,NO2,O3\n2024-01-01,12.5,30\n"
    items = parse_payload(body, "csv", melt=Melt("pollutant", "value", ("NO2", "O3")))
    assert items == [{"date": "2024-01-01", "pollutant": "NO2", "value": "12.5"},
                     {"date": "2024-01-01", "pollutant": "O3", "value": "30"}]


def test_geojson_parent_reaches_the_feature_id():
    body = (b'{"type": "FeatureCollection", "features": [{"type": "Feature", "id": "us7000m",'
            b' "properties": {"mag": 4.5}}]}')
    (item,) = parse_payload(body, "geojson", parents=True)
    assert compile_path("../id")(item) == "us7000m"


@pytest.mark.parametrize("path,expected", [("../@time", (1, "@time")), ("../../a.b", (2, "a.b")),
                                           ("$.a", (-1, "a")), ("a.b", (0, "a.b"))])
def test_anchor_syntax(path, expected):
    assert split_anchor(path) == expected


@pytest.mark.parametrize("path", ["$x", "$.", "../a..b", "a..b", ""])
def test_bad_anchor_paths_are_value_errors(path):
    with pytest.raises(ValueError):
        compile_path(path)


@pytest.mark.parametrize("code,unit,value,expected", [
    ("wmoUnit:degC", "degF", 100.0, 212.0),
    ("unit:m_s-1", "km/h", 10.0, 36.0),
    ("wmoUnit:km_h-1", "m/s", 36.0, 10.0),
    ("wmoUnit:Pa", "hPa", 101325.0, 1013.25),
    ("wmoUnit:percent", "percent", 55.0, 55.0),
    ("°C", "K", 0.0, 273.15),
    ("km/h", "m/s", 18.0, 5.0),
])
def test_unit_codes_map_onto_pint(code, unit, value, expected):
    a, b = affine(unit_code(code), unit)
    assert a * value + b == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("code", ["wmoUnit:zorks_h-1", "wmoUnit:bogus", "", "m_s-9"])
def test_unknown_unit_codes_are_refused(code):
    with pytest.raises(UnitError):
        unit_code(code)


def test_deeply_nested_xml_is_too_deep_not_a_crash():
    body = b"<r>" + b"<a>" * 400 + b"x" + b"</a>" * 400 + b"</r>"
    with pytest.raises(PayloadError) as exc:
        parse_payload(body, "xml", records="r.a")
    assert exc.value.reason == "too_deep"


def test_melt_after_xml_rows():
    body = b'<rows><row date="2024-01-01" NO2="12.5" O3="30"/></rows>'
    items = parse_payload(body, "xml", records="rows.row",
                          melt=Melt("pollutant", "value", pattern=r"@(NO2|O3)"))
    assert items == [{"@date": "2024-01-01", "pollutant": "NO2", "value": "12.5"},
                     {"@date": "2024-01-01", "pollutant": "O3", "value": "30"}]
