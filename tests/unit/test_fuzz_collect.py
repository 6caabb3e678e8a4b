"""Fuzzing payload parsing, field mapping and the collect path (issue 15, item 1).

``parse_payload`` over generated documents of every format (JSON, GeoJSON, JSON Lines,
CSV, columnar JSON) with random records/columns paths, and over mutated bytes of real
ones: it returns dicts and BadItems or raises PayloadError, nothing else. Then the
collect path a fetched payload really takes (``StageChain.collect`` and ``refine``: parse,
field mapping, timestamps, validation, units, derived fields, enrichment, quality) on
the bundled demo's sources with generated payloads shaped like each source's: no
exception escapes, and every record that comes out satisfies its flow's field rules
(the rest is quarantined with a reason).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowdeck.pipeline.config import BUNDLED_CONFIG, load_config
from flowdeck.pipeline.payload import BadItem, PayloadError, parse_payload
from flowdeck.pipeline.stages.chain import StageChain
from flowdeck.storage.model import RawDraft

EXAMPLES = int(os.environ.get("FLOWDECK_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=timedelta(seconds=5),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
NOW = 1_795_521_630_000  # 2026-11-24T12:00:30Z

scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**64), 2**64),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12))
json_values = st.recursive(
    scalars,
    lambda kids: st.one_of(st.lists(kids, max_size=4),
                           st.dictionaries(st.text(max_size=6), kids, max_size=4)),
    max_leaves=25,
)
paths = st.one_of(st.none(), st.just(""), st.sampled_from(
    ["rows", "data.rows", "features[].properties", "a[]", "a[].b", "[]", "a.b.c", "0",
     "a[].b[].c", "a..b", "[][]", ".a", "a[", "a]"]))


def _ok(items) -> None:
    assert isinstance(items, list)
    for i, it in enumerate(items):
        assert isinstance(it, dict) or isinstance(it, BadItem), type(it)
        if isinstance(it, BadItem):
            assert it.reason and it.message and len(it.text) <= 500 and it.index == i


def parse(body: bytes, fmt: str, **kw) -> None:
    try:
        items = parse_payload(body, fmt, **kw)
    except PayloadError as exc:
        assert exc.reason and str(exc)
        return
    except ValueError as exc:  # a malformed records/columns *path* (config error)
        assert kw.get("records") or kw.get("columns"), exc
        assert re.search(r"path|segment", str(exc)), exc
        return
    _ok(items)


@FUZZ
@given(doc=json_values, records=paths, columns=paths, fmt=st.sampled_from(["json", "geojson"]))
def test_json_documents_with_any_paths(doc, records, columns, fmt):
    parse(json.dumps(doc).encode(), fmt, records=records, columns=columns)


@FUZZ
@given(cols=st.lists(st.text(max_size=5), max_size=5),
       rows=st.lists(st.lists(scalars, max_size=6), max_size=6), nest=st.booleans())
def test_columnar_json(cols, rows, nest):
    doc = {"columns": cols, "rows": rows}
    if nest:
        doc = {"data": doc}
    where = "data." if nest else ""
    parse(json.dumps(doc).encode(), "json", records=where + "rows", columns=where + "columns")


@FUZZ
@given(lines=st.lists(st.one_of(json_values.map(json.dumps), st.text(max_size=30)),
                      max_size=12),
       sep=st.sampled_from(["\n", "\r\n", "\n\n"]))
def test_json_lines_mixing_good_and_bad_lines(lines, sep):
    parse(sep.join(lines).encode("utf-8", "surrogatepass"), "jsonl")


cells = st.one_of(st.text(max_size=10), st.sampled_from(['"', '""', "\n", "\r", ",", "\x00",
                                                         "\ufeff", "a,b", '"x"y']))


@FUZZ
@given(rows=st.lists(st.lists(cells, max_size=5), max_size=8), quote=st.booleans(),
       raw=st.booleans())
def test_csv_of_any_cells(rows, quote, raw):
    if raw:  # unescaped: cells glued with commas, whatever they hold
        text = "\n".join(",".join(r) for r in rows)
    else:
        buf = io.StringIO()
        csv.writer(buf, quoting=csv.QUOTE_ALL if quote else csv.QUOTE_MINIMAL).writerows(rows)
        text = buf.getvalue()
    parse(text.encode("utf-8", "surrogatepass"), "csv")


@FUZZ
@given(body=st.binary(max_size=300), fmt=st.sampled_from(["json", "geojson", "jsonl", "csv"]),
       content_type=st.sampled_from([None, "application/json", "text/html", "text/csv",
                                     "application/xml", "text/plain; charset=latin-1"]))
def test_any_bytes_with_any_content_type(body, fmt, content_type):
    parse(body, fmt, content_type=content_type)


def test_nesting_far_past_the_limit_is_refused_not_a_recursion_error():
    for fmt in ("json", "geojson", "jsonl"):
        for body in (b"[" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
                     b"[" * 199 + b"]" * 199):
            parse(body, fmt)


# ------------------------------------------------------------------ the collect path

CONFIG = load_config(BUNDLED_CONFIG)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


stations = st.one_of(st.sampled_from(["KDEN", "KSEA", "EGLL", "LFPG"]), st.text(max_size=6),
                     st.integers(), st.none())
numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6),
                    st.text(max_size=6), st.none(), st.booleans())
times = st.one_of(st.integers(NOW - 10 * 60_000, NOW + 10 * 60_000), st.integers(),
                  st.text(max_size=25), st.none(), st.floats())


def _ts(t, fmt: str):
    if isinstance(t, int) and 0 < t < 10**14:
        if fmt == "iso":
            return _iso(t)
        if fmt == "epoch_s":
            return t // 1000
        if fmt == "csv":
            return _iso(t).replace("T", " ").rstrip("Z")
    return t


obs = st.fixed_dictionaries({"station": stations, "ts": times, "temperature": numbers,
                             "pressure": numbers, "wind": numbers, "pair": stations,
                             "rate": numbers})


def _metnet(rows) -> bytes:
    return json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {
            "stationId": r["station"], "timestamp": _ts(r["ts"], "iso"),
            "temperature": {"value": r["temperature"]},
            "barometricPressure": {"value": r["pressure"]},
            "windSpeed": {"value": r["wind"]}}} for r in rows]}).encode()


def _airnet(rows) -> bytes:
    return json.dumps({"columns": ["site", "epoch", "t_c", "p_hpa", "wind_ms"], "rows": [
        [r["station"], _ts(r["ts"], "epoch_s"), r["temperature"], r["pressure"], r["wind"]]
        for r in rows]}).encode()


def _csv(header, rows) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue().encode("utf-8", "surrogatepass")


SHAPES = {
    ("weather", "metnet"): _metnet,
    ("weather", "airnet"): _airnet,
    ("weather", "skyobs"): lambda rows: _csv(
        ["station", "observed_at", "temp_c", "pressure_hpa", "wind_kmh"],
        [[r["station"], _ts(r["ts"], "csv"), r["temperature"], r["pressure"], r["wind"]]
         for r in rows]),
    ("fx", "fxquote"): lambda rows: json.dumps({"quotes": [
        {"pair": r["pair"], "time": _ts(r["ts"], "iso"), "rate": r["rate"]} for r in rows]}
    ).encode(),
    ("fx", "ecbx"): lambda rows: _csv(["symbol", "timestamp", "price"], [
        [r["pair"] if not isinstance(r["pair"], str) or len(r["pair"]) > 4 else "USD/EUR",
         r["ts"], r["rate"]] for r in rows]),
    ("fx", "slowfx"): lambda rows: json.dumps({"data": {"columns": ["sym", "t", "px"], "rows": [
        [r["pair"], _ts(r["ts"], "iso"), r["rate"]] for r in rows]}}).encode(),
}


def _conforms(flow: str, data: dict) -> None:
    """A record out of refine satisfies its flow's field rules (type, required, range,
    pattern): whatever the payload held, the rest was quarantined."""
    for name, spec in CONFIG.flows[flow].fields.items():
        v = data.get(name)
        if v is None:
            assert not spec.required, (flow, name, data)
            continue
        if spec.type == "float":
            assert isinstance(v, float | int) and not isinstance(v, bool) and math.isfinite(v)
            if spec.range:  # checked in the source's unit: allow the conversion's rounding
                lo, hi = spec.range
                eps = 1e-9 * max(1.0, abs(v))
                assert (lo is None or v >= lo - eps) and (hi is None or v <= hi + eps), (
                    flow, name, v)
        if spec.type == "str":
            assert isinstance(v, str)
            if spec.pattern:
                assert re.search(spec.pattern, v), (flow, name, v)


@FUZZ
@given(which=st.sampled_from(sorted(SHAPES)), rows=st.lists(obs, max_size=8),
       mutate=st.one_of(st.none(), st.tuples(st.integers(0, 10**6), st.binary(max_size=4))))
def test_the_collect_path_on_payloads_shaped_like_each_source(which, rows, mutate):
    flow, source = which
    body = SHAPES[which](rows)
    if mutate is not None:  # splice a few random bytes in somewhere
        at, junk = mutate
        at %= len(body) + 1
        body = body[:at] + junk + body[at + len(junk):]
    chain = StageChain(flow, CONFIG.flows[flow], CONFIG)
    draft = RawDraft(source, body, NOW, None, 200, False, raw_id=1)
    batch, n_items = chain.collect(draft, NOW)
    chain.refine(batch, NOW)
    assert n_items >= 0
    for q in batch.quarantine:
        assert q.reason and q.stage, q
    for r in batch.records:
        _conforms(flow, r.data)


def test_the_shapes_are_right_a_good_row_of_each_source_becomes_a_record():
    """So the property above fuzzes the real mapping, not only the quarantine."""
    t = NOW - 60_000
    good = {"station": "KDEN", "ts": t, "temperature": 10.0, "pressure": 1000.0, "wind": 3.0,
            "pair": "EURUSD", "rate": 1.1}
    for (flow, source), shape in sorted(SHAPES.items()):
        row = dict(good)
        if (flow, source) == ("weather", "metnet"):
            row.update(temperature=50.0, pressure=29.6)  # degF, inHg
        chain = StageChain(flow, CONFIG.flows[flow], CONFIG)
        batch, _ = chain.collect(RawDraft(source, shape([row]), NOW, None, 200, False,
                                          raw_id=1), NOW)
        chain.refine(batch, NOW)
        assert len(batch.records) == 1, (source, batch.quarantine)


def test_what_the_fuzzer_found_an_epoch_too_large_for_milliseconds_is_quarantined():
    """1e306 seconds is a finite float whose milliseconds overflow: OverflowError escaped
    collect (epoch_s) before; now the row is quarantined with a timestamp reason."""
    chain = StageChain("weather", CONFIG.flows["weather"], CONFIG)
    body = json.dumps({"columns": ["site", "epoch", "t_c", "p_hpa", "wind_ms"],
                       "rows": [["KSEA", 1e306, 10.5, 1012.0, 3.2]]}).encode()
    batch, _ = chain.collect(RawDraft("airnet", body, NOW, None, 200, False, raw_id=1), NOW)
    assert not batch.records and len(batch.quarantine) == 1
    assert "timestamp" in batch.quarantine[0].message
