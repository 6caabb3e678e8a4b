"""One sample payload: a dry run of a flow over it (``flowdeck check --sample``), the field
paths of a source that match nothing in it, and a guessed flow config for it
(``flowdeck sniff``).

The dry run uses the real stages (collect, validate, transform, enrich, quality) and
writes nothing. Sniffing reads the payload the way the engine will (parse_payload with
the options it guessed), so a path it proposes is one the engine finds.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from flowdeck.pipeline.config import Config, FieldSource, SourceConfig
from flowdeck.pipeline.model import Batch, Rec
from flowdeck.pipeline.payload import Node, PayloadError, parse_payload, split_anchor

__all__ = ["DryRun", "Sniffed", "dry_run", "sniff", "unmatched_paths"]


# --------------------------------------------------------------------------- dry run


@dataclass
class DryRun:
    records: list[Rec]
    quarantine: list[Any]  # QuarantineRow
    items: int
    warnings: list[str] = field(default_factory=list)


def find_source(cfg: Config, source: str | None) -> tuple[str, SourceConfig]:
    """(flow name, source) named ``source``, or the config's only source."""
    found = [(fname, src) for fname, flow in cfg.flows.items() for src in flow.sources
             if source is None or src.name == source]
    if len(found) == 1:
        return found[0]
    names = ", ".join(src.name for flow in cfg.flows.values() for src in flow.sources)
    if not found:
        raise ValueError(f"no source '{source}' (sources: {names})")
    raise ValueError(f"the config has several sources; name one with --source ({names})")


def dry_run(cfg: Config, flow_name: str, source: str, body: bytes, now_ms: int,
            content_type: str | None = None) -> DryRun:
    """The payload through the source's stages as the engine runs them; nothing stored."""
    from flowdeck.pipeline.stages.chain import StageChain
    from flowdeck.storage.model import RawDraft

    flow = cfg.flows[flow_name]
    src = next(s for s in flow.sources if s.name == source)
    chain = StageChain(flow_name, flow, cfg)
    payload = RawDraft(source, body, fetched_ms=now_ms, content_type=content_type, raw_id=0)
    batch, n_items = chain.collect(payload, now_ms)
    warnings = unmatched_paths(batch, src)
    chain.refine(batch, now_ms)
    return DryRun(batch.records, batch.quarantine, n_items, warnings)


def _walk(node: Any, segments: list[str]) -> tuple[bool, Any, int]:
    """(found, value, depth reached) for dotted ``segments`` from ``node``."""
    for depth, key in enumerate(segments):
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.lstrip("-").isdigit() and -len(node) <= int(key) \
                < len(node):
            node = node[int(key)]
        else:
            return False, node, depth
    return True, node, len(segments)


def _path_matches(item: Any, path: str) -> tuple[bool, Any]:
    """Whether ``path`` names something in ``item``; else the object where it stopped."""
    up, rest = split_anchor(path)
    node = item
    if up == -1:
        while isinstance(node, Node) and node.parent is not None:
            node = node.parent
    for _ in range(max(up, 0)):
        node = getattr(node, "parent", None)
        if node is None:
            return False, None
    if not rest:
        return True, node
    found, stop, _depth = _walk(node, rest.split("."))
    return found, stop


def unmatched_paths(batch: Batch, src: SourceConfig) -> list[str]:
    """One warning per field path (and unit path) that names nothing in any item."""
    items = [i for i in batch.items if isinstance(i, dict)]
    if not items:
        return []
    paths = [(f"fields.{f}", s.path if isinstance(s, FieldSource) else s)
             for f, s in src.fields.items()]
    paths += [(f"units.{f}.from", p) for f, p in src.unit_from.items()]
    out = []
    sample = items[:50]
    for where, path in paths:
        stops = []
        for item in sample:
            found, stop = _path_matches(item, path)
            if found:
                break
            stops.append(stop)
        else:
            names: list[str] = []
            for stop in stops:
                for k in (stop.keys() if isinstance(stop, dict) else ()):
                    if k not in names:
                        names.append(k)
            shown = ", ".join(repr(n) for n in names[:30]) or "none (not an object there)"
            out.append(f"sources.{src.name}.{where}: path {path!r} matches nothing in the "
                       f"sample; available names: {shown}")
    return out


# --------------------------------------------------------------------------- sniffing


