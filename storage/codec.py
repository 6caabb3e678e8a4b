"""Driver SQL and JSON text for the hot tables (latest, series, roll-ups, raw), and the
one-source contribution check the record blocks use (``flowdeck.storage.blocks``).

The hot tables are written with driver-level ``executemany`` of plain tuples and
pre-encoded JSON: SQLAlchemy's per-row parameter processing cost more than SQLite's own
work. Same columns, same upsert semantics as the Core statements everywhere else. Shared
by the raw, records and derived repositories, so it lives on its own.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Sequence
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any

from orjson import dumps as _orjson_dumps

# JSON columns (PostgreSQL casts their text to JSONB)
RECORD_JSON = ("data", "flags", "sources", "contributions", "raw_ids")
LATEST_COLS = ("flow", "key", "ts_ms", "data", "quality", "anomaly_score", "anomalous", "flags",
               "sources", "updated_ms")
SERIES_COLS = ("flow", "key", "metric", "ts_ms", "value")  # a point as the engine hands it
RAW_STATUS_COLS = ("raw_id", "outcome", "processed_ms", "version_id", "records_in", "records_out")
_CONTRIB_KEYS = {"v", "ts", "raw", "q", "f"}
# A record's ``contributions`` when they are its one source's reading as the row itself
# holds it ({source: {v: data, ts: ts_ms, raw: raw_ids[0], q: quality, f: flags}}): the
# JSON string "row" instead of a second copy of the data (see ``row_contribution``).
CONTRIB_AS_ROW = "row"
CONTRIB_AS_ROW_JSON = '"row"'


def row_contribution(r: dict) -> bool:
    """Are a record's contributions exactly what ``contributions_of`` rebuilds from
    its own fields? (One source, whose values, time, raw id, quality and flags are the
    record's.) The common case: a key read by one source."""
    contrib = r["contributions"]
    if type(contrib) is not dict or len(contrib) != 1:
        return False
    (src, c), = contrib.items()
    if type(c) is not dict or c.keys() != _CONTRIB_KEYS:
        return False
    sources, raw_ids, q = r["sources"], r["raw_ids"], c["q"]
    return (type(sources) is list and len(sources) == 1 and sources[0] == src
            and type(src) is str
            and type(c["ts"]) is int and c["ts"] == r["ts_ms"]
            and type(raw_ids) is list and len(raw_ids) == 1 and type(c["raw"]) is int
            and type(raw_ids[0]) is int and raw_ids[0] == c["raw"]
            and type(q) is float and type(r["quality"]) is float and q == r["quality"]
            and type(c["f"]) is list and c["f"] == r["flags"]
            and (c["v"] is r["data"] or c["v"] == r["data"]))


# A one-source contribution's fields.
_CONTRIB_FIELDS = operator.itemgetter("v", "ts", "raw", "q", "f")
_FIRST = operator.itemgetter(0)
_DICT, _LIST, _STR, _INT, _FLOAT, _BOOL = ({t} for t in (dict, list, str, int, float, bool))


def all_row_contributions(data, quality, flags, sources, contrib, raw_ids, ts) -> bool:
    """``row_contribution`` of every record of a batch, checked a column at a time (True
    only if it holds for each)."""
    eq = operator.eq
    if set(map(type, contrib)) != _DICT or set(map(len, contrib)) != {1}:
        return False
    srcs = list(map(next, map(iter, contrib)))
    cs = list(map(next, map(iter, map(dict.values, contrib))))
    # keys == _CONTRIB_KEYS: five of them, and each of the five there
    if set(map(type, cs)) != _DICT or set(map(len, cs)) != {len(_CONTRIB_KEYS)}:
        return False
    try:
        v, c_ts, c_raw, c_q, c_f = zip(*map(_CONTRIB_FIELDS, cs), strict=True)
    except KeyError:
        return False
    return (set(map(type, sources)) == _LIST and set(map(len, sources)) == {1}
            and all(map(eq, map(_FIRST, sources), srcs)) and set(map(type, srcs)) == _STR
            and set(map(type, c_ts)) == _INT and all(map(eq, c_ts, ts))
            and set(map(type, raw_ids)) == _LIST and set(map(len, raw_ids)) == {1}
            and set(map(type, c_raw)) == _INT
            and set(map(type, raw0 := list(map(_FIRST, raw_ids)))) == _INT
            and all(map(eq, raw0, c_raw))
            and set(map(type, c_q)) == _FLOAT and set(map(type, quality)) == _FLOAT
            and all(map(eq, c_q, quality))
            and set(map(type, c_f)) == _LIST and all(map(eq, c_f, flags))
            and all(a is b or a == b for a, b in zip(v, data, strict=True)))


def contributions_of(sources: list, data: dict, ts_ms: int, raw_ids: list, quality: float,
                     flags: list) -> dict:
    return {sources[0]: {"v": dict(data), "ts": int(ts_ms), "raw": raw_ids[0],
                         "q": float(quality), "f": list(flags)}}


class JsonCodec:
    """JSON text for the hot tables' JSON columns, encoded once per batch and value.

    The same text SQLAlchemy's JSON type would write (``json.dumps``), but small lists
    that repeat across a batch (flags, sources, raw ids) are encoded once, and a
    one-source contribution reuses the record's already-encoded data instead of
    encoding the same values a second time: about a third of the per-row cost.
    """

    def __init__(self) -> None:
        self._encode = _json_encoder()
        self.lists: dict[tuple, str] = {}

    def dumps(self, value: Any) -> str:
        """JSON text of ``value``: a flat dict of plain values (a record's data, the
        common case) by orjson, ~5x faster; anything else ``json.dumps(value)``, from the
        same C encoder built once per batch, not per call. Both decode to the same value
        (orjson writes no spaces and UTF-8 instead of \\u escapes); orjson would write
        NaN and infinity as null, so a dict holding one, a nested value, a non-str key,
        an int past 64 bits or a subclass goes to json, which keeps them as it did."""
        if type(value) is dict and _flat_plain(value):
            try:
                return _orjson_dumps(value).decode()
            except TypeError:  # orjson.JSONEncodeError: a non-str key, a huge int
                pass
        if self._encode is None:
            return json.dumps(value)
        try:
            return "".join(self._encode(value, 0))
        except Exception:
            # Let json.dumps raise its usual error; a fresh encoder clears what the failed
            # call left in its circular-reference markers.
            self._encode = _json_encoder()
            return json.dumps(value)

    def small_list(self, value: Any) -> str:
        if type(value) is list:
            t = tuple(value)
            try:
                out = self.lists.get(t)
            except TypeError:  # unhashable items: encode as is
                return self.dumps(value)
            if out is None:
                out = self.lists[t] = self.dumps(value)
            return out
        return self.dumps(value)

    def contributions(self, contrib: Any, data: Any, data_json: str) -> str:
        if type(contrib) is dict and len(contrib) == 1:
            (src, c), = contrib.items()
            if (type(src) is str and type(c) is dict and c.keys() == _CONTRIB_KEYS
                    and type(c["ts"]) is int and type(c["raw"]) is int
                    and type(c["q"]) is float and c["q"] == c["q"] and abs(c["q"]) != _INF
                    and c["v"] == data):
                name = self.small_list([src])[1:-1]
                return (f'{{{name}: {{"v": {data_json}, "ts": {c["ts"]}, "raw": {c["raw"]}, '
                        f'"q": {c["q"]!r}, "f": {self.small_list(c["f"])}}}}}')
        return self.dumps(contrib)


def _flat_plain(value: dict) -> bool:
    """Only str, int, bool, None and finite float values (what orjson writes as json does)."""
    for v in value.values():
        t = type(v)
        if t is float:
            if v - v != 0:  # NaN or infinity
                return False
        elif t is not str and t is not int and t is not bool and v is not None:
            return False
    return True


def _json_encoder():
    """The C encoder ``json.dumps`` builds on every call with its default options.

    json.dumps constructs it anew for each value, which for a small record costs more
    than the encoding itself (~8 -> ~3 us per record's data). Same function, same
    arguments (default separators, ensure_ascii, allow_nan, circular check), so the
    same text. None where the C accelerator is missing: then plain json.dumps.
    """
    if c_make_encoder is None:
        return None
    enc = json.JSONEncoder()
    return c_make_encoder({}, enc.default, encode_basestring_ascii, None, enc.key_separator,
                          enc.item_separator, False, False, True)


_INF = float("inf")


def hot_sql(dialect: str) -> dict[str, str]:
    """Driver SQL for the hot tables (see Records._write_records), per dialect's paramstyle."""
    pg = dialect == "postgresql"
    ph = "%s" if pg else "?"

    def q(name: str) -> str:
        return f'"{name}"'

    def values(cols: Sequence[str]) -> str:
        # PostgreSQL gets JSON as text: cast it to the column's JSONB.
        return ", ".join(ph + ("::jsonb" if pg and c in RECORD_JSON else "") for c in cols)

    def upsert(table: str, cols: Sequence[str], keys: Sequence[str], where: str = "") -> str:
        sets = ", ".join(f"{q(c)} = excluded.{q(c)}" for c in cols if c not in keys)
        return (f"INSERT INTO {q(table)} ({', '.join(map(q, cols))}) VALUES ({values(cols)}) "
                f"ON CONFLICT ({', '.join(map(q, keys))}) DO UPDATE SET {sets}{where}")

    def rollup(table: str, source: str, n: str, total: str, lo: str, hi: str, ts: str) -> str:
        # One touched bucket of one series, re-aggregated from the finer table.
        return (f'INSERT INTO {q(table)} ("sid", "bucket_ms", "n", "sum", "min", "max") '
                f'SELECT "sid", {ph}, {n}, {total}, {lo}, {hi} FROM {q(source)} '
                f'WHERE "sid" = {ph} AND {q(ts)} >= {ph} AND {q(ts)} < {ph} GROUP BY "sid" '
                'ON CONFLICT ("sid", "bucket_ms") DO UPDATE SET '
                '"n" = excluded."n", "sum" = excluded."sum", "min" = excluded."min", '
                '"max" = excluded."max"')

    def add(table: str) -> str:
        least, greatest = ("LEAST", "GREATEST") if pg else ("min", "max")  # two-argument
        return (f'INSERT INTO {q(table)} ("sid", "bucket_ms", "n", "sum", "min", "max") '
                f'VALUES ({", ".join([ph] * 6)}) ON CONFLICT ("sid", "bucket_ms") DO UPDATE SET '
                f'"n" = {q(table)}."n" + excluded."n", "sum" = {q(table)}."sum" + excluded."sum", '
                f'"min" = {least}({q(table)}."min", excluded."min"), '
                f'"max" = {greatest}({q(table)}."max", excluded."max")')

    def add_all(table: str) -> str:
        # PostgreSQL: every (series, bucket) of a flush step in one statement, from
        # arrays (each pair once: the buckets are folded), where executemany would send
        # one statement per bucket, pipelined, at ~50 us of psycopg's Python each.
        return add(table).replace(f'VALUES ({", ".join([ph] * 6)})',
                                  "SELECT * FROM unnest(%s::int8[], %s::int8[], %s::int4[], "
                                  "%s::float8[], %s::float8[], %s::float8[])")

    raw_cols = ("flow", "source", "fetched_ms", "content_hash", "content_type", "status_code",
                "size", "truncated", "body", "run_id")
    return {
        "raw_insert": (f'INSERT INTO "raw_payloads" ({", ".join(map(q, raw_cols))}) '
                       f'VALUES ({", ".join([ph] * len(raw_cols))}) '
                       'ON CONFLICT ("flow", "source", "content_hash") DO NOTHING RETURNING "id"'),
        "raw_find": ('SELECT "id" FROM "raw_payloads" '
                     f'WHERE "flow" = {ph} AND "source" = {ph} AND "content_hash" = {ph}'),
        "latest": upsert("latest", LATEST_COLS, ("flow", "key"),
                         ' WHERE excluded."ts_ms" >= "latest"."ts_ms"'),
        "raw_status": upsert("raw_status", RAW_STATUS_COLS, ("raw_id",)),
        "series_key_add": (f'INSERT INTO "series_keys" ("flow", "key", "metric") '
                           f'VALUES ({ph}, {ph}, {ph}) '
                           'ON CONFLICT ("flow", "key", "metric") DO NOTHING'),
        "series_keys_of": f'SELECT "id", "key", "metric" FROM "series_keys" WHERE "flow" = {ph}',
        "add_1m": add("series_1m"),
        "add_1h": add("series_1h"),
        **({"add_1m_all": add_all("series_1m"), "add_1h_all": add_all("series_1h")}
           if pg else {}),
        # A touched minute of one series, re-aggregated from the records' values
        # (DerivedSeries._rollups): (sid, bucket, n, sum, min, max).
        "set_1m": ('INSERT INTO "series_1m" ("sid", "bucket_ms", "n", "sum", "min", "max") '
                   f'VALUES ({", ".join([ph] * 6)}) ON CONFLICT ("sid", "bucket_ms") DO UPDATE SET '
                   '"n" = excluded."n", "sum" = excluded."sum", "min" = excluded."min", '
                   '"max" = excluded."max"'),
        "rollup_1h": rollup("series_1h", "series_1m", 'sum("n")', 'sum("sum")', 'min("min")',
                            'max("max")', "bucket_ms"),
    }
