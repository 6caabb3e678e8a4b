"""Collect: decode a fetched payload, map the source's fields, check timestamps, drop duplicates."""

from __future__ import annotations

import math
import zoneinfo
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from flowdeck.pipeline.config import FieldSource, FlowConfig, SourceConfig
from flowdeck.pipeline.model import Batch, Rec
from flowdeck.pipeline.payload import BadItem, PayloadError, compile_path, parse_payload
from flowdeck.pipeline.stages.base import register

VERSION = "collect/1"
SEEN_LIMIT = 200_000  # (key, ts) pairs remembered per source for de-duplication


class TimestampError(ValueError):
    pass


def timestamp_parser(fmt: str, tz: str) -> Callable[[Any], int]:
    """Build a parser from a source's timestamp format to epoch milliseconds (UTC)."""
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

    if fmt == "epoch_s":
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

    def checked(v: Any) -> int:
        ms = parse(v)
        if not -62_135_596_800_000 < ms < 253_402_300_800_000:  # years 1..9999
            raise TimestampError(f"impossible timestamp {v!r}")
        return ms

    return checked


class SourceCollector:
    """Per-source state: compiled field getters and the de-duplication memory."""

    def __init__(self, flow: FlowConfig, src: SourceConfig) -> None:
        self.src = src
        self.ts_field = flow.ts
        self.key_field = flow.key
        getters: list[tuple[str, Callable, dict | None]] = []
        for target, spec in src.fields.items():
            if isinstance(spec, FieldSource):
                getters.append((target, compile_path(spec.path), spec.map or None))
            else:
                getters.append((target, compile_path(spec), None))
        self.getters = getters
        # Every field a plain top-level key without a value map (the common case): items
        # that are dicts are mapped by one dict comprehension instead of a getter per field.
        keys = [getattr(get, "key", None) for _t, get, vmap in getters if vmap is None]
        self.plain = ([(t, k) for (t, _g, _m), k in zip(getters, keys, strict=True)]
                      if len(keys) == len(getters) and None not in keys else None)
        self.parse_ts = timestamp_parser(src.timestamp.format, src.timestamp.tz)
        self.seen: OrderedDict[tuple[str, int], int | None] = OrderedDict()  # -> content hash
        self.seen_hashes: OrderedDict[int, None] = OrderedDict()
        self.last_ts: dict[str, int] = {}

    def trim(self) -> None:
        """Forget the oldest pairs and hashes beyond SEEN_LIMIT."""
        for od in (self.seen, self.seen_hashes):
            for _ in range(len(od) - SEEN_LIMIT):
                od.popitem(last=False)


@register("collect")
class Collector:
    name = "collect"
    version = VERSION

    def __init__(self, flow_name: str, flow: FlowConfig) -> None:
        self.flow_name = flow_name
        self.flow = flow
        self.sources = {s.name: SourceCollector(flow, s) for s in flow.sources}

    def decode(self, batch: Batch, body: bytes, content_type: str | None) -> None:
        """Turn the payload into items; a payload that cannot be read is quarantined whole."""
        src = self.sources[batch.source].src
        try:
            batch.items = parse_payload(body, src.format, records=src.records,
                                        columns=src.columns, content_type=content_type,
                                        max_bytes=src.max_bytes)
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
        max_future = now_ms + int(checks.max_future * 1000)
        skew = now_ms + int(checks.skew * 1000)
        min_ts = now_ms - int(checks.max_age * 1000) if checks.max_age else None
        ts_field, key_field = sc.ts_field, sc.key_field
        plain = sc.plain
        seen, seen_hashes, last_ts = sc.seen, sc.seen_hashes, sc.last_ts
        out = batch.records
        for idx, item in enumerate(batch.items):
            if isinstance(item, BadItem):
                batch.reject(None, stage="collect", reason=item.reason, message=item.message,
                             item=item.index, record={"excerpt": item.text})
                continue
            if plain is not None and type(item) is dict:
                data = {target: item.get(k) for target, k in plain}
            else:
                data = {}
                for target, get, vmap in sc.getters:
                    v = get(item)
                    if vmap is not None and isinstance(v, str | int | float | bool):
                        v = vmap.get(v, v)
                    data[target] = v
            raw_ts = data.pop(ts_field, None)
            key = data.get(key_field)
            if key is None or key == "":
                batch.reject(None, stage="collect", reason="missing_key", item=idx, record=item,
                             message=f"no value for the key field '{key_field}'")
                continue
            if raw_ts is None:
                batch.reject(None, stage="collect", reason="missing_timestamp", item=idx,
                             record=item, message=f"no value for the timestamp field '{ts_field}'")
                continue
            try:
                ts = sc.parse_ts(raw_ts)
            except TimestampError as exc:
                batch.reject(None, stage="collect", reason="bad_timestamp", item=idx,
                             record=item, message=str(exc))
                continue
            key = str(key)
            rec = Rec(key, ts, data, batch.source, batch.raw_id, idx)
            if ts > max_future:
                batch.reject(rec, stage="collect", reason="future_timestamp",
                             message=f"timestamp {_iso(ts)} is more than {checks.max_future:g}s "
                                     f"ahead of now ({_iso(now_ms)})")
                continue
            if min_ts is not None and ts < min_ts:
                batch.reject(rec, stage="collect", reason="too_old",
                             message=f"timestamp {_iso(ts)} is older than {checks.max_age:g}s")
                continue
            kt = (key, ts)
            if kt in seen:
                batch.dropped["duplicate"] += 1
                continue
            try:
                h = hash((key, ts, tuple(data.values())))
            except TypeError:  # unhashable values (lists/dicts) are left to validation
                h = None
            if h is not None:
                if h in seen_hashes:
                    batch.dropped["duplicate"] += 1
                    continue
                seen_hashes[h] = None
            seen[kt] = h
            if ts > skew:
                rec.flags.append("clock_skew")
            last = last_ts.get(key)
            if last is not None and ts < last:
                rec.flags.append("out_of_order")
            else:
                last_ts[key] = ts
            out.append(rec)
        sc.trim()  # once per batch, not per record

    def forget(self, source: str, pairs: list[tuple[str, int]]) -> None:
        """Let a later payload bring these (key, ts) again (used when a batch fails to store)."""
        sc = self.sources[source]
        for kt in pairs:
            h = sc.seen.pop(kt, None)
            if h is not None:
                sc.seen_hashes.pop(h, None)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
