"""The feed protocol (version 1): envelopes, channels, filters, and how hub events map onto them.

Every message either way is one JSON text frame. Server messages are envelopes
``{v, type, channel, seq, ts, data}``; ``docs/protocol.md`` describes them with
examples. This module is pure data handling (no I/O), shared by the feed
server and by anything that wants to speak the protocol.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Any

from flowdeck.pipeline.core.shapes import HubEvent, LatestRow, LatestSummary, ViewerSnapshot

PROTOCOL_VERSION = 1

# Channels every server has; per-flow channels are ``flow:<name>`` and ``records:<name>``.
GLOBAL_CHANNELS = ("flows", "quality", "recovery", "caches", "metrics", "events")
FLOW_KINDS = ("flow", "records")

# Which filters each kind of channel understands (anything else is refused with an error).
FILTERS = {
    "flows": frozenset({"flow"}),
    "flow": frozenset(),
    "records": frozenset({"key"}),
    "quality": frozenset({"flow", "key", "severity"}),
    "recovery": frozenset({"flow"}),
    "caches": frozenset(),
    "metrics": frozenset({"flow"}),
    "events": frozenset({"flow", "key", "severity"}),
}

SEVERITIES = ("info", "warning", "error", "critical")
_RANK = {s: i for i, s in enumerate(SEVERITIES)}

# Client -> server message types.
REQUEST_TYPES = ("subscribe", "unsubscribe", "action", "query", "ack", "ping")

# Conflation key for records batches: a newer batch is merged into a queued one, latest per key.
MERGE_RECORDS = ("records",)


class ProtocolError(Exception):
    """A request the server refuses; ``code`` is machine-readable, the message one line."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------- encoding


def _clean(value: Any) -> Any:
    """Replace NaN and infinities (not JSON) by null, recursively."""
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    return str(value)


def dumps(obj: Any) -> bytes:
    """Compact, strict JSON as UTF-8 bytes (NaN becomes null, unknown types their str)."""
    try:
        return json.dumps(
            obj, separators=(",", ":"), allow_nan=False, default=_default, ensure_ascii=False
        ).encode()
    except ValueError:
        return json.dumps(
            _clean(obj),
            separators=(",", ":"),
            allow_nan=False,
            default=_default,
            ensure_ascii=False,
        ).encode()


def envelope(type_: str, channel: str | None, seq: int, ts: float, data: Any) -> bytes:
    """One encoded server message."""
    return dumps(
        {
            "v": PROTOCOL_VERSION,
            "type": type_,
            "channel": channel,
            "seq": seq,
            "ts": round(ts, 3),
            "data": data,
        }
    )


def envelope_raw(type_: str, channel: str | None, seq: int, ts: float, data: bytes) -> bytes:
    """The same bytes as :func:`envelope` for data already encoded with :func:`dumps`
    (a delta read back from the fan-out is framed, not decoded and encoded again)."""
    return b"".join((
        b'{"v":', str(PROTOCOL_VERSION).encode(), b',"type":', dumps(type_),
        b',"channel":', dumps(channel), b',"seq":', str(seq).encode(),
        b',"ts":', dumps(round(ts, 3)), b',"data":', data, b"}",
    ))


# ---------------------------------------------------------------- channels


def channel_kind(name: str, flows: Iterable[str]) -> tuple[str, str | None]:
    """(kind, flow) of a channel name, or ProtocolError if there is no such channel."""
    if not isinstance(name, str) or not name:
        raise ProtocolError("bad_request", "subscribe needs a channel name")
    if name in GLOBAL_CHANNELS:
        return name, None
    kind, sep, flow = name.partition(":")
    if sep and kind in FLOW_KINDS:
        if flow in flows:
            return kind, flow
        raise ProtocolError(
            "unknown_channel",
            f"no flow {flow!r} for channel {name!r} (flows: {', '.join(sorted(flows)) or 'none'})",
        )
    raise ProtocolError(
        "unknown_channel",
        f"no channel {name!r} (channels: {', '.join(GLOBAL_CHANNELS)}, "
        "flow:<flow>, records:<flow>)",
    )


def all_channels(flows: Iterable[str]) -> list[str]:
    flows = list(flows)
    return list(GLOBAL_CHANNELS) + [f"flow:{f}" for f in flows] + [f"records:{f}" for f in flows]


# ---------------------------------------------------------------- filters


