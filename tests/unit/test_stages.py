"""Unit tests of each stage, on hand-built batches and small configs parsed from YAML.

Every expected value below is worked out by hand in the test (unit factors, medians,
weighted means, quality scores), so a wrong stage cannot agree with itself.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest

from flowdeck.pipeline.config import Config, FlowConfig, parse_config
from flowdeck.pipeline.core.clock import ManualClock
from flowdeck.pipeline.model import Batch, Rec
from flowdeck.pipeline.stages.collect import Collector
from flowdeck.pipeline.stages.detect import AnomalyDetector
from flowdeck.pipeline.stages.enrich import Enricher
from flowdeck.pipeline.stages.quality import QualityCheck
from flowdeck.pipeline.stages.resolve import Resolver
from flowdeck.pipeline.stages.transform import Transformer
from flowdeck.pipeline.stages.validate import Validator

CLOCK = ManualClock(1_767_225_660.0)  # 2026-01-01T00:01:00Z; never advanced
NOW = CLOCK.now_ms()
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z in epoch ms
MIN = 60_000


def load(text: str, base_dir: Path | None = None) -> Config:
    return parse_config(textwrap.dedent(text), "<config>", base_dir=base_dir)


def flow_of(text: str, base_dir: Path | None = None) -> FlowConfig:
    return load(text, base_dir).flows["w"]


def rec(key: str, ts: int, source: str = "a", raw_id: int = 1, item: int = 0, **data) -> Rec:
    return Rec(key, ts, {"station": key, **data}, source, raw_id, item)


def batch(source: str | None, *records: Rec, raw_id: int = 1, fetched_ms: int = NOW) -> Batch:
    return Batch("w", source, raw_id, fetched_ms, records=list(records))


# ================================================================== collect

COLLECT = """
flows:
  w:
    key: station
    timestamps: {max_future: 5m, skew: 30s}
    sources:
      - name: a
        kind: file
        path: a.json
        fields:
          station: id
          ts: obs.time
          temperature: obs.temp.value
          kind: {path: type, map: {M: metar, S: synop}}
          lat: coords.0
          lon: coords.1
    fields:
      station: {type: str}
      temperature: {type: float}
      kind: {type: str}
      lat: {type: float}
      lon: {type: float}
