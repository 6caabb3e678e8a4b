"""Collect: decode a fetched payload, map the source's fields, check timestamps, drop duplicates."""

from __future__ import annotations

import math
import re
import zoneinfo
from array import array
from bisect import bisect_left
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from flowdeck.pipeline.config import FieldSource, FlowConfig, SourceConfig, source_key_constants
from flowdeck.pipeline.core.durations import human_duration
from flowdeck.pipeline.expr import compile_expr
from flowdeck.pipeline.model import Batch, Rec
from flowdeck.pipeline.payload import (
    BadItem,
    Melt,
    PayloadError,
    compile_path,
    parse_payload,
    uses_anchor,
)
from flowdeck.pipeline.stages.base import register
from flowdeck.pipeline.units import UnitError, affine, unit_code

VERSION = "collect/1"
# De-duplication memory per source (SeenTimestamps): about this many timestamps in all
# (8 bytes each), shared out among the keys, and at least SEEN_PER_KEY of each key's newest.
SEEN_LIMIT = 200_000
SEEN_PER_KEY = 64


class TimestampError(ValueError):
    pass


# format: epoch reads the unit from the magnitude of |value|: below 1e11 seconds (up to the
# year 5138), below 1e14 milliseconds, below 1e17 microseconds, else nanoseconds.
EPOCH_LIMITS = ((1e11, 1000.0), (1e14, 1.0), (1e17, 1e-3))
_MIN_MS, _MAX_MS = -62_135_596_800_000, 253_402_300_800_000  # exclusive: years 1..9999

_ISO_DURATION = re.compile(
    r"P(?:(\d+(?:\.\d+)?)Y)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)W)?(?:(\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?)?")
# Seconds per ISO 8601 designator; a year is 365 days and a month 30 (a nominal length:
# the interval's start is exact, its duration is what the payload says in these units).
_ISO_UNITS = (365 * 86400, 30 * 86400, 7 * 86400, 86400, 3600, 60, 1)


def iso_duration(text: str) -> float:
    """``PT1H`` -> 3600.0; ``P1DT6H`` -> 108000.0. TimestampError if not a duration."""
    m = _ISO_DURATION.fullmatch(text)
    if not m or text in ("P", "PT") or text.endswith("T"):
        raise TimestampError(f"not an ISO 8601 duration: {text[:40]!r}")
    return float(sum(float(g) * u for g, u in zip(m.groups(), _ISO_UNITS, strict=True) if g))


def timestamp_parser(fmt: str, tz: str) -> Callable[[Any], int]:
    """Build a parser from a source's timestamp format to epoch milliseconds (UTC)."""
    parse = interval_parser(fmt, tz)

    def start(v: Any) -> int:
        return parse(v)[0]

    return start


def interval_parser(fmt: str, tz: str) -> Callable[[Any], tuple[int, float | None]]:
    """Like :func:`timestamp_parser`, but an ISO 8601 interval (``start/PT1H``,
    ``start/end``, ``duration/end``) gives its start and its length in seconds; a plain
    timestamp gives (ms, None)."""
    zone = UTC if tz.upper() == "UTC" else zoneinfo.ZoneInfo(tz)

    def from_dt(dt: datetime) -> int:
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=zone)
        return int(dt.timestamp() * 1000)

    def number(v: Any) -> float:
        if isinstance(v, bool):
            raise TimestampError(f"not a timestamp: {v!r}")
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise TimestampError(f"not an epoch number: {v!r}") from None
        if not math.isfinite(x):
            raise TimestampError(f"not a finite timestamp: {v!r}")
        return x

    if fmt == "epoch":
        def parse(v: Any) -> int:
            x = number(v)
            for limit, factor in EPOCH_LIMITS:
                if abs(x) < limit:
                    return int(round(x * factor))
            return int(round(x / 1e6))
    elif fmt == "epoch_s":
        def parse(v: Any) -> int:
            ms = number(v) * 1000
            if not math.isfinite(ms):  # e.g. 1e306 s: finite, but not in milliseconds
                raise TimestampError(f"impossible timestamp {v!r}")
            return int(round(ms))
    elif fmt == "epoch_ms":
        def parse(v: Any) -> int:
            return v if type(v) is int else int(number(v))
    elif fmt == "iso":
        def parse(v: Any) -> int:
            if not isinstance(v, str):
                raise TimestampError(f"expected an ISO-8601 string, got {v!r}")
            try:
                return from_dt(datetime.fromisoformat(v))
            except ValueError:
                raise TimestampError(f"impossible or malformed timestamp {v[:40]!r}") from None
    else:
        def parse(v: Any) -> int:
            if not isinstance(v, str):
                raise TimestampError(f"expected a timestamp string, got {v!r}")
            try:
                return from_dt(datetime.strptime(v, fmt))
            except ValueError:
                raise TimestampError(f"timestamp {v[:40]!r} does not match {fmt!r}") from None

    def one(v: Any) -> int:
        ms = parse(v)
        if not _MIN_MS < ms < _MAX_MS:  # years 1..9999
            raise TimestampError(f"impossible timestamp {v!r}")
        return ms

    def checked(v: Any) -> tuple[int, float | None]:
        if fmt != "iso" or type(v) is not str or "/" not in v:
            return one(v), None
        a, _, b = v.partition("/")
        if a.startswith("P"):  # duration/end
            seconds = iso_duration(a)
            end = one(b)
            return end - int(round(seconds * 1000)), seconds
        begin = one(a)
        if b.startswith("P"):  # start/duration
            return begin, iso_duration(b)
        return begin, (one(b) - begin) / 1000  # start/end

    return checked


