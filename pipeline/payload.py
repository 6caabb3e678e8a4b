"""Decode fetched payloads (bytes) into record items (dicts).

Bad input never raises anything but :class:`PayloadError`: a payload that is
unusable as a whole (empty, not UTF-8, HTML instead of JSON, malformed, nested
too deeply, too large, records not where the config says) gives a
``PayloadError`` with a short machine ``reason`` and a human ``message``.  A
single unusable item inside an otherwise good payload (a bad JSON Lines line, a
CSV row with the wrong number of cells, a non-object in a list) becomes a
:class:`BadItem` in the returned list, in its place, so the rest still flows.

``ValueError`` (other than ``PayloadError``) and ``TypeError`` are reserved for
programming/config errors: an unknown format, a malformed path, a ``str`` body.
"""

from __future__ import annotations

import builtins
import csv
import io
import json
import operator
import re
import reprlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import accumulate, count
from typing import Any

import orjson

__all__ = [
    "FORMATS",
    "BadItem",
    "Melt",
    "Node",
    "PayloadError",
    "compile_path",
    "split_anchor",
    "uses_anchor",
    "decode_text",
    "parse_payload",
]

FORMATS = frozenset({"json", "geojson", "jsonl", "csv", "xml"})
GEOJSON_RECORDS = "features[].properties"
MAX_EXCERPT = 500

_MISSING: Any = object()