"""


def obs(station: str, time, temp: float | None = 10.0, **extra) -> dict:
    return {"id": station, "obs": {"time": time, "temp": {"value": temp}}, **extra}


def iso(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def collect(
    collector: Collector, items: list, *, raw_id: int = 1, replay: bool = False, source: str = "a"
) -> Batch:
    b = Batch("w", source, raw_id, NOW, items=list(items))
    collector.run(b, NOW, replay=replay)
    return b


def test_collect_maps_fields_by_dotted_path_and_value_maps():
    c = Collector("w", flow_of(COLLECT))
    b = collect(
        c,
        [
            obs("KSFO", "2026-01-01T00:00:00Z", 12.5, type="M", coords=[37.6, -122.4]),
            obs("KJFK", "2026-01-01T00:00:00Z", 3.0, type="X"),  # no map entry, no coords
        ],
    )
    assert not b.quarantine
    sfo, jfk = b.records
    assert (sfo.key, sfo.ts) == ("KSFO", T0)
    assert sfo.data == {
        "station": "KSFO",
        "temperature": 12.5,
        "kind": "metar",
        "lat": 37.6,
        "lon": -122.4,
    }
    assert jfk.data == {
        "station": "KJFK",
        "temperature": 3.0,
        "kind": "X",
        "lat": None,
        "lon": None,
    }
    assert (sfo.source, sfo.raw_id, sfo.item) == ("a", 1, 0)
    assert jfk.item == 1


def ts_flow(fmt: str, tz: str = "UTC") -> FlowConfig:
    return flow_of(f"""
    flows:
      w:
        key: station
        timestamps: {{max_future: 400d}}
        sources:
          - name: a
            kind: file
            path: a.json
            fields: {{station: id, ts: t}}
            timestamp: {{format: "{fmt}", tz: "{tz}"}}
        fields:
          station: {{type: str}}
    """)


@pytest.mark.parametrize(
    ("fmt", "tz", "raw", "expected"),
    [
        ("iso", "UTC", "2026-01-01T00:00:00Z", T0),
        ("iso", "UTC", "2026-01-01T01:00:00+01:00", T0),
        ("iso", "UTC", "2026-01-01T00:00:00.250", T0 + 250),
        ("iso", "America/New_York", "2025-12-31T19:00:00", T0),  # naive: EST, UTC-5
        ("iso", "America/New_York", "2025-12-31T20:00:00-04:00", T0),  # explicit offset wins
        ("epoch_s", "UTC", 1_767_225_600, T0),
        ("epoch_s", "UTC", "1767225600.5", T0 + 500),
        ("epoch_ms", "UTC", 1_767_225_600_123, T0 + 123),
        ("%Y-%m-%d %H:%M:%S", "UTC", "2026-01-01 00:00:00", T0),
        ("%d/%m/%Y %H:%M", "Europe/Paris", "01/01/2026 01:00", T0),  # CET, UTC+1
        (
            "%d/%m/%Y %H:%M",
            "Europe/Paris",
            "01/07/2026 12:00",
            T0 + 181 * 86_400_000 + 10 * 3_600_000,
        ),  # CEST
        ("%Y%m%d%H%M%z", "Europe/Paris", "202601010300+0300", T0),  # %z beats the default zone
    ],
)
def test_collect_timestamp_formats(fmt, tz, raw, expected):
    c = Collector("w", ts_flow(fmt, tz))
    b = collect(c, [{"id": "K1", "t": raw}])
    assert not b.quarantine, b.quarantine
    assert [r.ts for r in b.records] == [expected]


@pytest.mark.parametrize(
    ("fmt", "raw", "words"),
    [
        ("iso", "2026-13-45T00:00:00Z", "2026-13-45"),
        ("iso", "yesterday", "yesterday"),
        ("iso", 1767225600, "ISO-8601"),
        ("epoch_s", 1e20, "impossible"),
        ("epoch_s", "soon", "soon"),
        ("epoch_ms", float("nan"), "finite"),
        ("%Y-%m-%d %H:%M:%S", "2026-01-01T00:00:00", "does not match"),
    ],
)
def test_collect_quarantines_unparseable_timestamps(fmt, raw, words):
    c = Collector("w", ts_flow(fmt))
    b = collect(c, [{"id": "K1", "t": raw}, {"id": "K2", "t": None}])
    assert b.records == []
    reasons = [(q.item, q.stage, q.reason) for q in b.quarantine]
    assert reasons == [(0, "collect", "bad_timestamp"), (1, "collect", "missing_timestamp")]
    assert words in b.quarantine[0].message
    assert b.quarantine[0].raw_id == 1


def test_collect_rejects_far_future_and_flags_clock_skew():
    c = Collector("w", flow_of(COLLECT))
    b = collect(
        c,
        [
            obs("K1", iso(NOW)),
            obs("K2", iso(NOW + 30_000)),  # exactly at the skew limit: fine
            obs("K3", iso(NOW + 31_000)),  # beyond skew, within max_future: kept, flagged
            obs("K4", iso(NOW + 300_000)),  # exactly at max_future: kept
            obs("K5", iso(NOW + 301_000)),  # beyond max_future: quarantined
            obs("K6", "2099-01-01T00:00:00Z"),
        ],
    )
    assert {r.key: r.flags for r in b.records} == {
        "K1": [],
        "K2": [],
        "K3": ["clock_skew"],
        "K4": ["clock_skew"],
    }
    assert [(q.item, q.reason) for q in b.quarantine] == [
        (4, "future_timestamp"),
        (5, "future_timestamp"),
    ]
    assert "2099-01-01T00:00:00Z" in b.quarantine[1].message
    assert b.quarantine[1].record["key"] == "K6"


def test_collect_rejects_records_older_than_max_age():
    c = Collector("w", flow_of(COLLECT.replace("skew: 30s}", "skew: 30s, max_age: 1h}")))
    b = collect(c, [obs("K1", iso(NOW - 3_599_000)), obs("K2", iso(NOW - 3_601_000))])
    assert [r.key for r in b.records] == ["K1"]
    assert [(q.item, q.reason) for q in b.quarantine] == [(1, "too_old")]


def test_collect_quarantines_missing_key():
    c = Collector("w", flow_of(COLLECT))
    b = collect(c, [{"obs": {"time": iso(T0)}}, obs("", iso(T0)), obs("K3", iso(T0))])
    assert [r.key for r in b.records] == ["K3"]
    assert [(q.item, q.reason) for q in b.quarantine] == [(0, "missing_key"), (1, "missing_key")]
    assert "station" in b.quarantine[0].message


def test_collect_drops_duplicates_by_key_and_ts_within_and_across_batches():
    c = Collector("w", flow_of(COLLECT))
    first = collect(
        c,
        [
            obs("K1", iso(T0), 10.0),
            obs("K1", iso(T0), 10.0),  # identical content in the same payload
            obs("K1", iso(T0), 99.0),  # same key and ts, other value: still the same reading
            obs("K2", iso(T0), 10.0),  # other key: kept
            obs("K1", iso(T0 + MIN), 10.0),  # other ts: kept
        ],
    )
    assert [(r.key, r.ts, r.data["temperature"]) for r in first.records] == [
        ("K1", T0, 10.0),
        ("K2", T0, 10.0),
        ("K1", T0 + MIN, 10.0),
    ]
    assert first.dropped["duplicate"] == 2
    assert not first.quarantine  # duplicates are counted, not quarantined
    # The same readings again in a later payload (a re-fetch): all dropped.
    again = collect(
        c, [obs("K1", iso(T0), 10.0), obs("K2", iso(T0), 10.0), obs("K3", iso(T0), 10.0)], raw_id=2
    )
    assert [r.key for r in again.records] == ["K3"]
    assert again.dropped["duplicate"] == 2


def test_collect_duplicate_memory_is_per_source():
    text = COLLECT.replace(
        "    fields:\n      station: {type: str}",
        """
      - name: b
        kind: file
        path: b.json
        fields: {station: id, ts: obs.time, temperature: obs.temp.value}
    fields:
      station: {type: str}""",
    )
    c = Collector("w", flow_of(text))
    assert len(collect(c, [obs("K1", iso(T0))]).records) == 1
    other = collect(c, [obs("K1", iso(T0))], source="b")
    assert [(r.key, r.source) for r in other.records] == [("K1", "b")]


def test_collect_forget_lets_the_same_reading_in_again():
    c = Collector("w", flow_of(COLLECT))
    assert len(collect(c, [obs("K1", iso(T0))]).records) == 1
    c.forget("a", [("K1", T0)])  # e.g. the batch failed to store
    b = collect(c, [obs("K1", iso(T0))], raw_id=2)
    assert [r.key for r in b.records] == ["K1"]


def test_collect_out_of_order_is_relative_to_what_is_stored_not_to_payload_order():
    c = Collector("w", flow_of(COLLECT))
    t = T0 - 10 * MIN
    b = collect(
        c,
        [
            obs("K1", iso(t + 2 * MIN)),
            obs("K1", iso(t + MIN)),
            obs("K2", iso(t)),
            obs("K1", iso(t + 3 * MIN)),
        ],
    )
    # Nothing stored yet: the order inside one payload is not disorder.
    assert [(r.key, r.ts - t, r.flags) for r in b.records] == [
        ("K1", 2 * MIN, []),
        ("K1", MIN, []),
        ("K2", 0, []),
        ("K1", 3 * MIN, []),
    ]
    c.stored({"K1": t + 3 * MIN, "K2": t})  # what the engine stored of that batch
    late = collect(c, [obs("K1", iso(t)), obs("K2", iso(t + MIN))], raw_id=2)
    assert [(r.key, r.flags) for r in late.records] == [("K1", ["out_of_order"]), ("K2", [])]


def test_collect_newest_first_payload_of_48_gets_no_flags():
    c = Collector("w", flow_of(COLLECT))
    items = [obs("K1", iso(T0 - i * MIN)) for i in range(48)]  # newest first
    b = collect(c, items)
    assert len(b.records) == 48 and all(r.flags == [] for r in b.records)


def test_collect_replay_ignores_and_keeps_the_duplicate_memory():
    c = Collector("w", flow_of(COLLECT))
    items = [obs("K1", iso(T0)), obs("K1", iso(T0 + MIN))]
    assert len(collect(c, items).records) == 2
    assert collect(c, items, raw_id=2).dropped["duplicate"] == 2
    replayed = collect(c, items, replay=True)
    assert [r.ts - T0 for r in replayed.records] == [0, MIN]
    assert not replayed.dropped
    assert all(r.flags == [] for r in replayed.records)  # no out_of_order from the live memory
    # ...and the live memory still drops what it has seen, and accepts what it has not.
    live = collect(c, [*items, obs("K1", iso(T0 + 2 * MIN))], raw_id=3)
    assert [r.ts - T0 for r in live.records] == [2 * MIN]
    assert live.dropped["duplicate"] == 2


def test_collect_bad_items_are_quarantined_in_place():
    from flowdeck.pipeline.payload import BadItem

    c = Collector("w", flow_of(COLLECT))
    b = collect(
        c, [obs("K1", iso(T0)), BadItem(1, "malformed", "line 2: bad", "{oops"), obs("K3", iso(T0))]
    )
    assert [r.item for r in b.records] == [0, 2]
    (q,) = b.quarantine
    assert (q.item, q.reason, q.message, q.record) == (
        1,
        "malformed",
        "line 2: bad",
        {"excerpt": "{oops"},
    )


# ================================================================== validate

VALIDATE = """
flows:
  w:
    key: station
    sources:
      - name: f
        kind: file
        path: f.csv
        format: csv
        fields: {station: s, ts: t, temperature: tf, count: n, ok: ok, kind: k, code: c,
                 tmin: lo, tmax: hi}
        units: {temperature: degF}
      - name: c
        kind: file
        path: c.csv
        format: csv
        fields: {station: s, ts: t, temperature: tc}
    fields:
      station: {type: str, required: true, pattern: "^[A-Z0-9]{4}$"}
      temperature: {type: float, required: true, unit: degC, range: [-90, 60]}
      count: {type: int, range: [0, 10]}
      ok: {type: bool}
      kind: {type: str, allowed: [metar, synop]}
      code: {type: str, pattern: "^[a-z]+$"}
      tmin: {type: float}
      tmax: {type: float}