class SeenTimestamps:
    """The (key, timestamp) pairs a source has sent, for dropping duplicates: per key, its
    newest timestamps, ascending, in an ``array('q')`` (8 bytes each).

    Bounded by design: each key keeps its newest ``max(per_key, limit // keys)`` timestamps,
    trimmed from the oldest when it passes that by a quarter (so trimming is amortised),
    and every key's at once each time the number of keys doubles; memory stays within
    about ``20 * max(limit, per_key * keys)`` bytes plus a small array per key: it grows
    with the keys, never with the records ever seen. A timestamp older than everything a
    key remembers counts as new; storing it again is harmless (the records' upsert on
    (flow, key, ts) is idempotent). Records usually arrive in time order per key, so the
    common case is one comparison and an append."""

    __slots__ = ("by_key", "limit", "per_key", "_cap", "_trim_at", "_sweep_at")

    def __init__(self, limit: int = SEEN_LIMIT, per_key: int = SEEN_PER_KEY) -> None:
        self.by_key: dict[str, array] = {}
        self.limit = limit
        self.per_key = per_key
        self._sweep_at = 2
        self._recap()

    def __len__(self) -> int:
        return sum(len(a) for a in self.by_key.values())

    def __contains__(self, pair: tuple[str, int]) -> bool:
        arr = self.by_key.get(pair[0])
        if not arr:
            return False
        i = bisect_left(arr, pair[1])
        return i < len(arr) and arr[i] == pair[1]

    def cap(self) -> int:
        """Timestamps each key keeps now."""
        return self._cap

    def _recap(self) -> None:
        self._cap = max(self.per_key, self.limit // max(1, len(self.by_key)))
        self._trim_at = self._cap + (self._cap >> 2)

    def add(self, key: str, ts: int) -> bool:
        """Remember (key, ts); False if it was already remembered (a duplicate)."""
        arr = self.by_key.get(key)
        if arr is None:
            self.by_key[key] = array("q", (ts,))
            self._recap()
            if len(self.by_key) >= self._sweep_at:
                self._sweep()
            return True
        if not arr or ts > arr[-1]:
            arr.append(ts)
        else:
            i = bisect_left(arr, ts)
            if i < len(arr) and arr[i] == ts:
                return False
            arr.insert(i, ts)
        if len(arr) > self._trim_at:
            del arr[:len(arr) - self._cap]
        return True

    def _sweep(self) -> None:
        """The keys have doubled: every key down to its (smaller) share."""
        self._sweep_at = 2 * len(self.by_key)
        cap = self._cap
        for arr in self.by_key.values():
            if len(arr) > cap:
                del arr[:len(arr) - cap]

    def discard(self, key: str, ts: int) -> None:
        arr = self.by_key.get(key)
        if arr:
            i = bisect_left(arr, ts)
            if i < len(arr) and arr[i] == ts:
                del arr[i]


class SourceCollector:
    """Per-source state: compiled field getters and the de-duplication memory."""

    def __init__(self, flow: FlowConfig, src: SourceConfig) -> None:
        self.src = src
        self.ts_field = flow.ts
        self.key_fields = flow.key_fields
        self.key_field = "/".join(self.key_fields)
        getters: list[tuple[str, Callable, dict | None]] = []
        self.unmatched: dict[str, str] = {}  # field -> null | reject, for mapped fields
        for target, spec in src.fields.items():
            if isinstance(spec, FieldSource):
                getters.append((target, compile_path(spec.path), spec.map or None))
                if spec.map and spec.unmatched != "keep":
                    self.unmatched[target] = spec.unmatched
            else:
                getters.append((target, compile_path(spec), None))
        self.getters = getters
        # Every field a plain top-level key without a value map (the common case): items
        # that are dicts are mapped by one dict comprehension instead of a getter per field.
        keys = [getattr(get, "key", None) for _t, get, vmap in getters if vmap is None]
        self.plain = ([(t, k) for (t, _g, _m), k in zip(getters, keys, strict=True)]
                      if len(keys) == len(getters) and None not in keys else None)
        # Units read per record (`units: {f: {from: PATH}}`): converted here to the flow's.
        self.unit_from = [(f, p, compile_path(p), flow.fields[f].unit or "")
                          for f, p in src.unit_from.items() if f in flow.fields]
        paths = [s.path if isinstance(s, FieldSource) else s for s in src.fields.values()]
        self.parents = any(uses_anchor(p) for p in (*paths, *src.unit_from.values()))
        self.melt = (Melt(src.melt.name, src.melt.value, tuple(src.melt.columns or ()),
                          src.melt.pattern) if src.melt else None)
        # Key parts this source fixes (``key:`` on the source), and derived fields up to the
        # last one that gives a key part: computed here, on the values as the source sent
        # them, because the key is needed before validation (duplicates, out-of-order).
        self.constants = source_key_constants(flow, src)
        names = list(flow.derive)
        last = max((names.index(k) for k in self.key_fields if k in flow.derive), default=-1)
        self.key_derive = [(n, compile_expr(flow.derive[n])) for n in names[:last + 1]]
        # With nothing computed from the mapped values before the timestamp is taken out
        # (no derived key part, no constant timestamp), a plain item's timestamp is read
        # straight from it and the rest mapped without it: (mapping, timestamp key).
        self.plain_ts: tuple[list[tuple[str, Any]], Any] | None = None
        if self.plain is not None and not self.key_derive and flow.ts not in self.constants:
            ts_keys = [k for t, k in self.plain if t == flow.ts]
            self.plain_ts = ([(t, k) for t, k in self.plain if t != flow.ts],
                             ts_keys[0] if ts_keys else None)
        self.parse_ts = interval_parser(src.timestamp.format, src.timestamp.tz)
        # epoch_ms: an int in years 1..9999 is its own timestamp (no parser call per record).
        self.ts_is_ms = src.timestamp.format == "epoch_ms"
        self.duration_field = src.timestamp.duration_field or f"{flow.ts}_duration_s"
        # (key, ts) already sent. A record's content hash would add nothing: it hashes the
        # key and timestamp too, so within a source it can only match where (key, ts) does,
        # or collide (and drop a record that is not a duplicate).
        self.seen = SeenTimestamps()
        self.last_ts: dict[str, int] = {}  # newest timestamp seen per key (staleness)

    def convert_units(self, item: Any, data: dict) -> str | None:
        """Convert the unit_from fields of one record in place; the problem, if any."""
        for field, path, get, target in self.unit_from:
            v = data.get(field)
            if v is None:
                continue
            code = get(item)
            if code is None or code == "":
                return f"{field}: no unit at '{path}' (paths are relative to the record; " \
                       "'../' climbs, '$.' starts at the payload's root)"
            try:
                a, b = affine(unit_code(code), target)
            except UnitError as exc:
                return f"{field}: {exc}"
            if isinstance(v, str):
                try:
                    v = float(v)
                except ValueError:
                    continue  # not a number: validation says so
            if isinstance(v, int | float) and not isinstance(v, bool) and (a, b) != (1.0, 0.0):
                data[field] = a * v + b
        return None


@register("collect")
class Collector:
    name = "collect"
    version = VERSION

    def __init__(self, flow_name: str, flow: FlowConfig) -> None:
        self.flow_name = flow_name
        self.flow = flow
        self.sources = {s.name: SourceCollector(flow, s) for s in flow.sources}
        # Newest *stored* timestamp per key (the engine warms it from the store and adds
        # each stored run): a record older than it is out of order. Order within a payload,
        # or between the payloads of one run, is not disorder.
        self.stored_newest: dict[str, int] = {}

    def stored(self, newest: dict[str, int]) -> None:
        """Keys and timestamps now in the store (newest per key)."""
        known = self.stored_newest
        for key, ts in newest.items():
            if ts > known.get(key, ts - 1):
                known[key] = ts

    def decode(self, batch: Batch, body: bytes, content_type: str | None) -> None:
        """Turn the payload into items; a payload that cannot be read is quarantined whole."""
        sc = self.sources[batch.source]
        src = sc.src
        try:
            batch.items = parse_payload(body, src.format, records=src.records,
                                        columns=src.columns, content_type=content_type,
                                        max_bytes=src.max_bytes, zip=src.zip,
                                        positional=src.positional, melt=sc.melt,
                                        namespaces=src.namespaces or None, parents=sc.parents)
        except PayloadError as exc:
            batch.items = []
            batch.reject(None, stage="collect", reason=exc.reason, message=exc.message, item=-1,
                         record={"excerpt": body[:300].decode("utf-8", "replace")})

    def run(self, batch: Batch, now_ms: int, replay: bool = False) -> None:
        """Items -> records. A replay starts with an empty duplicate memory: the store's
        idempotent upserts make re-running old payloads safe, and they must not be dropped."""
        sc = self.sources[batch.source]
        if replay:
            sc = SourceCollector(self.flow, sc.src)
        checks = self.flow.timestamps
        max_future = (now_ms + int(checks.max_future * 1000) if checks.max_future is not None
                      else 253_402_300_800_000)
        skew = (now_ms + int(checks.skew * 1000) if checks.skew is not None
                and checks.max_future is not None else 253_402_300_800_000)
        min_ts = now_ms - int(checks.max_age * 1000) if checks.max_age else None
        ts_field, key_field, key_fields = sc.ts_field, sc.key_field, sc.key_fields
        single_key = key_fields[0] if len(key_fields) == 1 else None
        plain = sc.plain
        plain_ts = sc.plain_ts
        # (A comprehension, inline: measured faster in place than dict(zip(targets,
        # map(item.get, keys))) at 4 to 16 fields, 1.1 against 1.5-2.4 us a record.)
        mapping, ts_key = plain_ts if plain_ts is not None else ([], None)
        constants, key_derive, unmatched = sc.constants, sc.key_derive, sc.unmatched
        seen = sc.seen
        seen_add, seen_by_key, last_ts = seen.add, seen.by_key, sc.last_ts
        stored_newest = {} if replay else self.stored_newest
        duration_field = sc.duration_field
        parse_ts, ts_is_ms, unit_from = sc.parse_ts, sc.ts_is_ms, sc.unit_from
        out = batch.records
        append = out.append
        source, raw_id = batch.source, batch.raw_id
        for idx, item in enumerate(batch.items):
            if plain_ts is not None and item.__class__ is dict:
                data = {target: item.get(k) for target, k in mapping}
                if constants:
                    data.update(constants)
                raw_ts = None if ts_key is None else item.get(ts_key)
            elif plain is not None and item.__class__ is dict:
                data = {target: item.get(k) for target, k in plain}
                if constants:
                    data.update(constants)
                for name, expr in key_derive:
                    data[name] = expr(data)
                raw_ts = data.pop(ts_field, None)
            elif isinstance(item, BadItem):
                batch.reject(None, stage="collect", reason=item.reason, message=item.message,
                             item=item.index, record={"excerpt": item.text})
                continue
            else:
                data = {}
                unmapped = None
                for target, get, vmap in sc.getters:
                    v = get(item)
                    if vmap is not None and isinstance(v, str | int | float | bool):
                        v, hit = map_value(vmap, v)
                        if not hit and target in unmatched:
                            if unmatched[target] == "reject":
                                unmapped = (target, v)
                            v = None
                    data[target] = v
                if unmapped is not None:
                    batch.reject(None, stage="collect", reason="unmapped", item=idx,
                                 record=item, message=f"{unmapped[0]}: {unmapped[1]!r:.60} is "
                                                      "not in the field's map")
                    continue
                if constants:
                    data.update(constants)
                for name, expr in key_derive:
                    data[name] = expr(data)
                raw_ts = data.pop(ts_field, None)
            if single_key is not None:
                key = data.get(single_key)
                if key is not None and type(key) is not str:
                    key = key_text(key)
            else:
                parts = [data.get(k) for k in key_fields]
                key = (None if any(p is None or p == "" for p in parts)
                       else "/".join(key_text(p) for p in parts))
            if key is None or key == "":
                batch.reject(None, stage="collect", reason="missing_key", item=idx, record=item,
                             message=f"no value for the key field '{key_field}'")
                continue
            if raw_ts is None:
                batch.reject(None, stage="collect", reason="missing_timestamp", item=idx,
                             record=item, message=f"no value for the timestamp field '{ts_field}'")
                continue
            if ts_is_ms and raw_ts.__class__ is int and _MIN_MS < raw_ts < _MAX_MS:
                ts = raw_ts
            else:
                try:
                    ts, duration = parse_ts(raw_ts)
                except TimestampError as exc:
                    batch.reject(None, stage="collect", reason="bad_timestamp", item=idx,
                                 record=item, message=str(exc))
                    continue
                if duration is not None:
                    data[duration_field] = duration
            if unit_from:
                problem = sc.convert_units(item, data)
                if problem:
                    batch.reject(None, stage="collect", reason="bad_unit", item=idx,
                                 record=item, message=problem)
                    continue
            rec = Rec(key, ts, data, source, raw_id, idx)
            if ts > max_future:
                batch.reject(rec, stage="collect", reason="future_timestamp",
                             message=f"timestamp {_iso(ts)} is more than "
                                     f"{human_duration(checks.max_future or 0)} ahead of now "
                                     f"({_iso(now_ms)})")
                continue
            if min_ts is not None and ts < min_ts:
                batch.reject(rec, stage="collect", reason="too_old",
                             message=f"timestamp {_iso(ts)} is older than "
                                     f"{human_duration(checks.max_age or 0)}")
                continue
            # SeenTimestamps.add's common case inlined: a key's next timestamp, newer than
            # everything it remembers, with no trim due.
            arr = seen_by_key.get(key)
            if arr and ts > arr[-1] and len(arr) < seen._trim_at:
                arr.append(ts)
            elif not seen_add(key, ts):
                batch.dropped["duplicate"] += 1
                continue
            if ts > skew:
                rec.flags.append("clock_skew")
            newest = stored_newest.get(key)
            if newest is not None and ts < newest:
                rec.flags.append("out_of_order")
            if ts > last_ts.get(key, ts - 1):
                last_ts[key] = ts
            append(rec)

    def forget(self, source: str, pairs: list[tuple[str, int]]) -> None:
        """Let a later payload bring these (key, ts) again (used when a batch fails to store)."""
        seen = self.sources[source].seen
        for key, ts in pairs:
            seen.discard(key, ts)


def map_value(vmap: dict, v: Any) -> tuple[Any, bool]:
    """A value through a field's ``map`` (whose keys YAML gave as text): exact first, then
    its text (``900`` finds ``"900"``, ``true`` finds ``"true"``). -> (value, matched)."""
    try:
        if v in vmap:
            return vmap[v], True
    except TypeError:
        return v, False
    text = key_text(v)
    if text in vmap:
        return vmap[text], True
    if type(v) is bool and str(v) in vmap:
        return vmap[str(v)], True
    return v, False


def key_text(v: Any) -> str:
    """A key part as text: strings as they are, integral numbers without '.0', bools
    lower-case."""
    if type(v) is str:
        return v
    if type(v) is bool:
        return "true" if v else "false"
    if type(v) is float and v.is_integer():
        return str(int(v))
    return str(v)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