@dataclass
class Sniffed:
    format: str
    options: dict[str, Any]  # records / zip / positional / columns for the source
    items: list[Any]
    fields: dict[str, str]  # flow field -> path
    types: dict[str, str]
    units: dict[str, Any]  # flow field -> unit name or {from: path}
    flow_units: dict[str, str]
    key: str | None
    ts: str | None
    ts_format: str | None
    notes: list[str]


_TS_NAMES = re.compile(r"(^|_|\b)(time|date|datetime|timestamp|ts|start|observed|valid|"
                       r"updated|open_time|period)($|_|\b)", re.IGNORECASE)
_KEY_ORDER = ("station", "station_id", "stationid", "symbol", "currency", "id", "location_id",
              "location", "site", "sensor", "series", "ticker", "pair", "event", "code", "name")
_KEY_NAMES = re.compile(r"(^|[ _@./])(" + "|".join(_KEY_ORDER) + r")$", re.IGNORECASE)


def _key_rank(path: str) -> int:
    m = _KEY_NAMES.search(path)
    return _KEY_ORDER.index(m.group(2).lower()) if m else len(_KEY_ORDER)


_NAME_SAFE = re.compile(r"[^A-Za-z0-9_]+")


def _detect_format(body: bytes, content_type: str | None, hint: str) -> str:
    text = body.lstrip()[:4096].decode("utf-8", "replace").lstrip("\ufeff")
    ctype = (content_type or "").lower()
    if text.startswith("<"):
        return "xml"
    if text[:1] in "{[":
        try:
            root = json.loads(body)
        except ValueError:
            return "jsonl"
        if isinstance(root, dict) and root.get("type") == "FeatureCollection":
            return "geojson"
        return "json"
    if "ndjson" in ctype or hint.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    return "csv"


def _candidates(node: Any, path: list[str], out: list[tuple[int, str, list[str]]],
                depth: int = 0) -> None:
    """(size, kind, path) of every place records could be: arrays of objects or rows,
    objects of parallel arrays."""
    if depth > 6:
        return
    if isinstance(node, list) and node:
        if all(isinstance(x, dict) for x in node[:20]):
            out.append((len(node), "objects", path))
            # one object per location that holds parallel arrays: zip inside each item
            inner: list[tuple[int, str, list[str]]] = []
            _candidates(node[0], [], inner, depth + 1)
            for size, kind, sub in inner:
                if kind == "zip":
                    out.append((size * len(node), "zip_each", path + ["|"] + sub))
        elif all(isinstance(x, list) for x in node[:20]):
            out.append((len(node), "rows", path))
        return
    if isinstance(node, dict):
        lists = [v for v in node.values() if isinstance(v, list)]
        if len(lists) >= 2 and len(lists) == len(node) and len({len(v) for v in lists}) == 1 \
                and lists[0] and not any(isinstance(x, dict | list) for x in lists[0]):
            out.append((len(lists[0]), "zip", path))
            return
        for k, v in node.items():
            _candidates(v, path + [k], out, depth + 1)


def _json_layout(root: Any) -> tuple[dict[str, Any], list[str]]:
    notes: list[str] = []
    found: list[tuple[int, str, list[str]]] = []
    _candidates(root, [], found)
    if not found:
        return {}, ["no array of records found: the whole payload is one record"]
    rank = {"zip_each": 3, "zip": 2, "objects": 1, "rows": 1}
    size, kind, path = max(found, key=lambda c: (c[0], rank[c[1]]))
    if kind == "zip_each":
        cut = path.index("|")
        records = ".".join(path[:cut]) or None
        return {"records": records, "zip": ".".join(path[cut + 1:])}, notes
    if kind == "zip":
        return {"zip": ".".join(path)}, notes
    records = ".".join(path) or None
    if kind == "rows":
        holder = root
        for k in path[:-1]:
            holder = holder[k]
        rows = holder[path[-1]] if path else root
        width = max(len(r) for r in rows[:50])
        names = None
        if isinstance(holder, dict):
            for k, v in holder.items():
                if (isinstance(v, list) and len(v) == width and v
                        and all(isinstance(n, str) for n in v)):
                    names = k
        if names:
            return {"records": records, "columns": ".".join([*path[:-1], names])}, notes
        notes.append("rows have no header: cells named by position (rename them)")
        return {"records": records, "positional": [f"col{i}" for i in range(width)]}, notes
    return {"records": records}, notes