"""
RULES = VALIDATE + '    rules: ["tmin <= tmax", "temperature > -50 or kind == \'synop\'"]\n'


def validate(source: str, *datas: dict, text: str = VALIDATE) -> Batch:
    v = Validator("w", flow_of(text))
    b = batch(
        source,
        *[Rec(d.get("station", "????"), T0, dict(d), source, 7, i) for i, d in enumerate(datas)],
    )
    v.run(b, NOW)
    return b


def test_validate_coerces_csv_strings_to_the_declared_types():
    b = validate(
        "f",
        {
            "station": "KSFO",
            "temperature": "50.5",
            "count": "3",
            "ok": "true",
            "kind": "metar",
            "code": "abc",
            "tmin": "1",
            "tmax": "2.5",
        },
    )
    assert not b.quarantine
    (r,) = b.records
    assert r.data == {
        "station": "KSFO",
        "temperature": 50.5,
        "count": 3,
        "ok": True,
        "kind": "metar",
        "code": "abc",
        "tmin": 1.0,
        "tmax": 2.5,
    }
    assert type(r.data["count"]) is int and type(r.data["temperature"]) is float


def test_validate_fills_absent_optional_fields_with_none():
    b = validate("c", {"station": "KSFO", "temperature": "12"})
    (r,) = b.records
    assert r.data == {
        "station": "KSFO",
        "temperature": 12.0,
        "count": None,
        "ok": None,
        "kind": None,
        "code": None,
        "tmin": None,
        "tmax": None,
    }


@pytest.mark.parametrize(
    ("source", "value", "ok"),
    [
        # source f reports degF: [-90, 60] degC is [-130, 140] degF
        ("f", "100", True),  # 37.8 degC (a check in the wrong unit would refuse 100 > 60)
        ("f", "139", True),  # 59.4 degC
        ("f", "-129", True),  # -89.4 degC
        ("f", "141", False),  # 60.6 degC
        ("f", "150", False),  # 65.6 degC
        ("f", "200", False),  # 93.3 degC
        ("f", "-131", False),  # -90.6 degC
        # source c reports degC: the range applies as written
        ("c", "59.9", True),
        ("c", "100", False),
        ("c", "-91", False),
    ],
)
def test_validate_checks_ranges_in_the_source_unit(source, value, ok):
    b = validate(source, {"station": "KSFO", "temperature": value})
    assert bool(b.records) is ok
    if not ok:
        (q,) = b.quarantine
        assert (q.stage, q.reason) == ("validate", "invalid")
        assert q.message.startswith("temperature:") and repr(value) in q.message


@pytest.mark.parametrize(
    ("data", "field", "shown"),
    [
        ({"temperature": "warm"}, "temperature", "'warm'"),
        ({"temperature": "NaN"}, "temperature", "'NaN'"),
        ({"temperature": "10", "count": "11"}, "count", "'11'"),
        ({"temperature": "10", "count": "2.5"}, "count", "'2.5'"),
        ({"temperature": "10", "ok": "perhaps"}, "ok", "'perhaps'"),
        ({"temperature": "10", "kind": "buoy"}, "kind", "'buoy'"),
        ({"temperature": "10", "code": "ABC"}, "code", "'ABC'"),
        ({"station": "ksfo", "temperature": "10"}, "station", "'ksfo'"),
    ],
)
def test_validate_quarantine_message_names_the_field_and_the_value(data, field, shown):
    good = {"station": "KJFK", "temperature": "20"}
    b = validate("f", {"station": "KSFO", **data}, good)
    assert [r.data["station"] for r in b.records] == ["KJFK"]  # the good record still passes
    (q,) = b.quarantine
    assert (q.item, q.raw_id, q.source, q.reason) == (0, 7, "f", "invalid")
    assert q.message.startswith(f"{field}:"), q.message
    assert shown in q.message


def test_validate_reports_every_bad_field_of_a_record():
    b = validate("f", {"station": "KSFO", "temperature": "warm", "kind": "buoy"})
    (q,) = b.quarantine
    assert "temperature:" in q.message and "kind:" in q.message


def test_validate_quarantines_missing_required_field():
    b = validate(
        "f", {"station": "KSFO", "temperature": None}, {"station": "KJFK", "temperature": "20"}
    )
    assert [r.data["station"] for r in b.records] == ["KJFK"]
    (q,) = b.quarantine
    assert (q.item, q.reason) == (0, "invalid")
    assert q.message.startswith("temperature:")


def test_validate_message_says_a_required_field_is_missing():
    b = validate("f", {"station": "KSFO", "temperature": None})
    (q,) = b.quarantine
    assert "required" in q.message.lower() or "missing" in q.message.lower(), q.message


def test_validate_cross_field_rules():
    b = validate(
        "c",
        {"station": "KAAA", "temperature": "10", "tmin": "1", "tmax": "2"},
        {"station": "KBBB", "temperature": "10", "tmin": "5", "tmax": "2"},
        {"station": "KCCC", "temperature": "10", "tmin": "2", "tmax": "2"},
        {"station": "KDDD", "temperature": "-60", "tmin": "1", "tmax": "2", "kind": "synop"},
        {"station": "KEEE", "temperature": "-60", "tmin": "1", "tmax": "2", "kind": "metar"},
        text=RULES,
    )
    assert [r.data["station"] for r in b.records] == ["KAAA", "KCCC", "KDDD"]
    assert [(q.item, q.reason) for q in b.quarantine] == [(1, "rule"), (4, "rule")]
    first, second = b.quarantine
    assert first.message == "rule failed: tmin <= tmax"
    assert first.record["tmin"] == 5.0  # the quarantined record carries the typed values
    assert second.message == "rule failed: temperature > -50 or kind == 'synop'"


def test_validate_rules_compare_in_the_flow_unit():
    # The flow's temperature is degC; source f reports degF.
    text = VALIDATE + '    rules: ["temperature < 30"]\n'
    b = validate(
        "f",
        {"station": "KAAA", "temperature": "80"},  # 26.7 degC: passes
        {"station": "KBBB", "temperature": "95"},  # 35 degC: fails
        text=text,
    )
    assert [r.data["station"] for r in b.records] == ["KAAA"]
    assert [q.item for q in b.quarantine] == [1]


# ================================================================== transform

TRANSFORM = """
flows:
  w:
    key: station
    sources:
      - name: us
        kind: file
        path: us.json
        fields: {station: s, ts: t, temperature: a, pressure: b, wind: c, rate: d}
        units: {temperature: degF, pressure: inHg, wind: mph}
        invert: [rate]
      - name: eu
        kind: file
        path: eu.json
        fields: {station: s, ts: t, temperature: a, pressure: b, wind: c, rate: d}
        units: {temperature: degC, pressure: hPa, wind: km/h}
    fields:
      station: {type: str}
      temperature: {unit: degC}
      pressure: {unit: hPa}
      wind: {unit: m/s}
      rate: {}
    derive:
      temperature_f: "round(temperature * 1.8 + 32, 1)"
      feels: "temperature_f - wind"