class PayloadError(ValueError):
    """The whole payload is unusable.

    ``reason`` is one of ``"empty"``, ``"encoding"``, ``"not_json"``,
    ``"malformed"``, ``"too_deep"``, ``"records_path"``, ``"columns"``,
    ``"too_large"``; ``message`` is human-readable (also ``str(error)``).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(reason, message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return self.message


class Node(dict):
    """A dict that knows the object it was found in (``parent``; None at the payload's root).

    Field paths may climb out of a record with ``../`` (the record's parent) or start at
    the payload's root with ``$.``; items carry their parents as Nodes for that.
    """

    __slots__ = ("parent",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.parent: Node | None = None


@dataclass(frozen=True, slots=True)
class Melt:
    """Wide -> long: one item per (item, melted column), the column's name under ``name``
    and its value under ``value``; ``columns`` lists them, or ``pattern`` (a regular
    expression matched against whole keys; its first group, if any, is the name kept)."""

    name: str
    value: str
    columns: tuple[str, ...] = ()
    pattern: str | None = None


@dataclass(slots=True)
class BadItem:
    """One unusable item; the rest of the payload is fine.

    ``index`` is the item's position in the payload (and in the list returned
    by :func:`parse_payload`); ``reason`` is one of ``"malformed"`` (bad JSON
    Lines line or CSV row), ``"too_deep"`` (JSON Lines line nested too deeply),
    ``"not_object"``, ``"columns"`` (row length does not match the columns) or
    ``"records_path"`` (the records path is missing inside this item);
    ``text`` is a raw excerpt or repr of the item, at most 500 characters.
    """

    index: int
    reason: str
    message: str
    text: str


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------

_repr = reprlib.Repr()
_repr.maxstring = 200
_repr.maxother = 200
_repr.maxlong = 100
_repr.maxlist = _repr.maxtuple = _repr.maxdict = 20
_repr.maxlevel = 4


def _clip(text: str) -> str:
    """Cut ``text`` to at most MAX_EXCERPT characters."""
    return text if len(text) <= MAX_EXCERPT else text[: MAX_EXCERPT - 1] + "…"


def _describe(value: Any) -> str:
    """JSON type of ``value`` with an article: 'an array', 'a string', 'null'."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def _as_index(segment: str) -> int | None:
    """``"3"`` -> 3, ``"-1"`` -> -1, anything else -> None."""
    digits = segment[1:] if segment.startswith("-") else segment
    return int(segment) if digits.isdigit() and digits.isascii() else None


def _split_path(path: str, what: str) -> list[str]:
    segments = path.split(".")
    if not path or any(not segment for segment in segments):
        raise ValueError(f"invalid {what} {path!r}: empty segment")
    return segments


def _child(node: Any, key: str) -> Any:
    """``node[key]`` for an object (or ``node[int(key)]`` for an array), else _MISSING."""
    if isinstance(node, dict):
        return node.get(key, _MISSING)
    if isinstance(node, list):
        index = _as_index(key)
        if index is not None and -len(node) <= index < len(node):
            return node[index]
    return _MISSING


def _no_key_message(node: Any, key: str, where: str) -> str:
    """Why ``key`` could not be taken from ``node`` (found at ``where``)."""
    if isinstance(node, dict) or (isinstance(node, list) and _as_index(key) is not None):
        return f"no '{key}' in {where}"
    return f"{where} is {_describe(node)}, not an object"


# --------------------------------------------------------------------------
# Decoding and format sniffing
# --------------------------------------------------------------------------


def decode_text(body: bytes) -> str:
    """Decode ``body`` as strict UTF-8, dropping a leading UTF-8 BOM."""
    try:
        text = str(body, "utf-8")
    except UnicodeDecodeError as exc:
        hint = " (looks like UTF-16)" if bytes(body[:2]) in (b"\xff\xfe", b"\xfe\xff") else ""
        raise PayloadError("encoding", f"invalid UTF-8 at byte {exc.start}{hint}") from None
    return text[1:] if text.startswith("\ufeff") else text


_FIRST_VISIBLE = re.compile(r"\S")
_TITLE = re.compile(r"<title[^>]*>\s*(.*?)\s*</title>", re.IGNORECASE | re.DOTALL)


def _reject_markup(text: str, content_type: str | None) -> None:
    """PayloadError("not_json") if the body is an HTML/XML page rather than JSON.

    A body starting with "<" is markup whatever the content type says.  A
    ``text/html`` content type alone is trusted unless the body visibly starts
    like JSON ("{" or "["): some servers mislabel their JSON.
    """
    match = _FIRST_VISIBLE.search(text)
    start = match.start() if match else 0
    first = text[start : start + 1]
    ctype = (content_type or "").split(";", 1)[0].strip().lower()
    if first != "<" and not ("html" in ctype and first not in ("{", "[")):
        return
    head = text[start : start + 2000]
    is_xml = head.startswith("<?xml") and "<html" not in head.lower()
    what = "XML" if is_xml or ("xml" in ctype and "html" not in ctype) else "HTML"
    detail = ctype if ("html" in ctype or "xml" in ctype) else f"body starts with {head[:40]!r}"
    message = f"expected JSON, got {what} ({detail})"
    title = _TITLE.search(head)
    if title and title.group(1):
        message += f": {' '.join(title.group(1).split())[:100]}"
    raise PayloadError("not_json", message)


# --------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------

_NOT_MARK = bytes(sorted(set(range(256)) - set(b'"[]{}')))
_QUOTED = re.compile(rb'"[^"]*"')
_STEPS = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")


def _excess_depth(data: str | bytes, limit: int) -> int | None:
    """The bracket nesting depth of JSON ``data`` if it exceeds ``limit``, else None.

    Checked before parsing, so a hostile ``[[[[...]]]]`` never reaches the
    recursive JSON decoder.  Everything runs as whole-buffer C operations (no
    Python loop per byte), at a small fraction of the cost of json.loads.
    """
    if isinstance(data, str):
        if data.count("[") + data.count("{") <= limit:
            return None  # depth cannot exceed the number of opening brackets
        data = data.encode("utf-8")
    if b"\\" in data:
        # Drop escaped backslashes, then escaped quotes: every '"' left delimits a string.
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    marks = data.translate(None, _NOT_MARK)  # only quotes and brackets are left
    if marks.count(b"[") + marks.count(b"{") <= limit:
        return None
    # Removing '""' (a string without brackets, or a string end followed by a
    # string start) keeps the quote parity of every bracket; then drop the
    # brackets that are inside strings.
    marks = marks.replace(b'""', b"")
    if b'"' in marks:
        marks = _QUOTED.sub(b"", marks)
    # Cheap bound: one pass of pair removal strips one or two levels, so a
    # document that empties within limit // 2 passes is at most limit deep.
    rest = marks
    for _ in range(limit // 2):
        shorter = rest.replace(b"[]", b"").replace(b"{}", b"")
        if len(shorter) == len(rest):
            break
        rest = shorter
    if not rest:
        return None
    # Exact: an opening bracket counts +2, a closing one 0; depth after k
    # brackets = running sum - k.
    steps = marks.translate(_STEPS)
    depth = max(map(operator.sub, accumulate(steps), count(1)), default=0)
    return depth if depth > limit else None


def _json_error_message(exc: json.JSONDecodeError) -> str:
    message = f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
    rest = exc.doc[exc.pos:].strip()
    if (exc.pos >= len(exc.doc.rstrip()) or exc.msg.startswith("Unterminated string")
            or (rest and not any(c in rest for c in " \n,:]}"))):
        message += " (payload ends early; truncated?)"
    elif exc.msg == "Extra data":
        message += " (more than one JSON value; is it JSON Lines?)"
    return message


def _load_json(text: str, body: bytes, max_depth: int) -> Any:
    depth = _excess_depth(body, max_depth)
    if depth is not None:
        raise PayloadError("too_deep", f"JSON is nested {depth} levels deep (limit {max_depth})")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PayloadError("malformed", _json_error_message(exc)) from None
    except RecursionError:
        raise PayloadError("too_deep", f"JSON is nested too deeply (limit {max_depth})") from None
    except ValueError as exc:  # e.g. an integer literal with more than 4300 digits
        raise PayloadError("malformed", f"malformed JSON: {exc}") from None


# A run of 19 digits may be an integer beyond 64 bits, which orjson reads as a float
# (the stdlib keeps it an int): a payload holding one is read by the stdlib throughout.
# (One C pass: every digit becomes a 9, then a substring search; a regex takes 25 times
# as long over a payload of numbers; over the UTF-8 bytes, whose digits are the text's.)
_DIGITS_TO_9 = bytes.maketrans(b"0123456789", b"9" * 10)
_LONG_DIGITS = b"9" * 19
_NOT_MARK_NL = bytes(sorted(set(range(256)) - set(b'"[]{}\n')))  # _jsonl_whole's marks


def _parse_jsonl(text: str, max_depth: int) -> list[Any]:
    """One JSON value per non-blank line; bad lines become BadItems.

    Each line is read by orjson first (several times faster than the stdlib); a line it
    refuses (NaN, lone surrogates, malformed) goes through :func:`_jsonl_line`, the stdlib
    reading that decides what the line is and words the BadItem, so the result is the
    stdlib's either way. Most payloads are read whole by one orjson call instead
    (:func:`_jsonl_whole`), where that gives the same items."""
    data = text.encode("utf-8")
    if _LONG_DIGITS in data.translate(_DIGITS_TO_9):
        fast = None
    else:
        whole = _jsonl_whole(data, max_depth)
        if whole is not None:
            return whole
        fast = orjson.loads
    return _jsonl_lines(text, max_depth, fast)


def _jsonl_lines(text: str, max_depth: int, fast: Callable[[str], Any] | None) -> list[Any]:
    """JSON Lines read line by line: by ``fast`` (orjson.loads) where it can, else by the
    stdlib (None: the stdlib throughout)."""
    items: list[Any] = []
    append = items.append
    # Split on "\n" only: str.splitlines() would also split on U+2028 etc.,
    # which may legally appear raw inside JSON strings.
    for lineno, line in enumerate(text.split("\n"), 1):
        if fast is not None:
            # orjson has no recursion to exhaust (it stops at 1024 levels), so the depth
            # limit is checked after it, and only where the brackets could exceed it.
            try:
                value = fast(line)
            except ValueError:  # orjson.JSONDecodeError, or a str orjson cannot encode
                pass
            else:
                if value.__class__ is dict and (
                        len(line) <= max_depth or line.count("[") + line.count("{") <= max_depth
                        or _excess_depth(line, max_depth) is None):
                    append(value)
                    continue
        if not line or line.isspace():
            continue
        _jsonl_line(items, lineno, line, max_depth)
    return items


def _jsonl_whole(data: bytes, max_depth: int) -> list[Any] | None:
    """Every line of a JSON Lines payload read by one orjson call, or None when that would
    not give exactly what reading it line by line gives (then the caller does that).

    The lines are joined into one array (``[line1\n,line2\n,...]``) and the result kept
    only if it is one object per line, each within ``max_depth``, and no value crosses a
    line: strings cannot (the newline stays, and a raw newline inside a string is
    malformed JSON) and containers do not (every line's brackets balance, checked on the
    brackets alone, after dropping the strings). Then each inserted comma separates two
    elements at the top, so element i is line i read alone. Anything else (a blank or bad
    line, NaN, a line of two values, a bracket inside a string, deep nesting) gives None."""
    data = data.rstrip(b"\n")  # trailing blank lines are skipped either way
    try:
        values = orjson.loads(b"[" + data.replace(b"\n", b"\n,") + b"]")
    except ValueError:
        return None
    if len(values) != data.count(b"\n") + 1 or set(map(type, values)) != {dict}:
        return None
    if b"\\" in data:
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    # Quotes and brackets and newlines only; then every string without a bracket inside
    # goes (as in _excess_depth: '""' is a string, or one string's end and the next's start).
    marks = data.translate(None, _NOT_MARK_NL).replace(b'""', b"")
    if b'"' in marks:
        return None  # a bracket inside a string: leave it to the line by line reading
    # Innermost pairs out, one or two levels per pass: what is left after max_depth // 2
    # passes is newlines alone only if every line balances within the depth limit.
    for _ in range(max_depth // 2):
        shorter = marks.replace(b"{}", b"").replace(b"[]", b"")
        if len(shorter) == len(marks):
            break
        marks = shorter
    if marks.count(b"\n") != len(marks):
        return None
    return values


def _jsonl_line(items: list[Any], lineno: int, line: str, max_depth: int) -> None:
    """One non-blank line read by the stdlib: its value, or the BadItem saying why not."""
    append = items.append
    loads = json.loads
    index = len(items)
    depth = _excess_depth(line, max_depth)
    if depth is not None:
        message = f"line {lineno}: JSON is nested {depth} levels deep (limit {max_depth})"
        append(BadItem(index, "too_deep", message, _clip(line.strip())))
        return
    try:
        value = loads(line)
    except json.JSONDecodeError as exc:
        message = f"line {lineno}: malformed JSON at column {exc.colno}: {exc.msg}"
        append(BadItem(index, "malformed", message, _clip(line.strip())))
    except RecursionError:
        message = f"line {lineno}: JSON is nested too deeply (limit {max_depth})"
        append(BadItem(index, "too_deep", message, _clip(line.strip())))
    except ValueError as exc:  # e.g. an integer literal with more than 4300 digits
        append(BadItem(index, "malformed", f"line {lineno}: {exc}", _clip(line.strip())))
    else:
        if value.__class__ is dict:
            append(value)
        else:
            message = f"line {lineno}: expected a JSON object, got {_describe(value)}"
            append(BadItem(index, "not_object", message, _clip(_repr.repr(value))))


# --------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------


def _parse_csv(text: str) -> list[Any]:
    """First row is the header; empty cells become None; values stay strings."""
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] = []
    while not header:  # skip blank lines before the header
        try:
            header = next(reader)
        except StopIteration:
            return []
        except csv.Error as exc:
            raise PayloadError("malformed", f"malformed CSV header: {exc}") from None
    names = [name.strip() for name in header]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise PayloadError("columns", f"duplicate column {name!r} in CSV header")
        seen.add(name)
    width = len(names)
    items: list[Any] = []
    append = items.append
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            append(BadItem(len(items), "malformed", f"line {reader.line_num}: {exc}", ""))
            continue
        if len(row) == width:
            append(dict(zip(names, [cell or None for cell in row], strict=True)))
        elif row:  # csv yields [] for blank lines: skip those
            message = f"line {reader.line_num}: {len(row)} cells, header has {width}"
            append(BadItem(len(items), "columns", message, _clip(",".join(row))))
    return items


# --------------------------------------------------------------------------
# Record location (records / columns paths)
# --------------------------------------------------------------------------


def _parse_records_path(records: str) -> list[tuple[str, bool]]:
    """``"features[].properties"`` -> [("features", True), ("properties", False)]."""
    steps = []
    for segment in _split_path(records, "records path"):
        each = segment.endswith("[]")
        key = segment[:-2] if each else segment
        if "[" in key or "]" in key:
            raise ValueError(f"invalid records path {records!r}: bad segment {segment!r}")
        steps.append((key, each))
    return steps


def _locate(root: Any, records: str | None) -> list[Any]:
    """Follow the records path from ``root``; return the located items.

    Before the first ``[]`` a missing key is a PayloadError.  After it, each
    element is an item on its own: a missing key inside one element makes a
    BadItem, unless it is missing in every element (then the path is wrong).
    Without any ``[]``, the final value is treated like a root: an array gives
    its elements, an object is one item.
    """
    suffix = f" (records path '{records}')"
    node = root
    nodes: list[Any] | None = None  # set once the path has iterated an array
    walked: list[str] = []

    def where() -> str:
        return f"'{'.'.join(walked)}'" if walked else "payload"

    for key, each in _parse_records_path(records) if records else []:
        if key and nodes is None:
            child = _child(node, key)
            if child is _MISSING:
                raise PayloadError("records_path", _no_key_message(node, key, where()) + suffix)
            node = child
        elif key:
            nodes = _step_each(nodes, key, where(), suffix)
        if key:
            walked.append(key)
        if each and nodes is None:
            if not isinstance(node, list):
                message = f"{where()} is {_describe(node)}, not an array{suffix}"
                raise PayloadError("records_path", message)
            nodes = node
        elif each:
            nodes = _flatten_each(nodes, where())
        if each:
            if walked:
                walked[-1] += "[]"
            else:
                walked.append("[]")
    if nodes is not None:
        return nodes
    if isinstance(node, list):
        return node
    if isinstance(node, dict):
        return [node]
    subject = where() if walked else "the payload"
    message = f"{subject} is {_describe(node)}, expected an array or object"
    raise PayloadError("records_path", message + (suffix if walked else ""))


def _step_each(nodes: list[Any], key: str, where: str, suffix: str) -> list[Any]:
    """Take ``key`` from every element; elements without it become BadItems."""
    out: list[Any] = []
    missing = 0
    for node in nodes:
        if node.__class__ is BadItem:
            out.append(node)
            continue
        child = _child(node, key)
        if child is _MISSING:
            missing += 1
            message = _no_key_message(node, key, f"{where} item") + suffix
            out.append(BadItem(-1, "records_path", message, _clip(_repr.repr(node))))
        else:
            out.append(child)
    if missing and missing == sum(1 for node in nodes if node.__class__ is not BadItem):
        first = next(item for item in out if item.__class__ is BadItem)
        raise PayloadError("records_path", first.message)
    return out


def _flatten_each(nodes: list[Any], where: str) -> list[Any]:
    """Iterate the array held by every element (``a[].b[]``)."""
    out: list[Any] = []
    for node in nodes:
        if isinstance(node, list):
            out.extend(node)
        elif node.__class__ is BadItem:
            out.append(node)
        else:
            message = f"{where} is {_describe(node)} in this item, not an array"
            out.append(BadItem(-1, "records_path", message, _clip(_repr.repr(node))))
    return out


def _column_names(root: Any, columns: str) -> list[str]:
    node = root
    for key in _split_path(columns, "columns path"):
        node = _child(node, key)
        if node is _MISSING:
            raise PayloadError("columns", f"no '{columns}' in payload (columns path)")
    if not isinstance(node, list):
        message = f"'{columns}' is {_describe(node)}, expected an array of column names"
        raise PayloadError("columns", message)
    seen: set[str] = set()
    for name in node:
        if not isinstance(name, str):
            raise PayloadError("columns", f"column names must be strings, got {_repr.repr(name)}")
        if name in seen:
            raise PayloadError("columns", f"duplicate column name {name!r}")
        seen.add(name)
    return node


def _to_records(items: list[Any], names: list[Any] | None, loose: bool = False) -> list[Any]:
    """Check/convert located items; number every BadItem with its position.

    ``loose`` (positional names): a row may be longer than the names (the cells past
    them are not kept) and a None name skips its cell; a shorter row is a BadItem.
    """
    if names is None and all(item.__class__ is dict for item in items):
        return items
    width = 0 if names is None else len(names)
    out: list[Any] = []
    for index, item in enumerate(items):
        if item.__class__ is BadItem:
            item.index = index
            out.append(item)
        elif names is not None:
            if item.__class__ is list and len(item) == width and not loose:
                out.append(dict(zip(names, item, strict=True)))
            elif loose and item.__class__ is list and len(item) >= width:
                out.append({n: v for n, v in zip(names, item, strict=False) if n is not None})
            else:
                if isinstance(item, list):
                    values = "value" if len(item) == 1 else "values"
                    at_least = "at least " if loose else ""
                    message = (f"row {index} has {len(item)} {values}, expected "
                               f"{at_least}{width} columns")
                else:
                    message = f"row {index} is {_describe(item)}, expected an array of values"
                out.append(BadItem(index, "columns", message, _clip(_repr.repr(item))))
        elif isinstance(item, dict):
            out.append(item)
        else:
            message = f"item {index} is {_describe(item)}, expected an object"
            out.append(BadItem(index, "not_object", message, _clip(_repr.repr(item))))
    return out


# --------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------


def parse_payload(
    body: bytes,
    fmt: str,
    *,
    records: str | None = None,
    columns: str | None = None,
    content_type: str | None = None,
    max_bytes: int | None = None,
    max_depth: int = 200,
    zip: str | None = None,
    positional: Sequence[str | None] | None = None,
    melt: Melt | None = None,
    namespaces: dict[str, str] | None = None,
    parents: bool = False,
) -> list[dict[str, Any] | BadItem]:
    """Decode a fetched ``body`` into a list of items (dicts) and BadItems.

    ``fmt`` is "json", "geojson", "jsonl", "csv" or "xml".  For json/geojson,
    ``records`` locates the items ("features[].properties", "data.rows";
    None/"" = the root: an array gives its elements, an object is one item;
    geojson defaults to "features[].properties" when ``records`` is None), and
    ``columns`` (a path from the root to a list of names) or ``positional`` (the
    names themselves, None to skip a cell) turns row arrays into dicts.  For xml,
    ``records`` is an element path (see :mod:`flowdeck.pipeline.xmlparse`).
    Then, for any format: ``zip`` (a path inside each item to an object of equal-length
    arrays) gives one item per index, and ``melt`` one item per melted column.
    With ``parents`` every dict is a :class:`Node` (field paths may use ``../`` and
    ``$.``); xml items, zipped and melted items always are.  Raises PayloadError when
    the payload as a whole is unusable.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown payload format {fmt!r} (expected one of {sorted(FORMATS)})")
    if fmt in ("jsonl", "csv") and (records or columns or positional):
        raise ValueError(f"records/columns/positional only apply to json, geojson and xml, "
                         f"not {fmt}")
    if columns and positional:
        raise ValueError("give either columns or positional, not both")
    if isinstance(body, str):
        raise TypeError("body must be bytes, not str")
    if not isinstance(body, bytes):
        body = bytes(body)  # bytearray, memoryview
    if max_bytes is not None and len(body) > max_bytes:
        raise PayloadError("too_large", f"payload is {len(body):,} bytes (limit {max_bytes:,})")
    if not body or body.isspace():
        raise PayloadError(
            "empty", "payload is empty" if not body else "payload is only whitespace"
        )
    text = decode_text(body)
    if not text or text.isspace():
        raise PayloadError("empty", "payload has no content after the byte order mark")
    items: list[Any]
    if fmt == "csv":
        items = _parse_csv(text)
    elif fmt == "xml":
        from flowdeck.pipeline.xmlparse import locate_xml, parse_xml

        items = locate_xml(parse_xml(text), records, namespaces, max_depth)
    else:
        _reject_markup(text, content_type)
        if fmt == "jsonl":
            items = _parse_jsonl(text, max_depth)
        else:
            root = _load_json(text, body, max_depth)
            if parents:
                steps = _parse_records_path(records) if records else []
                if fmt == "geojson" and records is None:
                    steps = _parse_records_path(GEOJSON_RECORDS)
                root = _spine(root, steps, None)
            if fmt == "geojson" and records is None:
                records = GEOJSON_RECORDS
            names: list[Any] | None = _column_names(root, columns) if columns else None
            if positional:
                names = list(positional)
            items = _to_records(_locate(root, records), names, loose=bool(positional))
            if parents and names is not None:
                _adopt(items, _holder(root, records))
    if parents and fmt in ("csv", "jsonl"):
        items = [Node(item) if item.__class__ is dict else item for item in items]
    if zip:
        items = _zip_all(items, zip)
    if melt is not None:
        items = _melt_all(items, melt)
    if zip or melt is not None:
        for index, item in enumerate(items):
            if item.__class__ is BadItem:
                item.index = index
    return items


def _holder(root: Any, records: str | None) -> Node | None:
    """The object holding the rows of a records path without ``[]`` ("result.list" ->
    root["result"]); None when rows come from several places."""
    if not records or "[]" in records:
        return root if isinstance(root, Node) else None
    node = root
    for key in records.split(".")[:-1]:
        node = _child(node, key)
    return node if isinstance(node, Node) else None


def _adopt(items: list[Any], parent: Node | None) -> None:
    """Rows built from arrays become Nodes of ``parent`` (``../symbol`` beside the rows)."""
    for i, item in enumerate(items):
        if item.__class__ is dict:
            node = Node(item)
            node.parent = parent
            items[i] = node


def _spine(node: Any, steps: list[tuple[str, bool]], parent: Node | None) -> Any:
    """The objects along a records path (and the records) as Nodes pointing at the object
    they are in; everything below a record stays as decoded (paths only read it). Costs
    one shallow copy per object on the path, not a copy of the payload."""
    if isinstance(node, dict):
        copy = Node(node)
        copy.parent = parent
        node = parent = copy
    elif isinstance(node, list) and not steps:  # the records themselves
        return [_spine(x, [], parent) for x in node]
    if not steps:
        return node
    (key, each), rest = steps[0], steps[1:]
    if key and not (isinstance(node, dict) and key in node):
        return node  # _locate says what is missing
    child = node[key] if key else node
    if each and isinstance(child, list):
        new = [_spine(x, rest, parent) for x in child]
    else:
        new = _spine(child, rest, parent)
    if key:
        node[key] = new
        return node
    return new


def _zip_all(items: list[Any], path: str) -> list[Any]:
    """Every item's object of parallel arrays at ``path`` -> one Node per index."""
    segments = _split_path(path, "zip path")
    out: list[Any] = []
    errors: list[BadItem] = []
    good = 0
    for item in items:
        if item.__class__ is BadItem:
            out.append(item)
            continue
        try:
            rows = _zip_one(item, segments, path)
        except PayloadError as exc:
            bad = BadItem(-1, exc.reason, exc.message, _clip(_repr.repr(item)))
            errors.append(bad)
            out.append(bad)
            continue
        good += 1
        out.extend(rows)
    if errors and not good:
        raise PayloadError(errors[0].reason, errors[0].message)
    return out


def _zip_one(item: Any, segments: list[str], path: str) -> list[Node]:
    node = item
    for key in segments:
        child = _child(node, key)
        if child is _MISSING:
            raise PayloadError("records_path", f"no '{path}' in the payload (zip path)")
        node = child
    if not isinstance(node, dict):
        raise PayloadError("columns", f"'{path}' is {_describe(node)}, expected an object "
                           "of parallel arrays (zip)")
    lengths: dict[str, int] = {}
    for name, column in node.items():
        if not isinstance(column, list):
            raise PayloadError("columns", f"'{path}.{name}' is {_describe(column)}, "
                               "expected an array (zip)")
        lengths[name] = len(column)
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{name} has {n}" for name, n in lengths.items())
        raise PayloadError("columns", f"parallel arrays under '{path}' differ in length: "
                           f"{shown}")
    names = list(node)
    parent = item if isinstance(item, Node) else None
    rows = []
    for values in builtins.zip(*node.values(), strict=True):
        row = Node(builtins.zip(names, values, strict=True))
        row.parent = parent
        rows.append(row)
    return rows


def _melt_all(items: list[Any], melt: Melt) -> list[Any]:
    """Wide -> long: one Node per (item, melted column)."""
    pattern = re.compile(melt.pattern) if melt.pattern else None
    wanted = set(melt.columns)
    out: list[Any] = []
    good = 0
    first_bad: BadItem | None = None
    for item in items:
        if not isinstance(item, dict):
            out.append(item)
            continue
        melted: list[tuple[str, str]] = []  # (key in the item, name to keep)
        for key in item:
            if pattern is not None:
                m = pattern.fullmatch(key)
                if m:
                    melted.append((key, m.group(1) if m.groups() else key))
            elif key in wanted:
                melted.append((key, key))
        if not melted:
            which = f"pattern {melt.pattern!r}" if pattern else f"columns {list(melt.columns)}"
            bad = BadItem(-1, "records_path", f"no key matches the melt {which}",
                          _clip(_repr.repr(item)))
            first_bad = first_bad or bad
            out.append(bad)
            continue
        good += 1
        dropped = {key for key, _ in melted}
        base = {k: v for k, v in item.items() if k not in dropped}
        parent = item.parent if isinstance(item, Node) else None
        for key, name in melted:
            row = Node(base)
            row.parent = parent
            row[melt.name] = name
            row[melt.value] = item[key]
            out.append(row)
    if first_bad is not None and not good:
        raise PayloadError(first_bad.reason, first_bad.message)
    return out


def split_anchor(path: str) -> tuple[int, str]:
    """``"../../a.b"`` -> (2, "a.b"); ``"$.a"`` -> (-1, "a"); ``"a"`` -> (0, "a").

    Raises ValueError for a malformed path, so ``flowdeck check`` refuses what the
    engine would refuse.
    """
    if path.startswith("$"):
        if path == "$":
            return -1, ""
        if not path.startswith("$.") or len(path) == 2:
            raise ValueError(f"invalid field path {path!r}: '$' must be followed by '.name'")
        rest = path[2:]
        if any(not segment for segment in rest.split(".")):
            raise ValueError(f"invalid field path {path!r}: empty segment")
        return -1, rest
    up = 0
    rest = path
    while rest == ".." or rest.startswith("../"):
        up += 1
        rest = rest[3:]
    if up and rest and any(not segment for segment in rest.split(".")):
        raise ValueError(f"invalid field path {path!r}: empty segment")
    return up, rest


def uses_anchor(path: str) -> bool:
    """Whether ``path`` climbs out of the item (``../``) or starts at the root (``$.``)."""
    return path.startswith("$") or path == ".." or path.startswith("../")


def compile_path(path: str) -> Callable[[Any], Any]:
    """A fast getter for a dotted ``path`` in one item; missing anywhere -> None.

    ``"temperature.value"`` reads nested objects; an integer segment indexes an
    array (``"coords.1"``, ``"coords.-1"``) or reads that key from an object.
    ``"../@time"`` starts at the item's parent (each ``../`` one level up) and
    ``"$.hourly_units.temperature_2m"`` at the payload's root: both need items that
    are :class:`Node` s (see ``parents`` in :func:`parse_payload`).
    """
    up, rest = split_anchor(path)
    if up:
        inner = compile_path(rest) if rest else (lambda node: node)

        def get_up(item: Any) -> Any:
            node = item
            if up == -1:  # the root
                while isinstance(node, Node) and node.parent is not None:
                    node = node.parent
            else:
                for _ in range(up):
                    node = getattr(node, "parent", None)
                    if node is None:
                        return None
            return inner(node)

        return get_up
    segments = _split_path(path, "field path")
    for segment in segments:
        if segment.endswith("[]"):
            raise ValueError(f"invalid field path {path!r}: '[]' is only for records paths")
    indexes = [_as_index(segment) for segment in segments]

    if all(index is None for index in indexes):
        # Only object keys: chain dict.get; a non-dict anywhere (list, str,
        # number, None) has no .get, which ends the walk with None.
        if len(segments) == 1:
            (key,) = segments

            def get_one(item: Any) -> Any:
                try:
                    return item.get(key)
                except AttributeError:
                    return None

            get_one.key = key  # a plain key: callers may read it from dicts directly
            return get_one
        if len(segments) == 2:
            first, second = segments

            def get_two(item: Any) -> Any:
                try:
                    node = item.get(first)
                    return None if node is None else node.get(second)
                except AttributeError:
                    return None

            return get_two

        def get_keys(item: Any) -> Any:
            node = item
            try:
                for key in segments:
                    node = node.get(key)
                    if node is None:
                        return None
            except AttributeError:
                return None
            return node

        return get_keys

    steps = tuple(zip(segments, indexes, strict=True))

    def get_mixed(item: Any) -> Any:
        node = item
        for key, index in steps:
            if isinstance(node, dict):
                node = node.get(key)
            elif index is not None and isinstance(node, list):
                if not -len(node) <= index < len(node):
                    return None
                node = node[index]
            else:
                return None
        return node

    return get_mixed