def _xml_layout(body: bytes) -> dict[str, Any]:
    from flowdeck.pipeline.payload import decode_text
    from flowdeck.pipeline.xmlparse import _split, parse_xml

    root = parse_xml(decode_text(body))
    # every element path with how often it occurs in the whole document (bounded walk)
    counts: Counter[tuple[str, ...]] = Counter()
    rich: set[tuple[str, ...]] = set()
    stack: list[tuple[Any, tuple[str, ...]]] = [(root, (_split(root.tag)[1],))]
    seen = 0
    while stack and seen < 200_000:
        el, path = stack.pop()
        seen += 1
        for child in el:
            if isinstance(child.tag, str):
                key: tuple[str, ...] = (*path, _split(child.tag)[1])
                counts[key] += 1
                if child.attrib or len(child):
                    rich.add(key)
                if len(key) < 16:
                    stack.append((child, key))
    best: tuple[str, ...] = (_split(root.tag)[1],)
    score = 0
    for found, n in counts.items():
        s_key = n * (2 if found in rich else 1) if n > 1 else 0
        if s_key > score or (s_key == score and s_key and len(found) > len(best)):
            best, score = found, s_key
    return {"records": ".".join(best)}


def _flatten(item: Any, prefix: str = "", depth: int = 0, skip: Any = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if not isinstance(item, dict) or depth > 3:
        return out
    for k, v in item.items():
        if not isinstance(k, str) or "." in k or (skip is not None and v is skip):
            continue
        path = prefix + k
        if isinstance(v, dict):
            out.update(_flatten(v, path + ".", depth + 1))
        elif not isinstance(v, list):
            out[path] = v
    return out


def _as_number(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str):
        try:
            x = float(v)
        except ValueError:
            return None
        return x if x == x else None
    return None


_STRPTIME = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y/%m/%d %H:%M:%S", "%Y/%m/%d %H:%M",
             "%d/%m/%Y %H:%M:%S", "%d/%m/%Y %H:%M", "%Y%m%d%H%M%S", "%Y%m%d")