@dataclass(frozen=True, slots=True)
class Filter:
    """A subscription's filters; ``None`` fields match everything.

    ``flow`` is a flow name, ``keys`` a set of series keys (stations, pairs),
    ``severity`` the minimum severity rank (``info`` < ``warning`` < ``error``
    < ``critical``). A message is delivered only if it matches all of them.
    """

    flow: str | None = None
    keys: frozenset[str] | None = None
    severity: int | None = None

    @classmethod
    def parse(cls, kind: str, raw: Any) -> Filter | None:
        """The filters of a subscribe request (``None`` when there are none)."""
        if raw is None or raw == {}:
            return None
        if not isinstance(raw, dict):
            raise ProtocolError(
                "bad_filter", 'filters must be an object like {"flow": "weather", "key": "KDEN"}'
            )
        allowed = FILTERS[kind]
        unknown = sorted(set(raw) - allowed)
        if unknown:
            what = ", ".join(sorted(allowed)) if allowed else "none"
            raise ProtocolError(
                "bad_filter",
                f"channel kind {kind!r} does not filter by {', '.join(unknown)} (it takes: {what})",
            )
        flow = raw.get("flow")
        if flow is not None and not isinstance(flow, str):
            raise ProtocolError("bad_filter", "filter flow must be a string")
        keys = raw.get("key")
        if keys is not None:
            if isinstance(keys, str):
                keys = [keys]
            if (
                not isinstance(keys, list)
                or not all(isinstance(k, str) for k in keys)
                or not keys
                or len(keys) > 1000
            ):
                raise ProtocolError(
                    "bad_filter", "filter key must be a string or a list of 1 to 1000 strings"
                )
            keys = frozenset(keys)
        sev = raw.get("severity")
        if sev is not None:
            if sev not in _RANK:
                raise ProtocolError(
                    "bad_filter", f"filter severity must be one of {', '.join(SEVERITIES)}"
                )
            sev = _RANK[sev]
        if flow is None and keys is None and sev is None:
            return None
        return cls(flow, keys, sev)

    # ------------------------------------------------------------ matching

    def _event(self, ev: HubEvent) -> bool:
        if self.flow is not None and ev.get("flow") != self.flow:
            return False
        d = ev.get("data") or {}
        if self.keys is not None and d.get("key") not in self.keys:
            return False
        if self.severity is not None and _RANK.get(d.get("severity"), -1) < self.severity:
            return False
        return True

    def _row(self, row: dict) -> bool:
        """Issues, actions, quarantine rows (they have flow / key / severity columns)."""
        if self.flow is not None and row.get("flow") != self.flow:
            return False
        if self.keys is not None and "key" in row and row.get("key") not in self.keys:
            return False
        if (
            self.severity is not None
            and "severity" in row
            and _RANK.get(row.get("severity"), -1) < self.severity
        ):
            return False
        return True

    def delta(self, kind: str, data: Any) -> Any:
        """The part of a delta's data this filter lets through, or ``None`` for nothing."""
        if kind == "flows":
            return data if self.flow is None or data.get("flow") == self.flow else None
        if kind == "records":
            if self.keys is None:
                return data
            rows = [r for r in data["records"] if r.get("key") in self.keys]
            return {**data, "count": len(rows), "records": rows} if rows else None
        if kind == "metrics":
            return self._metrics(data)
        if kind in ("quality", "recovery", "events"):
            return data if self._event(data) else None
        return data

    def snapshot(self, kind: str, data: Any) -> Any:
        """The part of a channel snapshot this filter lets through (never ``None``)."""
        if kind == "flows":
            return {
                **data,
                "flows": {
                    k: v for k, v in data["flows"].items() if self.flow is None or k == self.flow
                },
            }
        if kind == "records":
            if self.keys is None:
                return data
            return {**data, "records": [r for r in data["records"] if r.get("key") in self.keys]}
        if kind == "quality":
            return {
                "issues": [r for r in data["issues"] if self._row(r)],
                "quarantine": [
                    r for r in data["quarantine"] if self.flow is None or r.get("flow") == self.flow
                ],
            }
        if kind == "recovery":
            return {"actions": [r for r in data["actions"] if self._row(r)]}
        if kind == "events":
            return {"events": [e for e in data["events"] if self._event(e)]}
        if kind == "metrics":
            return self._metrics(data)
        return data

    def _metrics(self, data: dict) -> dict:
        if self.flow is None:
            return data
        return {**data, "flows": {k: v for k, v in data.get("flows", {}).items() if k == self.flow}}


