"""Keys from anywhere (a source constant, a derived field, a URL cut by regex, composite
keys, value maps on non-strings) and timestamps (ISO 8601 intervals, epoch by magnitude,
a per-source zone, no upper bound), through collect, validate and transform."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime

import pytest

from flowdeck.pipeline.config import ConfigError, config_warnings, parse_config
from flowdeck.pipeline.model import Batch
from flowdeck.pipeline.stages.collect import EPOCH_LIMITS, Collector, interval_parser, iso_duration
from flowdeck.pipeline.stages.transform import Transformer
from flowdeck.pipeline.stages.validate import Validator

NOW = int(datetime(2026, 1, 1, 1, 0, tzinfo=UTC).timestamp() * 1000)
T0 = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000)


def flow(text: str):
    return parse_config(textwrap.dedent(text), "flows.yaml").flows["w"]


def run(f, items, source="a"):
    """collect -> validate -> transform over one batch; the batch."""
    b = Batch("w", source, 1, NOW, items=list(items))
    Collector("w", f).run(b, NOW)
    Validator("w", f).run(b, NOW)
    Transformer("w", f).run(b, NOW)
    return b


BASE = """
flows:
  w:
    key: {key}
    sources:
      - name: a
        kind: file
        path: a.json
        {source}
        fields: {{ts: time, {fields}}}
    fields: {{{flow_fields}}}
    {extra}