def _ts_format(values: list[Any]) -> str | None:
    """The timestamp format every value is in, or None."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    nums = [_as_number(v) for v in values]
    if all(n is not None for n in nums):
        if all(1e12 <= n < 1e13 for n in nums):  # type: ignore[operator]
            return "epoch_ms"
        if all(1e8 <= n < 1e10 for n in nums):  # type: ignore[operator]
            return "epoch_s"
        return None
    if not all(isinstance(v, str) for v in values):
        return None

    def iso_ok(v: str) -> bool:
        try:
            datetime.fromisoformat(v)
        except ValueError:
            return False
        return True

    if all(iso_ok(v) for v in values):
        return "iso"
    for fmt in _STRPTIME:
        try:
            for v in values:
                datetime.strptime(v, fmt)
        except ValueError:
            continue
        return fmt
    return None


def _field_name(path: str, taken: set[str]) -> str:
    last = path.rstrip(".").split(".")[-1]
    if last in ("value", "#text") and "." in path:
        last = path.split(".")[-2]
    name = _NAME_SAFE.sub("_", last.lstrip("@#.")).strip("_").lower() or "field"
    if name in taken or name == "ts":  # a.qualityControl, b.qualityControl: name by path
        name = _NAME_SAFE.sub("_", path.replace("../", "").lstrip("@#.")).strip("_").lower()
    if name[0].isdigit():
        name = "f_" + name
    base, i = name, 2
    while name in taken or name == "ts":
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


def sniff(body: bytes, *, hint: str = "", content_type: str | None = None) -> Sniffed:
    """Guess how to read ``body``: format, record layout, fields, timestamp, key, units."""
    fmt = _detect_format(body, content_type, hint)
    notes: list[str] = []
    options: dict[str, Any] = {}
    if fmt == "json":
        from flowdeck.pipeline.payload import decode_text

        options, notes = _json_layout(json.loads(decode_text(body)))
    elif fmt == "xml":
        options = _xml_layout(body)
    elif fmt == "geojson":
        options = {}
    items = [i for i in parse_payload(body, fmt, parents=True, **options)
             if isinstance(i, dict)]
    if not items:
        raise PayloadError("empty", "the sample holds no records")
    sample = items[:200]
    # every path in the items, plus the parents' plain values (../x), two levels up
    paths: dict[str, list[Any]] = {}
    for item in sample:
        for p, v in _flatten(item).items():
            paths.setdefault(p, []).append(v)
        child, parent, prefix = item, item.parent if isinstance(item, Node) else None, "../"
        for _ in range(2):
            if not isinstance(parent, Node):
                break
            for p, v in _flatten(parent, skip=child).items():
                if p.startswith("#") or p.endswith("_units") or "_units." in p:
                    continue
                paths.setdefault(prefix + p, []).append(v)
            child, parent, prefix = parent, parent.parent, prefix + "../"
    paths = {p: vs for p, vs in paths.items() if len(vs) == len(sample)}

    # timestamp
    ts_path, ts_format = None, None

    def varies(p: str) -> bool:
        return len(sample) == 1 or len({repr(v) for v in paths[p]}) > 1

    def ts_named(p: str) -> bool:
        return bool(_TS_NAMES.search(p.split(".")[-1].lstrip("@")))

    ranked = sorted(paths, key=lambda p: (not varies(p), not ts_named(p), p.startswith("../"),
                                          len(p)))
    for p in ranked:
        f = _ts_format(paths[p])
        if f and (ts_named(p) or f == "iso" or (f.startswith("epoch") and varies(p))):
            ts_path, ts_format = p, f
            break
    if ts_path is None:
        notes.append("no timestamp field found: set fields.ts by hand")

    # numeric fields (with unit codes beside them) and string fields
    unit_code_paths = {p for p in paths if p.endswith(".unitCode") or p.endswith(".unit_code")}
    side_tables: dict[str, str] = {}
    if "zip" in options:
        side = options["zip"].split(".")[-1] + "_units"
        holder = sample[0].parent if isinstance(sample[0], Node) else None
        table = holder.get(side) if isinstance(holder, dict) else None
        if isinstance(table, dict):
            side_tables = {k: f"../{side}.{k}" for k, v in table.items() if isinstance(v, str)}
    numeric, strings = [], []
    for p, vs in paths.items():
        if p == ts_path or p in unit_code_paths:
            continue
        present = [v for v in vs if v is not None]
        if not present:
            continue
        if all(_as_number(v) is not None for v in present):
            if p.startswith("../") and not varies(p) and not _KEY_NAMES.search(p):
                continue  # metadata beside the records (latitude, elevation, status)
            numeric.append(p)
        elif all(isinstance(v, str) for v in present):
            strings.append(p)

    # key: a string (or integer id) field whose (key, ts) pairs are unique
    ts_values = paths.get(ts_path, [None] * len(sample)) if ts_path else [None] * len(sample)

    def unique_with_ts(p: str) -> bool:
        pairs = list(zip(paths[p], ts_values, strict=True))
        return None not in paths[p] and len(set(map(repr, pairs))) == len(pairs)

    key_candidates = [p for p in strings + [n for n in numeric if _KEY_NAMES.search(n)]
                      if unique_with_ts(p)]
    def is_url(p: str) -> bool:
        return any(isinstance(v, str) and v.startswith(("http://", "https://"))
                   for v in paths[p])

    key_candidates.sort(key=lambda p: (is_url(p), _key_rank(p), p in numeric,
                                       len({repr(v) for v in paths[p]}) == len(sample),
                                       p.startswith("../"), len(p)))
    key_path = key_candidates[0] if key_candidates else None
    if key_path is None:
        notes.append("no key candidate in the records: the source gives a constant key")
    elif len(key_candidates) > 1:
        notes.append("key guessed; other candidates: "
                     + ", ".join(key_candidates[1:6]))

    notes.extend(_melt_hint(numeric))
    taken: set[str] = set()
    fields: dict[str, str] = {}
    types: dict[str, str] = {}
    units: dict[str, Any] = {}
    flow_units: dict[str, str] = {}
    positional = options.get("positional")
    if ts_path and positional and ts_path in positional:
        positional[positional.index(ts_path)] = "time"
        for item in items:
            item["time"] = item.pop(ts_path)
        paths["time"] = paths.pop(ts_path)
        numeric = [q for q in numeric if q != ts_path]
        ts_path = "time"
    if ts_path:
        fields["ts"] = ts_path
    key_name = None
    if key_path:
        key_name = _field_name(key_path, taken)
        fields[key_name] = key_path
        types[key_name] = "int" if key_path in numeric and all(
            isinstance(v, int) and not isinstance(v, bool) for v in paths[key_path]) else "str"
    for p in numeric:
        if p == key_path:
            continue
        name = _field_name(p, taken)
        fields[name] = p
        types[name] = "float"
        code_path = p.rsplit(".", 1)[0] + ".unitCode" if "." in p else None
        unit_path = None
        if code_path in unit_code_paths:
            unit_path = code_path
        elif p in side_tables:
            unit_path = side_tables[p]
        if unit_path:
            code = _value_at(sample[0], unit_path)
            pint_name = _pint_for(code)
            if pint_name:
                units[name] = {"from": unit_path}
                flow_units[name] = pint_name
    for p in strings:
        if p == key_path or p.startswith("../") or len(fields) > 40:
            continue
        name = _field_name(p, taken)
        fields[name] = p
        types[name] = "str"
    return Sniffed(fmt, options, items, fields, types, units, flow_units, key_name, ts_path,
                   ts_format, notes)


def _melt_hint(numeric: list[str]) -> list[str]:
    """A note when several numeric columns look like one series each (a shared prefix)."""
    plain = [p for p in numeric if "." not in p and "/" not in p]
    by_prefix: dict[str, list[str]] = {}
    for p in plain:
        head, sep, _tail = p.rpartition("_")
        while sep:
            by_prefix.setdefault(head + "_", []).append(p)
            head, sep, _tail = head.rpartition("_")
    best = max(by_prefix.items(), key=lambda kv: (len(kv[1]), len(kv[0])), default=None)
    if best is None or len(best[1]) < 2 or len(best[1]) < len(plain) / 2:
        return []
    prefix = best[0]
    return [f"{len(best[1])} columns start with {prefix!r}: if each is one series, add "
            f"melt: {{pattern: {json.dumps(re.escape(prefix) + '(.+)')}, name: series, "
            "value: value} and key the flow by series"]


def _value_at(item: Any, path: str) -> Any:
    found, value = _path_matches(item, path)
    return value if found else None


def _pint_for(code: Any) -> str | None:
    from flowdeck.pipeline.units import UnitError, unit_code

    try:
        return unit_code(code)
    except UnitError:
        return None


def _q(text: str) -> str:
    """A YAML scalar, quoted when needed."""
    return json.dumps(text, ensure_ascii=False) if (
        not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", text)) else text


def render_flow(s: Sniffed, flow: str, *, kind: str, where: str, now: datetime | None = None
                ) -> str:
    """The sniffed flow as YAML, with comments where it guessed."""
    now = now or datetime.now(UTC)
    lines = [f"# Written by `flowdeck sniff` from {where} ({now:%Y-%m-%d %H:%M} UTC).",
             "# Guesses are marked; check them, then run `flowdeck check THIS --sample PAYLOAD`."]
    lines += [f"# note: {n}" for n in s.notes]
    lines += ["flows:", f"  {flow}:", "    schedule: {every: 1m}  # guessed: how often to fetch",
              f"    key: {s.key or 'series'}  # guessed",
              "    sources:", f"      - name: {flow}_src", f"        kind: {kind}"]
    lines.append(f"        {'url' if kind == 'http' else 'path'}: {_q(where)}")
    if s.key is None:  # nothing in the records names them: one series per source
        lines.append(f"        key: {flow}  # guessed: every record of this source is one "
                     "series; name it")
    lines.append(f"        format: {s.format}")
    for opt in ("records", "columns", "zip"):
        if s.options.get(opt):
            lines.append(f"        {opt}: {_q(s.options[opt])}")
    if s.options.get("positional"):
        lines.append(f"        positional: [{', '.join(s.options['positional'])}]"
                     "  # guessed names: rename them")
    lines.append("        fields:")
    for name, path in s.fields.items():
        note = (f"  # guessed timestamp ({s.ts_format})" if name == "ts"
                else "  # guessed key" if name == s.key else "")
        lines.append(f"          {name}: {_q(path)}{note}")
    if s.ts_format and s.ts_format != "iso":
        lines.append(f"        timestamp: {{format: {_q(s.ts_format)}}}  # detected")
    if s.units:
        lines.append("        units:  # read from the payload beside each value")
        for name, u in s.units.items():
            lines.append(f"          {name}: {{from: {_q(u['from'])}}}")
    lines.append("    fields:")
    if s.key is None:
        lines.append("      series: {type: str}  # the key, given by the source")
    for name, t in s.types.items():
        extra = ", required: true" if name == s.key else ""
        unit = f", unit: {_q(s.flow_units[name])}" if name in s.flow_units else ""
        note = "  # unit as sent; change it to convert" if unit else ""
        lines.append(f"      {name}: {{type: {t}{extra}{unit}}}{note}")
    return "\n".join(lines) + "\n"


def flow_name_for(where: str) -> str:
    stem = re.split(r"[/\\]", where.rstrip("/"))[-1].split("?")[0].rsplit(".", 1)[0]
    name = _NAME_SAFE.sub("_", stem).strip("_").lower() or "flow"
    return name if name[0].isalpha() else "f_" + name

