"""The throughput benchmark's no-stage baselines store what they claim to: a ceiling that
wrote fewer records, or other values, than the layout it stands for would flatter it."""

from __future__ import annotations

import json
import sqlite3

from bench.throughput import (
    FLOW,
    STATIONS,
    floor_sqlite,
    make_payloads,
    rows_layout_sqlite,
    same_rows_sqlite,
)


def _parsed(payloads: list[bytes]) -> list[tuple[str, int, dict]]:
    out = []
    for body in payloads:
        for line in body.splitlines():
            d = json.loads(line)
            out.append((d["s"], d["t"], {"station": d["s"], "temperature": d["temp_f"],
                                         "pressure": d["p"], "wind_speed": d["w"],
                                         "temperature_f": d["temp_f"]}))
    return out


def test_the_same_rows_baseline_holds_every_record_once_by_key_in_time_order(tmp_path) -> None:
    """It writes what flowdeck stores: record blocks, each of one key, read back through
    flowdeck's own block decoding."""
    from flowdeck.storage.blocks import decode

    payloads = make_payloads(2_500, 1000)  # the last payload is a part one
    assert same_rows_sqlite(payloads, tmp_path / "blocks.db") > 0
    con = sqlite3.connect(tmp_path / "blocks.db")
    blocks = con.execute('SELECT "flow", "key", "first_ms", "last_ms", "n", "body" '
                         'FROM "record_blocks" ORDER BY "id"').fetchall()
    stored = []
    for flow, key, first, last, n, body in blocks:
        cols = decode(body)
        assert flow == FLOW
        assert {len(c) for c in cols.values()} == {n}
        assert cols["ts_ms"] == sorted(cols["ts_ms"]) and (first, last) == (
            cols["ts_ms"][0], cols["ts_ms"][-1])
        assert len(set(cols["raw_ids"][0])) == 1
        stored += [(key, ts, data) for ts, data in zip(cols["ts_ms"], cols["data"], strict=True)]
    # one row per key and payload: 60 keys in each of the three payloads (within an hour)
    assert len(blocks) == 3 * STATIONS
    assert sorted(stored, key=lambda r: (r[0], r[1])) == sorted(
        _parsed(payloads), key=lambda r: (r[0], r[1]))
    series = con.execute('SELECT count(*) FROM "series_keys"').fetchone()[0]
    assert series == STATIONS * 4  # each station's four metrics, named once


def test_the_rows_layout_baseline_writes_a_records_row_per_record(tmp_path) -> None:
    payloads = make_payloads(2_500, 1000)
    rows_layout_sqlite(payloads, tmp_path / "rows.db")
    con = sqlite3.connect(tmp_path / "rows.db")
    rows = con.execute('SELECT "key", "ts_ms", "data" FROM "records"').fetchall()
    assert sorted((k, t, json.loads(d)) for k, t, d in rows) == sorted(
        _parsed(payloads), key=lambda r: (r[0], r[1]))


def test_the_floor_writes_every_parsed_line_once(tmp_path) -> None:
    payloads = make_payloads(2_500, 1000)
    floor_sqlite(payloads, tmp_path / "floor.db")
    con = sqlite3.connect(tmp_path / "floor.db")
    rows = con.execute("SELECT key, ts_ms, data FROM records").fetchall()
    lines = [json.loads(line) for body in payloads for line in body.splitlines()]
    assert sorted((k, t, json.loads(d)) for k, t, d in rows) == sorted(
        ((d["s"], d["t"], d) for d in lines), key=lambda r: (r[0], r[1]))
