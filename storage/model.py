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


@dataclass
class RawDraft:
    """A fetched payload to append to the raw store (see ``Store.insert_raws``)."""

    source: str
    body: bytes
    fetched_ms: int
    content_type: str | None = None
    status_code: int | None = None
    truncated: bool = False


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
    # Series points: dicts {flow, key, metric, ts_ms, value} or, cheaper on the hot path,
    # tuples in SERIES_COLS order.
    series: list[dict | tuple] = field(default_factory=list)
    quarantine: list[QuarantineRow] = field(default_factory=list)
    replayed: list[tuple[int, int]] = field(default_factory=list)  # quarantine (raw_id, item) now ok
    raw_status: list[dict] = field(default_factory=list)
    issues: list[IssueDraft] = field(default_factory=list)
