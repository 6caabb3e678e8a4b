"""The plain rows the pipeline hands to the store: no SQLAlchemy here, so a stage can
build them without loading the database layer."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

SEVERITIES = ("info", "warning", "error", "critical")


def content_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


@dataclass
class QuarantineRow:
    flow: str
    source: str
    raw_id: int
    item: int
    stage: str
    reason: str
    message: str
    record: Any = None


@dataclass(slots=True)
class RawDraft:
    """One raw payload, the same object from fetch to store: a source returns it (with
    ``fetched_ms`` left 0, stamped by the engine's clock when the fetch returns), the
    spool keeps it while the store is away, ``Store.insert_raws`` appends it to the raw
    store and sets nothing on it; the engine sets ``raw_id`` once it is committed and
    hands it to the stages."""

    source: str
    body: bytes
    fetched_ms: int = 0
    content_type: str | None = None
    status_code: int | None = None
    truncated: bool = False
    raw_id: int | None = None  # the raw store's id, once committed
    origin: str = ""  # URL or file path it came from, for the log
    spool_seq: int | None = None  # its place in the raw spool while it is kept there


@dataclass
class IssueDraft:
    """A quality issue as a stage raises it; the store merges it with an open one."""

    flow: str
    kind: str
    severity: str
    title: str
    fingerprint: str
    detail: dict = field(default_factory=dict)
    key: str | None = None
    source: str | None = None
    record_keys: list[tuple[str, int]] = field(default_factory=list)  # (key, ts_ms)
    raw_ids: list[int] = field(default_factory=list)


@dataclass
class BatchWrite:
    """Everything one processed batch writes, committed in one transaction."""

    flow: str
    records: list[dict] = field(default_factory=list)
    # Series points: dicts {flow, key, metric, ts_ms, value} or tuples in SERIES_COLS
    # order. Or, cheaper on the hot path, ``metrics``: the points are then the records'
    # values of these metrics (finite numbers; not bools), folded a key at a time.
    series: list[dict | tuple] = field(default_factory=list)
    metrics: tuple[str, ...] = ()
    quarantine: list[QuarantineRow] = field(default_factory=list)
    replayed: list[tuple[int, int]] = field(default_factory=list)  # quarantine (raw_id, item) now ok
    raw_status: list[dict] = field(default_factory=list)
    issues: list[IssueDraft] = field(default_factory=list)
