"""Config for payload shapes: every path the engine compiles is compiled by `check` (so the
daemon never refuses what check accepted), units read from the payload, melt/zip keys."""

from __future__ import annotations

import pytest

from flowdeck.pipeline.config import ConfigError, parse_config
from flowdeck.pipeline.sniff import dry_run

FLOW = """\
flows:
  obs:
    key: station
    sources:
      - name: nws
        kind: file
        path: obs.json
        format: {fmt}
{extra}
        fields:
          ts: {ts}
          station: station
          temperature: temperature.value
{units}
    fields:
      station: {{type: str, required: true}}
      temperature: {{type: float, unit: degF}}
"""


def config(fmt="json", extra="", ts="timestamp", units=""):
    return parse_config(FLOW.format(fmt=fmt, extra=extra, ts=ts, units=units), "flow.yaml")


def problems(**kw) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        config(**kw)
    return [str(p) for p in exc.value.problems]


def test_parent_and_root_paths_are_accepted_and_bad_ones_refused_with_their_line():
    assert config(ts='"../@time"').flows["obs"].sources[0].fields["ts"] == "../@time"
    assert config(ts='"$.meta.generated"')
    assert problems(ts='"../a..b"') == [
        "flow.yaml:11: flows.obs.sources[0].fields.ts: invalid field path '../a..b': empty segment"]
    assert "'$' must be followed by '.name'" in problems(ts='"$time"')[0]


def test_units_from_a_path_become_unit_from():
    cfg = config(units="        units: {temperature: {from: temperature.unitCode}}")
    src = cfg.flows["obs"].sources[0]
    assert src.unit_from == {"temperature": "temperature.unitCode"} and src.units == {}
    (p,) = problems(units="        units: {temperature: {form: temperature.unitCode}}")
    assert "expected a unit name or {from: PATH}" in p
    (p,) = problems(units="        units: {station: {from: unitCode}}")
    assert p.endswith("field 'station' declares no unit to convert to")


def test_shape_keys_are_checked():
    (p,) = problems(extra="        melt: {columns: [a], pattern: x, name: m, value: v}")
    assert "give exactly one of 'columns' or 'pattern'" in p
    (p,) = problems(extra="        melt: {pattern: '(a)(b)', name: m, value: v}")
    assert "at most one group" in p
    (p,) = problems(fmt="xml", extra="        records: g:Envelope.Cube")
    assert "namespace prefix 'g' is not declared in 'namespaces'" in p
    (p,) = problems(extra="        namespaces: {g: 'urn:x'}")
    assert "'namespaces' only applies to format xml" in p
    (p,) = problems(fmt="csv", extra="        positional: [a, b]")
    assert "do not apply to format csv" in p
    (p,) = problems(extra="        zip: 'hourly..x'")
    assert "invalid zip path" in p


NWS = b"""{"type": "FeatureCollection", "features": [
 {"properties": {"station": "KCNK", "timestamp": "2024-03-01T00:00:00+00:00",
                 "temperature": {"value": 100.0, "unitCode": "wmoUnit:degC"}}},
 {"properties": {"station": "KCNK", "timestamp": "2024-03-01T01:00:00+00:00",
                 "temperature": {"value": 5.0, "unitCode": "wmoUnit:furlongC"}}},
 {"properties": {"station": "KCNK", "timestamp": "2024-03-01T02:00:00+00:00",
                 "temperature": {"value": 5.0}}},
 {"properties": {"station": "KCNK", "timestamp": "2024-03-01T03:00:00+00:00",
                 "temperature": {"value": null}}}]}"""


def test_unit_codes_convert_per_record_and_unknown_codes_quarantine():
    cfg = config(fmt="geojson", units="        units: {temperature: {from: temperature.unitCode}}")
    run = dry_run(cfg, "obs", "nws", NWS, now_ms=1_900_000_000_000)
    assert [(r.ts, r.data["temperature"]) for r in run.records] == [
        (1709251200000, pytest.approx(212.0, abs=1e-9)), (1709262000000, None)]
    assert [(q.reason, q.message) for q in run.quarantine] == [
        ("bad_unit", "temperature: unknown unit code 'wmoUnit:furlongC'"),
        ("bad_unit", "temperature: no unit at 'temperature.unitCode' (paths are relative to "
                     "the record; '../' climbs, '$.' starts at the payload's root)")]


LAUGHS = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
          + b"".join(b'<!ENTITY lol%d "%s">' % (i, b"".join(b"&lol%d;" % (i - 1) if i > 1
                                                          else b"&lol;" for _ in range(10)))
                     for i in range(1, 10))
          + b"]><rows><row station='KCNK' timestamp='2024-03-01T00:00:00'>&lol9;</row></rows>")


def test_hostile_xml_payload_is_quarantined_whole_with_its_reason():
    cfg = config(fmt="xml", extra="        records: rows.row", ts='"@timestamp"')
    run = dry_run(cfg, "obs", "nws", LAUGHS, now_ms=1_900_000_000_000)
    assert run.records == []
    (q,) = run.quarantine
    assert (q.stage, q.reason, q.item) == ("collect", "xml_forbidden", -1)
    assert q.message.startswith("XML refused: it declares a dtd")