"""


def transform(source: str, **data) -> dict:
    t = Transformer("w", flow_of(TRANSFORM))
    b = batch(source, rec("KSFO", T0, source, **data))
    t.run(b, NOW)
    return b.records[0].data


def test_transform_converts_units_inverts_and_derives():
    d = transform("us", temperature=212.0, pressure=29.92, wind=10.0, rate=0.8)
    assert d["temperature"] == pytest.approx(100.0, abs=1e-9)
    assert d["pressure"] == pytest.approx(29.92 * 33.8638866667, rel=1e-6)  # 1 inHg = 33.86 hPa
    assert d["wind"] == pytest.approx(4.4704, rel=1e-12)  # 1 mph = 0.44704 m/s exactly
    assert d["rate"] == pytest.approx(1.25)
    assert d["temperature_f"] == 212.0  # derived after conversion, from degC
    assert d["feels"] == pytest.approx(212.0 - 4.4704)  # derived fields see earlier ones


@pytest.mark.parametrize(("f", "c"), [(32.0, 0.0), (-40.0, -40.0), (98.6, 37.0), (0.0, -17.7778)])
def test_transform_degf_to_degc(f, c):
    assert transform("us", temperature=f)["temperature"] == pytest.approx(c, abs=1e-4)


def test_transform_other_source_units():
    d = transform("eu", temperature=21.5, pressure=1013.25, wind=36.0, rate=0.8)
    assert d["temperature"] == 21.5 and d["pressure"] == 1013.25  # already in the flow's unit
    assert d["wind"] == pytest.approx(10.0)  # 36 km/h = 10 m/s
    assert d["rate"] == 0.8  # only "us" quotes inverted


def test_transform_none_propagates_and_zero_is_not_inverted():
    d = transform("us", temperature=None, pressure=None, wind=5.0, rate=0.0)
    assert d["temperature"] is None and d["pressure"] is None
    assert d["rate"] is None  # 1/0 has no value
    assert d["temperature_f"] is None and d["feels"] is None


# ================================================================== enrich


@pytest.fixture
def enrich_flow(tmp_path):
    (tmp_path / "ref").mkdir()
    (tmp_path / "ref" / "stations.csv").write_text(
        "code,name,lat,elevation_m,country\n"
        "KSFO,San Francisco,37.619,4,US\n"
        "KDEN,Denver,39.8617,,US\n",
        encoding="utf-8",
    )
    text = """
    flows:
      w:
        key: station
        sources:
          - {name: a, kind: file, path: a.json, fields: {station: s, ts: t}}
        fields:
          station: {type: str}
        enrich:
          - {table: ref/stations.csv, on: station, key: code, add: [name, lat, elevation_m]}
    """
    cfg = load(text, tmp_path)
    return cfg


def test_enrich_adds_typed_columns_and_flags_unmatched(enrich_flow):
    e = Enricher("w", enrich_flow.flows["w"], enrich_flow)
    b = batch("a", rec("KSFO", T0), rec("KDEN", T0), rec("ZZZZ", T0))
    b.records[2].flags.append("clock_skew")
    e.run(b, NOW)
    sfo, den, zzz = (r.data for r in b.records)
    assert sfo == {"station": "KSFO", "name": "San Francisco", "lat": 37.619, "elevation_m": 4}
    assert type(sfo["elevation_m"]) is int and type(sfo["lat"]) is float
    assert den["elevation_m"] is None  # an empty cell is no value
    assert zzz == {"station": "ZZZZ", "name": None, "lat": None, "elevation_m": None}
    assert [r.flags for r in b.records] == [[], [], ["clock_skew", "unenriched"]]
    assert len(b.records) == 3 and not b.quarantine  # unmatched records are kept


# ================================================================== quality

QUALITY = """
flows:
  w:
    key: station
    freshness: 2m
    sources:
      - {name: a, kind: file, path: a.json, fields: {station: s, ts: t}, reliability: 0.8}
      - {name: b, kind: file, path: b.json, fields: {station: s, ts: t}, reliability: 0.5}
    fields:
      station: {type: str}
      temperature: {}
      pressure: {}
      wind: {}
    quality:
      threshold: 0.7
      weights: {completeness: 0.3, validity: 0.3, freshness: 0.2, reliability: 0.2}
