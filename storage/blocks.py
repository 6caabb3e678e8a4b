"""Record blocks: how records are stored (``record_blocks``, migration 0007).

A block holds the records of one key that one write brought within one hour: one row
whose ``body`` is a JSON object of columns, one array per record field, all of equal
length (``FIELDS``), in time order. Writing a batch is then a row per key and hour, not
a row per record, and reading a key's history is a range of blocks of that key, each
decoded at once (docs/architecture.md, "Storage layout").

- A record is one per (flow, key, ts): a write of a time already stored rewrites that
  record in its block (its position, so its id, stays); new times go into a new block.
  Blocks of one key may overlap in time (a late record), never in times held.
- A record's id is (its block's id - 1) * ``BLOCK_MAX`` + its position + 1 (``record_id``):
  the first block's records are 1, 2, ...
- A deleted record (retention) leaves its position: every column holds null there.
- All of a block's times lie in one hour (``SPAN_MS``), so a block holding a time at
  or after ``t`` starts at or after ``hour_of(t)``: range reads are bounded on the
  index by ``first_ms`` alone.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Iterator
from typing import Any

from orjson import dumps as _orjson_dumps
from orjson import loads as _orjson_loads

from flowdeck.storage.codec import (
    CONTRIB_AS_ROW,
    all_row_contributions,
    contributions_of,
    row_contribution,
)

SPAN_MS = 3_600_000
BLOCK_MAX = 4096
NO_START = -(2**62)  # "since" when a read has no start (its hour still fits 64 bits)
FIELDS = ("ts_ms", "data", "quality", "anomaly_score", "anomalous", "flags", "sources",
          "contributions", "raw_ids", "version_id", "updated_ms")
_FIELDS = operator.itemgetter(*FIELDS)
_DEFAULTS = {"anomaly_score": 0.0, "anomalous": False, "version_id": None}
_NUMBER = (int, float)


def hour_of(ts_ms: int) -> int:
    return ts_ms - ts_ms % SPAN_MS


def record_id(block_id: int, pos: int) -> int:
    """A record's id: 1, 2, ... for the first block's records (block ids start at 1)."""
    return (block_id - 1) * BLOCK_MAX + pos + 1


def split_id(rid: int) -> tuple[int, int]:
    """(block id, position) of a record id."""
    bid, pos = divmod(rid - 1, BLOCK_MAX)
    return bid + 1, pos


def columns_of(records: list[dict], row: bool = False) -> dict[str, list]:
    """A block's body (one list per field) of records in time order. A record whose
    contributions are its one source's reading as its own fields hold it stores "row"
    (``codec.row_contribution``) instead of a second copy of its data; ``row``: the
    caller checked that this holds for every one of them."""
    try:
        cols = dict(zip(FIELDS, map(list, zip(*map(_FIELDS, records), strict=True)),
                        strict=True))
    except KeyError:  # a field left to its default
        cols = {f: [r.get(f, _DEFAULTS.get(f)) if f in _DEFAULTS else r[f] for r in records]
                for f in FIELDS}
    c = cols
    if row or all_row_contributions(c["data"], c["quality"], c["flags"], c["sources"],
                                    c["contributions"], c["raw_ids"], c["ts_ms"]):
        c["contributions"] = [CONTRIB_AS_ROW] * len(records)
    else:
        c["contributions"] = [CONTRIB_AS_ROW if row_contribution(r) else r["contributions"]
                              for r in records]
    an = cols["anomalous"]
    if not all(type(a) is bool for a in an):
        cols["anomalous"] = [bool(a) for a in an]
    return cols


def encode(body: dict[str, list]) -> str:
    """JSON text of a body, by orjson: a NaN or infinity (which JSON cannot hold, and
    SQLite's and PostgreSQL's JSON refuse) is written as null, as a missing value.
    A value orjson cannot write (a non-str key, an int past 64 bits) is written by
    ``json.dumps``, as the JSON columns always were."""
    try:
        return _orjson_dumps(body).decode()
    except TypeError:
        return json.dumps(body)


def decode(value: Any) -> dict[str, list]:
    """A body as read: text on SQLite (and from ``body::text`` on PostgreSQL), or
    already decoded."""
    if type(value) is dict:
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        value = bytes(value)
    try:
        return _orjson_loads(value)
    except ValueError:  # text json wrote (``encode``'s fallback) with a NaN in it
        return json.loads(value)


def record_at(block_id: int, flow: str, key: str, body: dict[str, list], pos: int) -> dict | None:
    """The record at a position of a block, as a records row reads (contributions
    rebuilt where stored as "row"); None if deleted."""
    ts = body["ts_ms"][pos]
    if ts is None:
        return None
    r: dict[str, Any] = {"id": record_id(block_id, pos), "flow": flow, "key": key}
    for f in FIELDS:
        r[f] = body[f][pos]
    r["contributions"] = contribution_at(body, pos)
    return r


def contribution_at(body: dict[str, list], pos: int) -> dict:
    """The contributions of the record at a position, rebuilt from its own fields where
    stored as "row"."""
    c = body["contributions"][pos]
    if c == CONTRIB_AS_ROW:
        return contributions_of(body["sources"][pos], body["data"][pos], body["ts_ms"][pos],
                                body["raw_ids"][pos], body["quality"][pos], body["flags"][pos])
    return c


def records_of(block_id: int, flow: str, key: str, body: dict[str, list]) -> Iterator[dict]:
    for pos in range(len(body["ts_ms"])):
        r = record_at(block_id, flow, key, body, pos)
        if r is not None:
            yield r


def points_of(body: dict[str, list], metric: str) -> Iterator[tuple[int, float]]:
    """A block's series points of a metric: (ts, value) of its records whose ``data``
    holds a finite number there (not a bool, string or null), as the roll-ups count."""
    for ts, d in zip(body["ts_ms"], body["data"], strict=True):
        if ts is None or type(d) is not dict:
            continue
        v: Any = d.get(metric)
        if is_point(v):
            yield ts, float(v)


def is_point(v: Any) -> bool:
    """A finite int or float (a bool, string or null is no point)."""
    return type(v) in _NUMBER and math.isfinite(v)


def block_sql(dialect: str) -> dict[str, str]:
    """Driver SQL over ``record_blocks`` in the dialect's paramstyle. Bodies are read as
    text (decoded by orjson, ``decode``) and written as text (PostgreSQL casts it)."""
    pg = dialect == "postgresql"
    ph = "%s" if pg else "?"
    body = '"body"::text' if pg else '"body"'
    cols = '"id", "key", "first_ms", ' + body
    key_range = (f'FROM "record_blocks" WHERE "flow" = {ph} AND "key" = {ph} '
                 f'AND "first_ms" >= {ph} AND "first_ms" <= {ph} AND "last_ms" >= {ph} ')
    return {
        "insert": ('INSERT INTO "record_blocks" ("flow", "key", "first_ms", "last_ms", "n", '
                   f'"body") VALUES ({ph}, {ph}, {ph}, {ph}, {ph}, {ph}'
                   + ("::jsonb)" if pg else ")")),
        "rewrite": (f'UPDATE "record_blocks" SET "body" = {ph}' + ("::jsonb" if pg else "")
                    + f', "n" = {ph} WHERE "id" = {ph}'),
        # A key's blocks holding times in [lo, hi]: (flow, key, hour_of(lo), hi, lo).
        "key_blocks": f"SELECT {cols} {key_range}ORDER BY \"first_ms\", \"id\"",
        "key_blocks_desc": f"SELECT {cols} {key_range}ORDER BY \"first_ms\" DESC, \"id\" DESC",
        # A flow's blocks holding times in [lo, hi], in order of their first time.
        "flow_blocks": (f'SELECT {cols} FROM "record_blocks" WHERE "flow" = {ph} '
                        f'AND "first_ms" >= {ph} AND "first_ms" <= {ph} AND "last_ms" >= {ph} '
                        'ORDER BY "first_ms", "id"'),
        "block": f'SELECT "flow", "key", {body} FROM "record_blocks" WHERE "id" = {ph}',
        # The newest stored time of keys (KEYS: their placeholders), from ``latest``.
        "newest": f'SELECT "key", "ts_ms" FROM "latest" WHERE "flow" = {ph} AND "key" IN (KEYS)',
        "ph": ph,
    }