"""


def make(key="station", source="", fields="station: station", flow_fields="station: {type: str}",
         extra=""):
    return flow(BASE.format(key=key, source=source, fields=fields, flow_fields=flow_fields,
                            extra=extra))


def test_a_source_constant_is_the_key_of_every_record():
    f = make(source="key: KCNK", fields="temp: t", flow_fields="station: {type: str}, temp: {}")
    b = run(f, [{"time": "2026-01-01T00:00:00Z", "t": 1.5}])
    (r,) = b.records
    assert (r.key, r.data) == ("KCNK", {"station": "KCNK", "temp": 1.5})


def test_a_key_derived_from_a_url_with_regex():
    f = make(fields="url: station", flow_fields="url: {type: str}",
             extra='derive: {station: \'regex(url, "/stations/([A-Z0-9]+)$")\'}')
    b = run(f, [{"time": "2026-01-01T00:00:00Z",
                 "station": "https://api.example.gov/stations/KCNK"},
                {"time": "2026-01-01T00:00:00Z", "station": "https://elsewhere/x"}])
    assert [(r.key, r.data["station"]) for r in b.records] == [("KCNK", "KCNK")]
    (q,) = b.quarantine
    assert (q.stage, q.reason) == ("collect", "missing_key")


def test_composite_keys_join_their_parts_with_a_slash_and_keep_each_part():
    f = make(key="[station, sensor]", fields="station: s, sensor: n, v: v",
             flow_fields="station: {type: str}, sensor: {type: str}, v: {}")
    b = run(f, [{"time": "2026-01-01T00:00:00Z", "s": "KCNK", "n": 2, "v": 1},
                {"time": "2026-01-01T00:00:00Z", "s": "KCNK", "v": 1}])
    (r,) = b.records
    assert (r.key, r.data) == ("KCNK/2", {"station": "KCNK", "sensor": "2", "v": 1.0})
    assert [q.reason for q in b.quarantine] == ["missing_key"]
    assert f.metrics() == ["v"]


def test_maps_match_numbers_and_say_what_happens_to_unmatched_values():
    f = make(fields="code: {path: c, map: {900: storm, 1: rain}, unmatched: reject}",
             flow_fields="station: {type: str}, code: {type: str}", source="key: K")
    b = run(f, [{"time": "2026-01-01T00:00:00Z", "c": 900},
                {"time": "2026-01-01T00:01:00Z", "c": 1.0},
                {"time": "2026-01-01T00:02:00Z", "c": 7}])
    assert [r.data["code"] for r in b.records] == ["storm", "rain"]
    (q,) = b.quarantine
    assert q.reason == "unmapped" and "7 is not in the field's map" in q.message
    f = make(fields="code: {path: c, map: {900: storm}, unmatched: null}",
             flow_fields="station: {type: str}, code: {type: str}", source="key: K")
    assert [r.data["code"] for r in run(f, [{"time": "2026-01-01T00:00:00Z", "c": 5}]).records] \
        == [None]
    f = make(fields="code: {path: c, map: {900: storm}}",  # keep (the default)
             flow_fields="station: {type: str}, code: {type: str}", source="key: K")
    assert [r.data["code"] for r in run(f, [{"time": "2026-01-01T00:00:00Z", "c": 5}]).records] \
        == ["5"]


@pytest.mark.parametrize(
    ("ftype", "value", "want"),
    [("str", 900, "900"), ("str", 2.0, "2"), ("int", " 12 ", 12), ("int", "12.0", 12),
     ("int", 3.0, 3), ("float", " 1.5", 1.5), ("float", 2, 2.0), ("bool", "yes", True),
     ("bool", "0", False), ("bool", 1, True), ("bool", " FALSE ", False)],
)
def test_coercion_before_validation(ftype, value, want):
    f = make(source="key: K", fields="x: x", flow_fields=f"station: {{type: str}}, x: {{type: {ftype}}}")
    (r,) = run(f, [{"time": "2026-01-01T00:00:00Z", "x": value}]).records
    assert r.data["x"] == want and type(r.data["x"]) is type(want)


@pytest.mark.parametrize(("ftype", "value"), [("int", "12.5"), ("int", "x"), ("bool", "2"),
                                              ("float", "nan"), ("float", "1,5")])
def test_values_no_rule_converts_are_refused_as_they_came(ftype, value):
    f = make(source="key: K", fields="x: x", flow_fields=f"station: {{type: str}}, x: {{type: {ftype}}}")
    b = run(f, [{"time": "2026-01-01T00:00:00Z", "x": value}])
    (q,) = b.quarantine
    assert q.reason == "invalid" and repr(value) in q.message


def test_check_is_satisfied_by_a_constant_or_derived_key_and_names_the_missing_one():
    make(source="key: KCNK", fields="temp: t", flow_fields="station: {type: str}, temp: {}")
    with pytest.raises(ConfigError) as err:
        make(fields="temp: t", flow_fields="station: {type: str}, temp: {}")
    assert "no mapping for the key field 'station'" in str(err.value)
    with pytest.raises(ConfigError) as err:
        make(key="[station, sensor]", source="key: K", fields="sensor: n",
             flow_fields="station: {type: str}, sensor: {type: str}")
    assert "give {part: value}" in str(err.value)
    f = make(key="[station, sensor]", source="key: {station: K}", fields="sensor: n",
             flow_fields="station: {type: str}, sensor: {type: str}")
    (r,) = run(f, [{"time": "2026-01-01T00:00:00Z", "n": "a"}]).records
    assert r.key == "K/a"


# ------------------------------------------------------------------ timestamps


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("PT1H", 3600), ("PT15M", 900), ("P1D", 86400), ("P1DT6H", 108000), ("PT0.5S", 0.5),
     ("P1W", 604800)],
)
def test_iso_durations(text, seconds):
    assert iso_duration(text) == seconds


@pytest.mark.parametrize(
    ("value", "ms", "duration"),
    [("2022-02-03T21:00:00+00:00/PT1H", 1643922000000, 3600.0),
     ("2022-02-03T21:00:00+00:00/2022-02-03T23:00:00+00:00", 1643922000000, 7200.0),
     ("PT2H/2022-02-03T23:00:00+00:00", 1643922000000, 7200.0),
     ("2022-02-03T21:00:00+00:00", 1643922000000, None)],
)
def test_interval_timestamps_keep_the_start_and_the_length(value, ms, duration):
    assert interval_parser("iso", "UTC")(value) == (ms, duration)


def test_an_interval_stores_its_duration_as_a_field():
    f = make(source="key: K", fields="temp: v", flow_fields="station: {type: str}, temp: {}",
             extra="timestamps: {max_future: null}")
    b = run(f, [{"time": "2026-01-01T00:00:00+00:00/PT1H", "v": 1},
                {"time": "2036-01-01T00:00:00+00:00/P1D", "v": 2},  # a forecast: no bound
                {"time": "2026-01-01T03:00:00+00:00/PTX", "v": 3}])
    assert [(r.ts, r.data["ts_duration_s"]) for r in b.records] == [
        (T0, 3600.0), (int(datetime(2036, 1, 1, tzinfo=UTC).timestamp() * 1000), 86400.0)]
    assert [q.reason for q in b.quarantine] == ["bad_timestamp"]


@pytest.mark.parametrize(
    ("value", "ms"),
    [(1767225600, T0), (1767225600.5, T0 + 500), (1767225600000, T0),
     (1767225600000000, T0), ("1767225600123", T0 + 123), (1767225600000000000, T0)],
)
def test_epoch_unit_is_read_from_the_magnitude(value, ms):
    assert interval_parser("epoch", "UTC")(value) == (ms, None)
    assert EPOCH_LIMITS[0][0] == 1e11  # seconds up to the year 5138 (documented)


def test_a_source_zone_is_honoured_for_naive_timestamps_and_check_warns_without_one():
    f = make(source="key: K\n        timestamp: {tz: America/New_York}", fields="v: v",
             flow_fields="station: {type: str}, v: {}")
    (r,) = run(f, [{"time": "2025-12-31T19:00:00", "v": 1}]).records
    assert r.ts == T0
    cfg = parse_config(textwrap.dedent(BASE.format(
        key="station", source="key: K\n        timestamp: {format: '%d/%m/%Y %H:%M'}",
        fields="v: v", flow_fields="station: {type: str}, v: {}", extra="")), "flows.yaml")
    (w,) = config_warnings(cfg)
    assert str(w).startswith("flows.yaml:10: flows.w.sources[0].timestamp: warning: ")
    assert "taken as UTC in field 'ts'" in str(w)
    with pytest.raises(ConfigError, match="unknown time zone 'Mars/Olympus'"):
        make(source="key: K\n        timestamp: {tz: Mars/Olympus}", fields="v: v",
             flow_fields="station: {type: str}, v: {}")


def test_detection_by_a_series_field_instead_of_the_record_key():
    from flowdeck.pipeline.stages.detect import AnomalyDetector

    f = make(key="event_id", source="", fields="event_id: id, region: r, mag: m",
             flow_fields="event_id: {type: str}, region: {type: str}, mag: {}",
             extra="series: region\n    detect: [{metric: mag, calibrate: false, "
                   "min_history: 5, methods: [robust_z]}]")
    items = [{"time": datetime.fromtimestamp((T0 - 3600_000 + i * 60_000) / 1000, UTC)
              .isoformat(), "id": f"ev{i}", "r": "north", "m": 1.0 + (i % 3) * 0.1}
             for i in range(30)]
    items.append({"time": "2026-01-01T00:30:00+00:00", "id": "big", "r": "north", "m": 50.0})
    b = run(f, items)
    AnomalyDetector("w", f).run(b, NOW)
    assert [r.key for r in b.records if r.anomalous] == ["big"]