"""
FULL = {"temperature": 1.0, "pressure": 2.0, "wind": 3.0}


def test_quality_score_from_weights():
    q = QualityCheck("w", flow_of(QUALITY))
    fetched = T0 + 10 * MIN
    b = batch(
        "a",
        rec("K1", fetched - 60_000, **FULL),  # complete, valid, fresh
        # 3 of 4 fields, clock skew, 3 minutes old (freshness 2m: half way to 0)
        rec("K2", fetched - 180_000, temperature=1.0, pressure=None, wind=3.0),
        fetched_ms=fetched,
    )
    b.records[1].flags.append("clock_skew")
    q.run(b, fetched)
    assert b.records[0].quality == pytest.approx(0.3 + 0.3 + 0.2 + 0.2 * 0.8)
    assert b.records[1].quality == pytest.approx(0.3 * 0.75 + 0.3 * 0.5 + 0.2 * 0.5 + 0.2 * 0.8)


def test_quality_weights_are_normalised():
    flow = flow_of(
        QUALITY.replace(
            "{completeness: 0.3, validity: 0.3, freshness: 0.2, reliability: 0.2}",
            "{completeness: 2, validity: 0, freshness: 0, reliability: 2}",
        )
    )
    q = QualityCheck("w", flow)
    b = batch("a", rec("K1", NOW, temperature=1.0, pressure=None, wind=None))
    q.run(b, NOW)
    assert b.records[0].quality == pytest.approx(0.5 * 0.5 + 0.5 * 0.8)


@pytest.mark.parametrize(
    ("flags", "validity"),
    [
        ([], 1.0),
        (["out_of_order"], 0.75),
        (["unenriched"], 0.75),
        (["out_of_order", "unenriched"], 0.5),
        (["clock_skew"], 0.5),
        (["clock_skew", "out_of_order", "unenriched"], 0.0),
        (["anomaly:temperature"], 1.0),
    ],
)
def test_quality_flags_lower_validity(flags, validity):
    q = QualityCheck("w", flow_of(QUALITY))
    b = batch("a", rec("K1", NOW, **FULL))
    b.records[0].flags.extend(flags)
    q.run(b, NOW)
    assert b.records[0].quality == pytest.approx(0.3 + 0.3 * validity + 0.2 + 0.16)


@pytest.mark.parametrize(
    ("age_s", "freshness"), [(0, 1.0), (120, 1.0), (150, 0.75), (180, 0.5), (240, 0.0), (3600, 0.0)]
)
def test_quality_freshness_is_measured_at_fetch_time(age_s, freshness):
    q = QualityCheck("w", flow_of(QUALITY))
    fetched = T0 + 100 * MIN
    expected = 0.3 + 0.3 + 0.2 * freshness + 0.16
    for now in (fetched, fetched + 86_400_000):  # processed at once, or replayed a day later
        b = batch("a", rec("K1", fetched - age_s * 1000, **FULL), fetched_ms=fetched)
        q.run(b, now)
        assert b.records[0].quality == pytest.approx(expected), now


def test_quality_below_threshold_raises_one_issue_per_source():
    q = QualityCheck("w", flow_of(QUALITY))
    stale = NOW - 10 * MIN  # freshness 0
    a = batch(
        "a",
        rec("K1", stale, **FULL),
        rec("K2", stale, **FULL),
        rec("K3", NOW, **FULL),
        rec("K4", stale, temperature=1.0),
        raw_id=11,
    )
    b = batch("b", rec("K1", NOW, **FULL), raw_id=12)  # 0.8 + 0.2 * 0.5 = 0.9: fine
    for x in (a, b):
        q.run(x, NOW)
    # a (reliability 0.8): complete but stale 0.3 + 0.3 + 0 + 0.16 = 0.76 >= 0.7, fresh 0.96;
    # K4 has 2 of 4 fields and is stale: 0.3 * 0.5 + 0.3 + 0 + 0.16 = 0.61 < 0.7.
    assert [r.quality for r in a.records] == pytest.approx([0.76, 0.76, 0.96, 0.61])
    assert b.issues == []
    (issue,) = a.issues
    assert (issue.kind, issue.source, issue.severity) == ("low_quality", "a", "warning")
    assert issue.fingerprint == "low_quality:w:a"
    assert issue.detail["count"] == 1 and issue.detail["keys"] == ["K4"]
    assert issue.record_keys == [("K4", stale)] and issue.raw_ids == [11]
    # Low records of source b (1 of 4 fields, stale: 0.075 + 0.3 + 0 + 0.1 = 0.475) raise
    # an issue of their own.
    low_b = batch("b", rec("K7", stale), rec("K8", stale), raw_id=13)
    q.run(low_b, NOW)
    (ib,) = low_b.issues
    assert (ib.source, ib.detail["count"], ib.raw_ids) == ("b", 2, [13])
    assert ib.fingerprint != issue.fingerprint


# ================================================================== resolve

RESOLVE = """
flows:
  w:
    key: station
    sources:
      - {name: a, kind: file, path: a.json, fields: {station: s, ts: t}, priority: 1, reliability: 1.0}
      - {name: b, kind: file, path: b.json, fields: {station: s, ts: t}, priority: 2, reliability: 0.5}
      - {name: c, kind: file, path: c.json, fields: {station: s, ts: t}, priority: 3, reliability: 0.25}
    fields:
      station: {type: str}
      temperature: {}
      cond: {type: str}
      rate: {}
    resolve: {window: 1m, strategy: STRATEGY, tolerance: {temperature: 1.5, rate: "0.1%"}}