# ---------------------------------------------------------------- routing hub events


@dataclass(slots=True)
class Route:
    """One delta an event produces on one channel."""

    channel: str
    data: Any
    ckey: Hashable | None  # conflation key: a newer delta with the same key supersedes it


def slim_event(ev: HubEvent) -> HubEvent:
    """An event for the log-like channels: a records event without its (large) record list."""
    if ev.get("type") == "records":
        d = ev.get("data") or {}
        return {**ev, "data": {"count": d.get("count", 0), "keys": len(d.get("latest") or ())}}
    return ev


def _flow_ckey(ev: HubEvent) -> Hashable | None:
    t = ev.get("type")
    if t in ("run_started", "run_finished"):
        return "run"
    if t in ("fetch", "breaker"):
        return (t, (ev.get("data") or {}).get("source"))
    if t == "flow_state":
        return "state"
    if t == "summary":
        return "summary"
    if t == "records":
        return "records"
    return None


def route(ev: HubEvent) -> list[Route]:
    """The deltas one hub event (``Event.as_dict()``) becomes, channel by channel."""
    t = ev.get("type") or ""
    flow = ev.get("flow")
    slim = slim_event(ev)
    out = [Route("events", slim, None)]
    if flow:
        out.append(Route(f"flow:{flow}", slim, _flow_ckey(ev)))
        if t == "records":
            d = ev.get("data") or {}
            out.append(
                Route(
                    f"records:{flow}",
                    {"flow": flow, "count": d.get("count", 0), "records": d.get("latest") or []},
                    MERGE_RECORDS,
                )
            )
    if t in ("issue", "issue_state", "quarantine"):
        out.append(Route("quality", ev, None))
    elif t == "action" or t.startswith(("breaker", "failover", "recovery")):
        out.append(Route("recovery", ev, None))
    elif t.startswith("cache"):
        out.append(Route("caches", ev, None))
    return out


def merge_records(old: dict, new: dict) -> dict:
    """Two queued records deltas as one: the newest value per key (conflation)."""
    by_key = {r.get("key"): r for r in old["records"]}
    for r in new["records"]:
        by_key[r.get("key")] = r
    return {
        "flow": new["flow"],
        "count": old.get("count", 0) + new.get("count", 0),
        "records": list(by_key.values()),
    }


# Events that can change what a flow summary shows (state, counts, sources, schedule).
FLOW_CHANGING = frozenset(
    {"run_started", "run_finished", "fetch", "flow_state", "action", "records", "breaker"}
)


_ACTOR_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


def remote_actor(name: Any) -> str | None:
    """The actor a remote operator's action is recorded under: ``operator:<name>``.

    None when no name is given (the daemon's own actor is used). A name that is
    not 1-64 letters, digits, ``_ . @ -`` is refused (ProtocolError)."""
    if name is None:
        return None
    if not isinstance(name, str) or not _ACTOR_NAME.match(name):
        raise ProtocolError("bad_request", "actor must be 1-64 letters, digits, _ . @ or -")
    return f"operator:{name}"


# ---------------------------------------------------------------- snapshots


def latest_summary(latest: dict[str, list[LatestRow]]) -> dict[str, LatestSummary]:
    """Per flow, what a viewer needs of the latest values without the values: how many
    keys, the newest one's time, and each key's quality, oldest value first."""
    out = {}
    for flow, rows in latest.items():
        by_time = sorted(rows, key=lambda r: r["ts_ms"])
        out[flow] = {"keys": len(rows),
                     "newest_ms": by_time[-1]["ts_ms"] if by_time else None,
                     "quality": [r["quality"] for r in by_time]}
    return out


def trim_snapshot(snap: ViewerSnapshot, latest: list[str] | None) -> ViewerSnapshot:
    """The snapshot with the latest values of only the flows in ``latest`` (None: all).

    The latest values are most of a snapshot (a flow of 2,000 keys is ~0.5 MB of JSON),
    and a viewer shows one flow's at a time, if any; ``latest_summary`` stays whole."""
    if latest is None:
        return snap
    if not isinstance(latest, list) or not all(isinstance(f, str) for f in latest):
        raise ValueError("'latest' must be a list of flow names")
    keep = set(latest)
    return {**snap, "latest": {f: rows for f, rows in snap.get("latest", {}).items()
                               if f in keep}}