"""


def resolver(strategy: str = "median", window: str = "1m") -> Resolver:
    text = RESOLVE.replace("STRATEGY", strategy).replace("window: 1m", f"window: {window}")
    return Resolver("w", flow_of(text))


def three_sources(**over) -> list[Rec]:
    """a=10 at +10s (q 1.0), b=16 at +20s (q 0.8), c=11 at +5s (q 1.0), one window."""
    recs = [
        rec("KSFO", T0 + 10_000, "a", raw_id=1, temperature=10.0, cond="rain"),
        rec("KSFO", T0 + 20_000, "b", raw_id=2, temperature=16.0, cond="snow"),
        rec("KSFO", T0 + 5_000, "c", raw_id=3, temperature=11.0, cond=None),
    ]
    recs[1].quality = 0.8
    for r in recs:
        r.data.update(over.get(r.source, {}))
    return recs


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        ("priority", 10.0),  # a has priority 1
        ("median", 11.0),  # of 10, 11, 16
        ("mean", 37 / 3),
        ("most_recent", 16.0),  # b is stamped latest (+20s)
        # reliability x quality: a 1.0, b 0.5 * 0.8 = 0.4, c 0.25 -> (10 + 6.4 + 2.75) / 1.65
        ("weighted", (10.0 * 1.0 + 16.0 * 0.4 + 11.0 * 0.25) / 1.65),
    ],
)
def test_resolve_strategies(strategy, expected):
    r = resolver(strategy)
    b = batch(None, *three_sources())
    r.run(b, NOW)
    (m,) = b.records
    assert m.data["temperature"] == pytest.approx(expected, rel=1e-12)
    assert m.ts == T0  # stamped at the window's start
    assert m.data["cond"] == "rain"  # non-numeric: the highest-priority source that has it
    assert m.sources == ["a", "b", "c"] and m.raw_ids == [1, 2, 3]
    assert set(m.contrib) == {"a", "b", "c"}
    assert m.contrib["b"]["v"]["temperature"] == 16.0 and m.contrib["b"]["ts"] == T0 + 20_000
    assert m.quality == pytest.approx((1.0 + 0.8 + 1.0) / 3, abs=1e-4)


def test_resolve_non_numeric_falls_back_to_next_source_by_priority():
    b = batch(None, *three_sources(a={"cond": None}))
    resolver().run(b, NOW)
    assert b.records[0].data["cond"] == "snow"


def test_resolve_window_bucketing():
    r = resolver("mean")
    b = batch(
        None,
        rec("K1", T0 + 1_000, "a", temperature=1.0),
        rec("K1", T0 + 59_999, "b", temperature=3.0),  # same minute
        rec("K1", T0 + 60_000, "c", temperature=100.0),  # next minute
        rec("K2", T0 + 30_000, "b", temperature=7.0),
    )  # other key
    r.run(b, NOW)
    got = [(m.key, m.ts, m.data["temperature"], m.sources) for m in b.records]
    assert got == [
        ("K1", T0, 2.0, ["a", "b"]),
        ("K2", T0, 7.0, ["b"]),
        ("K1", T0 + MIN, 100.0, ["c"]),
    ]
    assert r.bucket(T0 + 59_999) == T0 and r.bucket(T0 + 60_000) == T0 + MIN


def test_resolve_gives_lone_records_by_window_then_key_in_whatever_order_they_came():
    readings = [("K2", T0 + MIN + 5), ("K1", T0 + 2 * MIN), ("K1", T0 + 7), ("K3", T0 + MIN),
                ("K2", T0 + 9)]
    expected = [("K1", T0), ("K2", T0), ("K2", T0 + MIN), ("K3", T0 + MIN), ("K1", T0 + 2 * MIN)]
    for order in (readings, sorted(readings, key=lambda kt: (kt[1] // MIN, kt[0]))):
        b = batch("a", *[rec(k, ts, "a", temperature=1.0) for k, ts in order])
        resolver().run(b, NOW)
        assert [(m.key, m.ts) for m in b.records] == expected


def test_resolve_without_window_merges_only_equal_timestamps():
    r = resolver("mean", window="0")
    b = batch(
        None,
        rec("K1", T0, "a", temperature=1.0),
        rec("K1", T0, "b", temperature=3.0),
        rec("K1", T0 + 1, "c", temperature=9.0),
    )
    r.run(b, NOW)
    assert [(m.ts, m.data["temperature"]) for m in b.records] == [(T0, 2.0), (T0 + 1, 9.0)]


def test_resolve_newer_reading_of_a_source_replaces_older_one_in_the_window():
    r = resolver("mean")
    b = batch(
        None,
        rec("K1", T0 + 10_000, "a", raw_id=1, temperature=1.0),
        rec("K1", T0 + 40_000, "a", raw_id=2, temperature=5.0),
        rec("K1", T0 + 20_000, "a", raw_id=3, temperature=99.0),
    )  # older, other payload
    r.run(b, NOW)
    (m,) = b.records
    assert m.data["temperature"] == 5.0 and m.contrib["a"]["raw"] == 2


def test_resolve_absolute_tolerance_conflict_names_every_source_and_value():
    r = resolver("median")
    ok = batch(None, *three_sources(b={"temperature": 11.5}))  # spread 1.5: not beyond
    r.run(ok, NOW)
    assert ok.issues == [] and "conflict" not in ok.records[0].flags
    bad = batch(None, *three_sources())  # spread 16 - 10 = 6 > 1.5
    r.run(bad, NOW)
    (issue,) = bad.issues
    assert issue.kind == "conflict" and issue.key == "KSFO"
    assert issue.detail["field"] == "temperature"
    assert issue.detail["values"] == {"a": 10.0, "b": 16.0, "c": 11.0}
    assert issue.detail["spread"] == 6.0 and issue.detail["tolerance"] == 1.5
    for text in ("a=10", "b=16", "c=11", "temperature"):
        assert text in issue.title
    assert issue.raw_ids == [1, 2, 3] and issue.record_keys == [("KSFO", T0)]
    assert "conflict" in bad.records[0].flags


def test_resolve_relative_tolerance():
    r = resolver("median")
    close = batch(None, rec("K1", T0, "a", rate=1.1000), rec("K1", T0, "b", rate=1.1010))
    r.run(close, NOW)  # spread 0.0010 <= 0.1% of 1.1005 = 0.0011005
    assert close.issues == []
    far = batch(None, rec("K2", T0, "a", rate=1.1000), rec("K2", T0, "b", rate=1.1013))
    r.run(far, NOW)  # spread 0.0013 > 0.1% of 1.10065
    (issue,) = far.issues
    assert issue.detail["values"] == {"a": 1.1, "b": 1.1013}
    assert issue.detail["tolerance"] == pytest.approx(0.00110065)
    assert "a=1.1" in issue.title and "b=1.101" in issue.title


def test_resolve_merges_stored_contributions_of_earlier_runs():
    r = resolver("priority")
    first = batch(
        None,
        rec("K1", T0 + 5_000, "a", raw_id=1, temperature=10.0),
        rec("K1", T0 + 6_000, "b", raw_id=2, temperature=10.5),
    )
    r.run(first, NOW)
    stored = {("K1", T0): first.records[0].contrib}
    # Source c reports late, in a later run: it joins the stored window, it does not replace it.
    late = batch(None, rec("K1", T0 + 7_000, "c", raw_id=3, temperature=13.0))
    r.run(late, NOW, stored)
    (m,) = late.records
    assert m.data["temperature"] == 10.0  # a still wins on priority
    assert m.sources == ["a", "b", "c"] and m.raw_ids == [1, 2, 3]
    # ...and the spread across runs (13 - 10) is a conflict beyond the tolerance of 1.5.
    assert [i.detail["values"] for i in late.issues] == [{"a": 10.0, "b": 10.5, "c": 13.0}]
    # Without the stored contributions the late source alone would have been the record.
    alone = batch(None, rec("K1", T0 + 7_000, "c", raw_id=3, temperature=13.0))
    r.run(alone, NOW)
    assert alone.records[0].data["temperature"] == 13.0
    # The caller's stored mapping is not mutated.
    assert set(stored[("K1", T0)]) == {"a", "b"}


def test_resolve_median_with_stored_contribution():
    r = resolver("median")
    stored = {
        ("K1", T0): {
            "a": {
                "v": {"station": "K1", "temperature": 10.0},
                "ts": T0,
                "raw": 1,
                "q": 1.0,
                "f": [],
            },
            "b": {
                "v": {"station": "K1", "temperature": 11.0},
                "ts": T0,
                "raw": 2,
                "q": 1.0,
                "f": [],
            },
        }
    }
    b = batch(None, rec("K1", T0 + 1_000, "c", raw_id=3, temperature=20.0))
    r.run(b, NOW, stored)
    assert b.records[0].data["temperature"] == 11.0  # median of 10, 11, 20


# ================================================================== detect

DETECT = """
flows:
  w:
    key: station
    sources:
      - {name: a, kind: file, path: a.json, fields: {station: s, ts: t}}
    fields:
      station: {type: str}
      temperature: {}
    detect:
      # The calibrated defaults wait for 150 scored points (warmup): these short series
      # calibrate on the 20-30 points after min_history.
      - {metric: temperature, methods: [robust_z, ewma], window: 30, threshold: 4, min_history: 10,
         warmup: 10, calibration_window: 100}
"""


def steady(n: int, key: str = "K1") -> list[Rec]:
    """A steady series around 20.0 with a small, deterministic wobble, one point a minute."""
    return [rec(key, T0 + i * MIN, temperature=20.0 + 0.1 * ((i * 7) % 5 - 2)) for i in range(n)]


def detect(records: list[Rec]) -> Batch:
    d = AnomalyDetector("w", flow_of(DETECT))
    b = batch(None, *records)
    d.run(b, NOW)
    return b


def test_detect_flags_a_spike_after_a_steady_history():
    history = steady(40)
    spike = rec("K1", T0 + 40 * MIN, temperature=35.0)
    b = detect([*history, spike])
    assert all(not r.anomalous and r.anomaly < 0.5 for r in history)
    assert all(r.anomaly == 0.0 for r in history[:10])  # min_history: no score yet
    assert spike.anomalous and spike.anomaly >= 0.5
    assert "anomaly:temperature" in spike.flags
    (issue,) = b.issues
    assert (issue.kind, issue.key) == ("anomaly", "K1")
    assert issue.detail["metric"] == "temperature" and issue.detail["value"] == 35.0
    assert issue.record_keys == [("K1", T0 + 40 * MIN)]
    assert len(b.records) == 41  # anomalies are flagged, never dropped


def test_detect_scores_use_only_the_past():
    past = steady(40)
    base = {r.ts: r.anomaly for r in detect(past).records}
    again = steady(40)
    spike = rec("K1", T0 + 40 * MIN, temperature=35.0)
    detect([spike, *again])  # the future spike listed first: it is still scored last
    assert {r.ts: r.anomaly for r in again} == base
    assert spike.anomalous


def test_detect_series_are_independent_per_key():
    k1 = steady(30, "K1")
    k2 = steady(30, "K2")
    jump = rec("K2", T0 + 30 * MIN, temperature=35.0)
    calm = rec("K1", T0 + 30 * MIN, temperature=20.0)
    b = detect([*k1, *k2, jump, calm])
    assert jump.anomalous and not calm.anomalous
    assert [i.key for i in b.issues] == ["K2"]


def test_detect_ignores_missing_and_non_finite_values():
    history = steady(30)
    holes = [
        rec("K1", T0 + 30 * MIN, temperature=None),
        rec("K1", T0 + 31 * MIN, temperature=math.nan),
    ]
    b = detect([*history, *holes])
    assert [(r.anomaly, r.anomalous) for r in holes] == [(0.0, False), (0.0, False)]
    assert b.issues == []


def test_detect_explains_a_flagged_point_in_its_data_and_issue():
    history = steady(40)
    spike = rec("K1", T0 + 40 * MIN, temperature=35.0)
    b = detect([*history, spike])
    reason = spike.data["anomaly_reason"]
    assert reason["metric"] == "temperature" and reason["detector"] in ("robust_z", "ewma")
    assert reason["observed"] == 35.0
    assert reason["low"] < 20.0 < reason["high"] < 35.0  # the range it would have accepted
    assert abs(reason["expected"] - 20.0) < 0.5
    assert 0 <= reason["probability"] < 1e-4 and reason["score"] == spike.anomaly
    assert reason["episode"] == 1
    assert all("anomaly_reason" not in r.data for r in history)
    (issue,) = b.issues
    assert issue.detail["reason"] == reason and issue.detail["episode"] == 1
    assert "expected" in issue.title


def test_detect_one_issue_per_episode_and_a_new_one_for_the_next():
    """The high scores after an episode's first point are flagged (with a reason) but raise
    no issue; once the episode is over, the next anomaly is a new issue (new fingerprint)."""
    d = AnomalyDetector("w", flow_of(DETECT.replace("calibration_window: 100",
                                                    "calibration_window: 100, refractory: 5")))
    points = [*steady(40),
              *[rec("K1", T0 + (40 + i) * MIN, temperature=35.0 + i) for i in range(3)],
              *[rec("K1", T0 + (43 + i) * MIN, temperature=20.0 + 0.1 * ((i * 7) % 5 - 2))
                for i in range(30)],
              rec("K1", T0 + 73 * MIN, temperature=5.0)]
    b = batch(None, *points)
    d.run(b, NOW)
    flagged = [r for r in points if "anomaly:temperature" in r.flags]
    assert len(flagged) >= 4 and all("anomaly_reason" in r.data for r in flagged)
    assert [r.ts for r in points if r.anomalous] == [T0 + 40 * MIN, T0 + 73 * MIN]
    assert [i.fingerprint for i in b.issues] == [f"anomaly:w:K1:temperature:{T0 + 40 * MIN}",
                                                 f"anomaly:w:K1:temperature:{T0 + 73 * MIN}"]
    assert [i.detail["episode"] for i in b.issues] == [1, 2]


def test_detect_warm_replays_enough_history_to_flag_after_a_restart():
    """A restarted detector fed the stored history scores the next points as the
    uninterrupted one does (history_points per series is what the engine loads)."""
    flow = flow_of(DETECT)
    history = steady(60)
    live = AnomalyDetector("w", flow)
    live.run(batch(None, *history), NOW)
    restarted = AnomalyDetector("w", flow)
    n = restarted.history_points("temperature")
    assert n == 10 + 100 + 30  # min_history + calibration_window + window
    stored = {"K1": [(r.ts, r.data["temperature"]) for r in history][-n:]}
    restarted.warm("temperature", stored)
    restarted.warm("pressure", stored)  # a metric it does not detect: ignored
    a = rec("K1", T0 + 60 * MIN, temperature=35.0)
    b = rec("K1", T0 + 60 * MIN, temperature=35.0)
    live.run(batch(None, a), NOW)
    restarted.run(batch(None, b), NOW)
    assert b.anomalous and (a.anomaly, a.anomalous) == (b.anomaly, b.anomalous)
    assert restarted.history_points("pressure") == 0


def test_resolve_lone_records_keep_their_values_flags_and_contribution_beside_merged_ones():
    r = resolver("mean")
    lone = rec("K2", T0 + MIN + 5_000, "a", raw_id=7, temperature=4.0)
    lone.flags = ["out_of_order", "clock_skew", "out_of_order"]
    lone.quality = 0.75
    b = batch(
        None,
        lone,  # a window of its own, later than the others: sorted after them
        rec("K1", T0 + 1_000, "a", raw_id=5, temperature=1.0),
        rec("K1", T0 + 2_000, "b", raw_id=6, temperature=3.0),
        rec("K3", T0 + 3_000, "b", raw_id=8, temperature=8.0),
    )
    r.run(b, NOW)
    assert [(m.key, m.ts, m.data["temperature"], m.sources, m.raw_ids) for m in b.records] == [
        ("K1", T0, 2.0, ["a", "b"], [5, 6]),
        ("K3", T0, 8.0, ["b"], [8]),
        ("K2", T0 + MIN, 4.0, ["a"], [7]),
    ]
    m = b.records[2]
    assert m is lone and m.item == -1 and m.quality == 0.75
    assert m.flags == ["clock_skew", "out_of_order"]
    assert m.contrib == {"a": {"v": {"station": "K2", "temperature": 4.0},
                               "ts": T0 + MIN + 5_000, "raw": 7,
                               "q": 0.75, "f": ["out_of_order", "clock_skew", "out_of_order"]}}
