"""Repositories over the schema: every read and write the engine and the CLI make.

SQLAlchemy Core, parameterised statements, batched ``executemany`` on the
hot path. Methods are synchronous; the engine calls them from one worker
thread so the event loop never blocks on the database.
"""

from __future__ import annotations

import hashlib
import json
import logging
import operator
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from json.encoder import c_make_encoder, encode_basestring_ascii
from typing import Any

from sqlalchemy import and_, bindparam, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from flowdeck.storage import schema as s
from flowdeck.storage.db import WalCheckpointer, check_schema, make_engine, sqlite_file
from flowdeck.storage.model import (
    BatchWrite,
    IssueDraft,
    RawDraft,
    content_hash,
)

log = logging.getLogger(__name__)


class _Derived:
    """What runs whose records are committed still owe the store: their series points
    (the roll-ups follow from them) and the raw status that marks their payloads done.

    Written for many runs at once (``Store.flush_step``, ``Store.flush_derived``): each
    run appends one point to each of its (key, metric) series and updates the same
    roll-up rows, so a transaction per run rewrote ~400 b-tree pages for 100 records,
    and a flush of N runs rewrites about the same pages once. Kept per run, oldest
    first, so that runs can be given up whole (see ``Store.MAX_DERIVED_ROWS``).
    """

    def __init__(self) -> None:
        self.runs: list[tuple[list[tuple], list[tuple]]] = []  # (series rows, raw status)
        self.raw_ids: set[int] = set()
        self.rows = 0
        self.since: float | None = None  # time.monotonic() of the oldest
        self.seq = 0  # the store's count of deferred batches, at the newest of these

    def add(self, series: list[tuple], raw_status: list[tuple], seq: int) -> None:
        if self.since is None:
            self.since = time.monotonic()
        self.runs.append((series, raw_status))
        self.raw_ids.update(r[0] for r in raw_status)
        self.rows += len(series) + len(raw_status)
        self.seq = seq


class _Flush:
    """Owed runs being written in steps: their series points in key order, a slice per
    transaction, then their raw status with the last slice. A slice covers a range of
    series, so the steps together rewrite the pages one transaction would (a step that
    fails is repeated; a crash between steps leaves the payloads unmarked, processed
    again, and the points already written are recognised as such)."""

    def __init__(self, owed: _Derived) -> None:
        self.series = [p for run in owed.runs for p in run[0]]
        self.series.sort(key=_SERIES_ORDER)  # stable: of two values for a point, the later last
        self.raw_status = [r for run in owed.runs for r in run[1]]
        self.raw_ids = owed.raw_ids
        self.since = owed.since
        self.seq = owed.seq
        self.pos = 0

    @property
    def rows(self) -> int:
        return len(self.series) - self.pos + len(self.raw_status)


RECORD_COLS = ("flow", "key", "ts_ms", "data", "quality", "anomaly_score", "anomalous", "flags",
               "sources", "contributions", "raw_ids", "version_id", "updated_ms")
RECORD_JSON = ("data", "flags", "sources", "contributions", "raw_ids")
LATEST_COLS = ("flow", "key", "ts_ms", "data", "quality", "anomaly_score", "anomalous", "flags",
               "sources", "updated_ms")
SERIES_COLS = ("flow", "key", "metric", "ts_ms", "value")
RAW_STATUS_COLS = ("raw_id", "outcome", "processed_ms", "version_id", "records_in", "records_out")
_CONTRIB_KEYS = {"v", "ts", "raw", "q", "f"}


class _JsonCodec:
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
        """``json.dumps(value)``, from the same C encoder built once per batch, not per call."""
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
_RECORD_ORDER = operator.itemgetter(0, 1, 2)
_SERIES_ORDER = operator.itemgetter(0, 1, 2, 3)


class Store:
    """One database, SQLite or PostgreSQL, through the same code."""

    def __init__(self, url: str, *, engine: Engine | None = None, create_if_empty: bool = True,
                 check: bool = True, busy_timeout: float = 30.0) -> None:
        self.url = url
        self.engine = engine or make_engine(url, busy_timeout)
        self.dialect = self.engine.dialect.name
        if check:
            check_schema(self.engine, create_if_empty=create_if_empty)
        self._sql = _hot_sql(self.dialect)
        self._upserts: dict[tuple, Any] = {}
        self._wal_file = sqlite_file(self.engine)
        self._checkpointer: WalCheckpointer | None = None
        self._derived = _Derived()  # owed by deferred batches, not being written yet
        self._flushing: _Flush | None = None  # owed, being written in steps
        self._deferred_seq = 0  # deferred batches so far
        self._written_seq = 0  # ... of which every one up to this is written
        self._derived_lock = threading.RLock()

    # Past this many rows owed (series points + raw status), a flush that fails gives up
    # the oldest runs: their payloads stay unprocessed (no raw status) and are processed
    # again by the next run's backlog or the next start's resume, so nothing is lost.
    MAX_DERIVED_ROWS = 1_000_000

    def close(self) -> None:
        try:
            self.flush_derived()
        except Exception as exc:  # their payloads stay unprocessed: the next start resumes
            log.warning("series of %d payload(s) not written at close (%s); they are "
                        "processed again at the next start", len(self._unmarked()), exc)
        if self._checkpointer is not None:
            self._checkpointer.stop()
        self.engine.dispose()

    def _start_checkpointer(self) -> None:
        """On a SQLite file's first batch: WAL checkpoints move to their own thread."""
        if self._wal_file is not None and self._checkpointer is None:
            self._checkpointer = WalCheckpointer(self._wal_file)
            weakref.finalize(self, self._checkpointer.stop)  # a store never closed

    # ------------------------------------------------------------ helpers

    def _insert(self, table):
        return (postgresql.insert(table) if self.dialect == "postgresql" else sqlite.insert(table))

    def _upsert(self, conn: Connection, table, rows: list[dict], keys: Sequence[str],
                update_cols: Sequence[str]) -> None:
        if not rows:
            return
        # Built once per shape: constructing an ON CONFLICT statement costs more than
        # running it for a few rows (every batch upserts raw_status this way).
        ck = (table.name, tuple(keys), tuple(update_cols))
        stmt = self._upserts.get(ck)
        if stmt is None:
            stmt = self._insert(table)
            stmt = self._upserts[ck] = stmt.on_conflict_do_update(
                index_elements=list(keys),
                set_={c: getattr(stmt.excluded, c) for c in update_cols},
            )
        conn.execute(stmt, rows)

    def ping(self) -> bool:
        with self.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        return True

    # ------------------------------------------------------------ versions and runs

    def pipeline_version(self, flow: str, config: dict, stages: dict, now_ms: int) -> int:
        digest = hashlib.sha256(json.dumps([config, stages], sort_keys=True, default=str)
                                .encode()).hexdigest()
        with self.engine.begin() as conn:
            row = conn.execute(select(s.pipeline_versions.c.id).where(
                s.pipeline_versions.c.flow == flow, s.pipeline_versions.c.digest == digest)).first()
            if row:
                return row[0]
            stmt = self._insert(s.pipeline_versions).values(
                flow=flow, digest=digest, config=config, stages=stages, created_ms=now_ms
            ).on_conflict_do_nothing()
            conn.execute(stmt)
            return conn.execute(select(s.pipeline_versions.c.id).where(
                s.pipeline_versions.c.flow == flow,
                s.pipeline_versions.c.digest == digest)).scalar_one()

    def get_version(self, version_id: int) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(s.pipeline_versions).where(
                s.pipeline_versions.c.id == version_id)).mappings().first()
        return dict(row) if row else None

    def start_run(self, flow: str, trigger: str, now_ms: int) -> int:
        with self.engine.begin() as conn:
            res = conn.execute(insert(s.runs).values(flow=flow, trigger=trigger,
                                                     started_ms=now_ms, status="running"))
            return res.inserted_primary_key[0]

    def finish_run(self, run_id: int, status: str, stats: dict, now_ms: int,
                   error: str | None = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(s.runs).where(s.runs.c.id == run_id).values(
                status=status, stats=stats, finished_ms=now_ms, error=error))

    def recent_runs(self, flow: str | None = None, limit: int = 50) -> list[dict]:
        q = select(s.runs).order_by(s.runs.c.id.desc()).limit(limit)
        if flow:
            q = q.where(s.runs.c.flow == flow)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    # ------------------------------------------------------------ raw payloads

    def insert_raw(self, flow: str, source: str, body: bytes, fetched_ms: int, *,
                   content_type: str | None = None, status_code: int | None = None,
                   truncated: bool = False, run_id: int | None = None) -> tuple[int, bool]:
        """Append a fetched payload and commit it. Returns (raw_id, is_new).

        The same bytes from the same source are stored once (content hash), so a
        re-fetch of an unchanged upstream is recognised and not processed twice.
        """
        return self.insert_raws(flow, [RawDraft(source, body, fetched_ms, content_type,
                                                status_code, truncated)], run_id=run_id)[0]

    def insert_raws(self, flow: str, drafts: Sequence[RawDraft], *,
                    run_id: int | None = None) -> list[tuple[int, bool]]:
        """Append a run's fetched payloads and commit them together, in order.

        One transaction for all of them (they are still committed before anything is
        done with them): a commit per payload cost more than the insert itself when
        payloads arrive a hundred records at a time. Returns (raw_id, is_new) per
        draft, as ``insert_raw`` does; if the store fails, nothing is committed.
        """
        if not drafts:
            return []
        out = []
        sql_insert, sql_find = self._sql["raw_insert"], self._sql["raw_find"]
        with self.engine.begin() as conn:
            for d in drafts:
                digest = content_hash(d.body)
                row = conn.exec_driver_sql(sql_insert, (
                    flow, d.source, d.fetched_ms, digest, d.content_type, d.status_code,
                    len(d.body), bool(d.truncated), d.body, run_id)).first()
                if row is not None:
                    out.append((row[0], True))
                    continue
                row = conn.exec_driver_sql(sql_find, (flow, d.source, digest)).first()
                out.append((row[0], False))
        return out

    def raw_processed(self, raw_id: int) -> bool:
        """Processed: marked so in the database, or owed by a deferred batch."""
        with self._derived_lock:
            if raw_id in self._unmarked():
                return True
            with self.engine.connect() as conn:
                return conn.execute(select(s.raw_status.c.raw_id).where(
                    s.raw_status.c.raw_id == raw_id)).first() is not None

    def get_raw(self, raw_id: int) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(s.raw_payloads).where(
                s.raw_payloads.c.id == raw_id)).mappings().first()
        return dict(row) if row else None

    def pending_raw(self, flow: str | None = None) -> list[dict]:
        """Raw payloads committed but never processed (a crash in between): resume these."""
        q = (select(s.raw_payloads).outerjoin(s.raw_status,
                                              s.raw_status.c.raw_id == s.raw_payloads.c.id)
             .where(s.raw_status.c.raw_id.is_(None)).order_by(s.raw_payloads.c.id))
        if flow:
            q = q.where(s.raw_payloads.c.flow == flow)
        with self._derived_lock:  # not those a deferred batch processed (their status is owed)
            owed = self._unmarked()
            with self.engine.connect() as conn:
                return [dict(r) for r in conn.execute(q).mappings() if r.id not in owed]

    def raw_since(self, flow: str, since_ms: int) -> list[dict]:
        q = (select(s.raw_payloads).where(s.raw_payloads.c.flow == flow,
                                          s.raw_payloads.c.fetched_ms >= since_ms)
             .order_by(s.raw_payloads.c.id))
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def count(self, table: str, **where: Any) -> int:
        t = s.metadata.tables[table]
        q = select(func.count()).select_from(t)
        for k, v in where.items():
            q = q.where(t.c[k] == v)
        with self.engine.connect() as conn:
            return conn.execute(q).scalar_one()

    # ------------------------------------------------------------ records

    def contributions(self, flow: str, keys_ts: Iterable[tuple[str, int]]) -> dict[tuple, dict]:
        """Stored per-source contributions for (key, ts) pairs, so late sources merge in."""
        wanted = set(keys_ts)
        if not wanted:
            return {}
        lo = min(t for _, t in wanted)
        hi = max(t for _, t in wanted)
        out = {}
        # Driver SQL so that only the wanted rows' JSON is decoded (SQLite hands back
        # text, PostgreSQL's driver already-decoded JSONB), not every row in the range.
        with self.engine.connect() as conn:
            for key, ts, contrib in conn.exec_driver_sql(self._sql["contributions"],
                                                         (flow, lo, hi)):
                if (key, ts) in wanted:
                    out[(key, ts)] = json.loads(contrib) if isinstance(contrib, str) else contrib
        return out

    def write_batch(self, batch: BatchWrite, now_ms: int,
                    stored: Callable[[], None] | None = None,
                    defer: bool = False) -> dict[str, int]:
        """Commit one batch: records, latest, series, roll-ups, quarantine, issues, raw status.

        One transaction; or, with ``stored``, two: the records and ``latest`` are committed
        first and ``stored()`` is called (the engine publishes them to viewers), then the
        rest, raw status last. A failure in the second leaves the payloads unprocessed (no
        raw status), so they are processed again and every write repeats idempotently.

        With ``defer`` (and ``stored``), the batch's series and raw status are left owed, to
        be written with later batches' by ``flush_step`` or ``flush_derived`` (the caller
        flushes: a moment later, and at stop); its quarantine and issues are still
        committed at once. Until
        then its payloads count as processed here (``raw_processed``, ``pending_raw``)
        but not in the database: a crash leaves them to be processed again at resume.
        Any other write of series or raw status first writes what is owed, in order.
        """
        if self._checkpointer is None:
            self._start_checkpointer()
        counts: dict[str, Any] = {"records": len(batch.records),
                                  "quarantined": len(batch.quarantine), "issues_opened": 0,
                                  "issues_updated": 0, "opened": []}
        early = stored is not None and bool(batch.records)
        if early:
            with self.engine.begin() as conn:
                self._write_records(conn, batch.records)
            stored()
        series = [p if type(p) is tuple else (p["flow"], p["key"], p["metric"], p["ts_ms"],
                                              float(p["value"])) for p in batch.series]
        raw_status = [tuple(r[c] for c in RAW_STATUS_COLS) for r in batch.raw_status]
        if defer and early:
            if batch.quarantine or batch.replayed or batch.issues:
                with self.engine.begin() as conn:
                    self._write_bookkeeping(conn, batch, now_ms, counts)
            with self._derived_lock:
                self._deferred_seq += 1
                self._derived.add(series, raw_status, self._deferred_seq)
            return counts
        with self._derived_lock:  # held while written: the owed set stays exact
            try:
                with self.engine.begin() as conn:
                    if batch.records and not early:
                        self._write_records(conn, batch.records)
                    self._write_bookkeeping(conn, batch, now_ms, counts)
                    self._write_owed(conn, series, raw_status)  # raw status last
            except Exception:
                self._bound_derived()  # what was owed stays owed; this batch fails whole
                raise
            self._all_written()
        return counts

    def _write_bookkeeping(self, conn: Connection, batch: BatchWrite, now_ms: int,
                           counts: dict[str, Any]) -> None:
        """A batch's quarantined items, replayed marks and issues."""
        if batch.quarantine:
            rows = [{"flow": q.flow, "source": q.source, "raw_id": q.raw_id, "item": q.item,
                     "stage": q.stage, "reason": q.reason, "message": q.message[:2000],
                     "record": q.record, "created_ms": now_ms, "state": "open"}
                    for q in batch.quarantine]
            self._upsert(conn, s.quarantine, rows, ("raw_id", "item"),
                         ("stage", "reason", "message", "record", "state"))
        for raw_id, item in batch.replayed:
            conn.execute(update(s.quarantine).where(
                s.quarantine.c.raw_id == raw_id, s.quarantine.c.item == item,
                s.quarantine.c.state == "open").values(state="replayed", replayed_ms=now_ms))
        opened, updated = self._raise_issues(conn, batch.issues, now_ms)
        counts["issues_opened"] += len(opened)
        counts["issues_updated"] += updated
        counts["opened"] = opened

    def _bound_derived(self) -> None:
        """After a failed write (lock held): past the bound, give up the oldest runs."""
        owed = self._derived
        given_up = []
        while owed.rows > self.MAX_DERIVED_ROWS and len(owed.runs) > 1:
            series, raw_status = owed.runs.pop(0)
            owed.rows -= len(series) + len(raw_status)
            given_up.extend(r[0] for r in raw_status)
        if given_up:
            owed.raw_ids.difference_update(given_up)
            log.warning("gave up writing the series of %d payload(s) while the store fails; "
                        "they stay unprocessed and are processed again", len(given_up))

    def _unmarked(self) -> set[int]:
        """Raw ids processed by deferred batches whose raw status is not written yet."""
        if self._flushing is None:
            return self._derived.raw_ids
        return self._derived.raw_ids | self._flushing.raw_ids

    def _write_series_and_status(self, conn: Connection, series: list[tuple],
                                 raw_status: list[tuple]) -> None:
        if series:
            self._write_series(conn, series)
        if raw_status:
            # Every run writes it: driver SQL, as for the hot tables below (the Core
            # upsert's per-call compilation and parameter processing cost ~0.7 ms of a
            # run of one 100-record payload, more than SQLite's own work).
            conn.exec_driver_sql(self._sql["raw_status"], raw_status)

    def _write_owed(self, conn: Connection, series: list[tuple] = (),
                    raw_status: list[tuple] = ()) -> int:
        """Everything owed (lock held), then one batch's own series and raw status, the
        newest last (once committed, the caller calls ``_all_written``). Returns the
        payloads marked."""
        f, owed = self._flushing, self._derived
        all_series, all_status = [], []
        if f is not None:
            all_series += f.series[f.pos:]
            all_status += f.raw_status
        for run_series, run_status in owed.runs:
            all_series += run_series
            all_status += run_status
        all_series += series
        all_status += raw_status
        self._write_series_and_status(conn, all_series, all_status)
        return len(all_status)

    def _all_written(self) -> None:
        self._flushing, self._derived = None, _Derived()
        self._written_seq = self._deferred_seq

    def flush_derived(self) -> int:
        """Write everything deferred batches owe (series, roll-ups, raw status) in one
        transaction. Returns how many payloads it marked processed. If it fails, all of
        it stays owed (the next flush tries again) and the error is raised."""
        with self._derived_lock:
            if self._flushing is None and not self._derived.runs:
                return 0
            try:
                with self.engine.begin() as conn:
                    n = self._write_owed(conn)
            except Exception:
                self._bound_derived()
                raise
            self._all_written()
            return n

    def flush_step(self, max_rows: int) -> bool:
        """Write the next slice (at most ``max_rows`` series points, in key order) of what
        deferred batches owe, in a transaction of its own, so that other writes can go
        between the slices; the slice that ends a flush also marks its payloads processed.
        A flush takes everything owed when it begins. Returns True once nothing taken is
        left unwritten (``derived_seq`` tells what has been written). If a slice fails it
        stays to be written and the error is raised."""
        with self._derived_lock:
            f = self._flushing
            if f is None:
                if not self._derived.runs:
                    return True
                f = self._flushing = _Flush(self._derived)
                self._derived = _Derived()
            end = f.pos + max_rows
            last = end >= len(f.series)
            try:
                with self.engine.begin() as conn:
                    self._write_series_and_status(conn, f.series[f.pos:end],
                                                  f.raw_status if last else [])
            except Exception:
                self._bound_derived()
                raise
            f.pos = end
            if last:
                self._flushing = None
                self._written_seq = f.seq
            return last

    # The two below read without the lock (the event loop calls them, and must not wait
    # for a flush step to commit): a moment's inconsistency between the two parts only
    # shifts when a flush starts or what a gauge shows.

    def derived_owed(self) -> tuple[int, float | None]:
        """(rows owed, seconds since the oldest was deferred or None when nothing is)."""
        d, f = self._derived, self._flushing
        rows = d.rows + (f.rows if f is not None else 0)
        since = [t for t in (d.since, f.since if f is not None else None) if t is not None]
        return rows, (time.monotonic() - min(since) if since else None)

    def derived_seq(self) -> tuple[int, int]:
        """(batches deferred so far, how many of the oldest of them are written): a
        reader that has seen batch N's values has its series once the second is >= N."""
        return self._deferred_seq, self._written_seq

    # The hot tables (records, latest, series, roll-ups) are written with driver-level
    # executemany of plain tuples and pre-encoded JSON: SQLAlchemy's per-row parameter
    # processing cost more than SQLite's own work. Same columns, same upsert semantics
    # as the Core statements everywhere else; the SQL is in _hot_sql below.

    def _write_records(self, conn: Connection, records: list[dict]) -> None:
        """Upsert records (idempotent on flow, key, ts) and keep `latest` current."""
        codec = _JsonCodec()
        dumps, small = codec.dumps, codec.small_list
        rows = []
        newest: dict[tuple[str, str], tuple] = {}
        for r in records:
            data = r["data"]
            data_json = dumps(data)
            row = (r["flow"], r["key"], r["ts_ms"], data_json, r["quality"],
                   r.get("anomaly_score", 0.0), bool(r.get("anomalous", False)),
                   small(r["flags"]), small(r["sources"]),
                   codec.contributions(r["contributions"], data, data_json),
                   small(r["raw_ids"]), r.get("version_id"), r["updated_ms"])
            rows.append(row)
            k = (row[0], row[1])
            cur = newest.get(k)
            if cur is None or row[2] >= cur[2]:
                newest[k] = row
        rows.sort(key=_RECORD_ORDER)  # index order: fewer b-tree pages touched (see series)
        conn.exec_driver_sql(self._sql["records"], rows)
        # latest: the newest record per key of this batch, only if newer than the stored one
        conn.exec_driver_sql(self._sql["latest"], [r[:9] + r[12:] for r in newest.values()])

    def _write_series(self, conn: Connection, rows: list[tuple]) -> None:
        # In primary-key order the b-tree is written leaf after leaf instead of jumping
        # between every series for every timestamp: about 2x faster inserts on SQLite.
        # Stable on the key: of two values for one point (a corrected or replayed one),
        # the later batch's is written last and wins.
        rows.sort(key=_SERIES_ORDER)
        if self.dialect == "sqlite":
            # Streaming data only appends: insert without overwriting and count. If every
            # point was new, the roll-ups are exact by adding the batch's own aggregates
            # (no re-read of the series); a replay or a corrected value takes the
            # recompute below. sqlite3 sums executemany's rowcount over all rows.
            new = conn.exec_driver_sql(self._sql["series_new"], rows).rowcount
            if new == len(rows):
                self._add_rollups(conn, rows)
                return
        conn.exec_driver_sql(self._sql["series"], rows)
        self._rollups(conn, rows)

    def _add_rollups(self, conn: Connection, rows: list[tuple]) -> None:
        """Fold points that are all new into their minute and hour buckets."""
        m_w, h_w = s.ROLLUP_1M, s.ROLLUP_1H
        minutes: dict[tuple, list] = {}
        get = minutes.get
        for flow, key, metric, ts, v in rows:  # rows are sorted: runs of one series
            k = (flow, key, metric, ts - ts % m_w)
            a = get(k)
            if a is None:
                minutes[k] = [1, v, v, v]
            else:
                a[0] += 1
                a[1] += v
                if v < a[2]:
                    a[2] = v
                elif v > a[3]:
                    a[3] = v
        hours: dict[tuple, list] = {}
        for (flow, key, metric, b), (n, total, lo, hi) in minutes.items():
            k = (flow, key, metric, b - b % h_w)
            a = hours.get(k)
            if a is None:
                hours[k] = [n, total, lo, hi]
            else:
                a[0] += n
                a[1] += total
                a[2] = min(a[2], lo)
                a[3] = max(a[3], hi)
        conn.exec_driver_sql(self._sql["add_1m"], [k + tuple(a) for k, a in minutes.items()])
        conn.exec_driver_sql(self._sql["add_1h"], [k + tuple(a) for k, a in hours.items()])

    def _rollups(self, conn: Connection, rows: list[tuple]) -> None:
        """Recompute the touched roll-up buckets: idempotent under replays and rewrites.

        Each touched (key, metric, minute) is re-aggregated from the series (an index
        range scan), then each touched hour from its minutes, so the work follows the
        batch, not the size of the table.
        """
        m_w, h_w = s.ROLLUP_1M, s.ROLLUP_1H
        minutes = {(flow, key, metric, ts - ts % m_w) for flow, key, metric, ts, _v in rows}
        conn.exec_driver_sql(self._sql["rollup_1m"], [
            (b, flow, key, metric, b, b + m_w) for flow, key, metric, b in minutes])
        hours = {(flow, key, metric, b - b % h_w) for flow, key, metric, b in minutes}
        conn.exec_driver_sql(self._sql["rollup_1h"], [
            (b, flow, key, metric, b, b + h_w) for flow, key, metric, b in hours])

    def latest(self, flow: str, key: str | None = None) -> list[dict]:
        q = select(s.latest).where(s.latest.c.flow == flow).order_by(s.latest.c.key)
        if key is not None:
            q = q.where(s.latest.c.key == key)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def rebuild_latest(self, flow: str | None = None, key: str | None = None) -> int:
        """Redo the ``latest`` table (a flow's, one key's, or all) from the stored records.

        ``latest`` is a materialised copy kept in step by ``write_batch``; this is the
        operator's "purge L3": the records stay, their newest-per-key copy is rebuilt.
        Returns the number of rows written.
        """
        r, lt = s.records, s.latest
        newest = select(r.c.flow, r.c.key, func.max(r.c.ts_ms).label("ts_ms")).group_by(
            r.c.flow, r.c.key)
        scope_latest = []
        if flow is not None:
            newest = newest.where(r.c.flow == flow)
            scope_latest.append(lt.c.flow == flow)
        if key is not None:
            newest = newest.where(r.c.key == key)
            scope_latest.append(lt.c.key == key)
        newest = newest.subquery()
        cols = ("flow", "key", "ts_ms", "data", "quality", "anomaly_score", "anomalous",
                "flags", "sources", "updated_ms")
        sel = select(*(r.c[c] for c in cols)).join(newest, and_(
            r.c.flow == newest.c.flow, r.c.key == newest.c.key, r.c.ts_ms == newest.c.ts_ms))
        with self.engine.begin() as conn:
            conn.execute(delete(lt).where(*scope_latest))
            res = conn.execute(insert(lt).from_select(list(cols), sel))
            return max(res.rowcount, 0)

    def records_since(self, flow: str, since_ms: int | None = None, *, limit: int | None = None,
                      key: str | None = None) -> Iterable[dict]:
        q = select(s.records).where(s.records.c.flow == flow).order_by(s.records.c.ts_ms,
                                                                       s.records.c.key)
        if since_ms is not None:
            q = q.where(s.records.c.ts_ms >= since_ms)
        if key is not None:
            q = q.where(s.records.c.key == key)
        if limit:
            q = q.limit(limit)
        with self.engine.connect() as conn:
            for row in conn.execution_options(yield_per=1000).execute(q).mappings():
                yield dict(row)

    def get_record(self, record_id: int) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(s.records).where(
                s.records.c.id == record_id)).mappings().first()
        return dict(row) if row else None

    def history(self, flow: str, key: str, metric: str, since_ms: int = 0,
                step_ms: int | None = None, limit: int = 5000) -> list[tuple[int, float]]:
        """A metric's values; with a step of 1m or 1h the roll-up is read instead."""
        if step_ms in s.ROLLUPS:
            t = s.ROLLUPS[step_ms]
            q = (select(t.c.bucket_ms, t.c.sum / t.c.n).where(
                t.c.flow == flow, t.c.key == key, t.c.metric == metric,
                t.c.bucket_ms >= since_ms).order_by(t.c.bucket_ms.desc()).limit(limit))
        else:
            t = s.series
            q = (select(t.c.ts_ms, t.c.value).where(
                t.c.flow == flow, t.c.key == key, t.c.metric == metric,
                t.c.ts_ms >= since_ms).order_by(t.c.ts_ms.desc()).limit(limit))
        with self.engine.connect() as conn:
            rows = [(int(a), float(b)) for a, b in conn.execute(q)]
        rows.reverse()
        return rows

    def recent_values(self, flow: str, metric: str, per_series: int,
                      before_ms: int | None = None) -> dict[str, list[tuple[int, float]]]:
        """The newest values of every key for a metric (to warm up detectors after a restart)."""
        t = s.series
        q = select(t.c.key, t.c.ts_ms, t.c.value).where(t.c.flow == flow, t.c.metric == metric)
        if before_ms is not None:
            q = q.where(t.c.ts_ms < before_ms)
        q = q.order_by(t.c.key, t.c.ts_ms.desc())
        out: dict[str, list] = {}
        with self.engine.connect() as conn:
            for key, ts, value in conn.execute(q):
                lst = out.setdefault(key, [])
                if len(lst) < per_series:
                    lst.append((ts, value))
        for lst in out.values():
            lst.reverse()
        return out

    # ------------------------------------------------------------ quarantine

    def quarantined(self, flow: str | None = None, state: str | None = "open",
                    limit: int = 1000) -> list[dict]:
        q = select(s.quarantine).order_by(s.quarantine.c.id.desc()).limit(limit)
        if flow:
            q = q.where(s.quarantine.c.flow == flow)
        if state:
            q = q.where(s.quarantine.c.state == state)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    # ------------------------------------------------------------ issues

    def _raise_issues(self, conn: Connection, drafts: list[IssueDraft],
                      now_ms: int) -> tuple[list[dict], int]:
        """Open issues, or count more occurrences of the same open ones (by fingerprint).

        Drafts are merged per fingerprint first, then looked up and written in bulk: a
        batch that flags a thousand keys costs a few statements, not a thousand.
        Returns (the issues newly opened, how many open ones were updated).
        """
        if not drafts:
            return [], 0
        t = s.issues
        merged: dict[tuple[str, str], list] = {}
        for d in drafts:
            m = merged.get((d.flow, d.fingerprint))
            if m is None:
                merged[(d.flow, d.fingerprint)] = [d, 1, [list(k) for k in d.record_keys],
                                                   set(d.raw_ids)]
            else:  # the newest draft's title and detail win
                m[0] = d
                m[1] += 1
                m[2].extend(list(k) for k in d.record_keys if list(k) not in m[2])
                m[3].update(d.raw_ids)
        current: dict[tuple[str, str], Any] = {}
        fps = sorted({fp for _, fp in merged})
        for i in range(0, len(fps), 500):
            q = (select(t.c.id, t.c.flow, t.c.fingerprint, t.c.count, t.c.record_ids,
                        t.c.raw_ids, t.c.state, t.c.muted_until_ms)
                 .where(t.c.fingerprint.in_(fps[i:i + 500]),
                        t.c.state.in_(("open", "acknowledged", "muted")))
                 .order_by(t.c.id))
            for row in conn.execute(q):
                current[(row.flow, row.fingerprint)] = row  # the newest wins
        inserts, updates = [], []
        for key, (d, n, rec, raws) in merged.items():
            cur = current.get(key)
            if cur is None:
                inserts.append({
                    "flow": d.flow, "kind": d.kind, "severity": d.severity, "state": "open",
                    "title": d.title, "detail": d.detail, "fingerprint": d.fingerprint,
                    "key": d.key, "source": d.source, "count": n, "first_ms": now_ms,
                    "last_ms": now_ms, "updated_ms": now_ms, "record_ids": rec[-200:],
                    "raw_ids": sorted(raws)[-200:], "muted_until_ms": None, "actor": None})
                continue
            expired = (cur.state == "muted" and cur.muted_until_ms is not None
                       and cur.muted_until_ms <= now_ms)
            old = list(cur.record_ids)
            updates.append({
                "_id": cur.id, "_count": cur.count + n, "_detail": d.detail,
                "_record_ids": (old + [r for r in rec if r not in old])[-200:],
                "_raw_ids": sorted(set(cur.raw_ids) | raws)[-200:],
                "_severity": d.severity, "_title": d.title,
                "_state": "open" if expired else cur.state})
        if inserts:
            conn.execute(insert(t), inserts)
        if updates:
            conn.execute(update(t).where(t.c.id == bindparam("_id")).values(
                count=bindparam("_count"), last_ms=now_ms, updated_ms=now_ms,
                detail=bindparam("_detail"), record_ids=bindparam("_record_ids"),
                raw_ids=bindparam("_raw_ids"), severity=bindparam("_severity"),
                title=bindparam("_title"), state=bindparam("_state")), updates)
        return inserts, len(updates)

    def raise_issues(self, drafts: list[IssueDraft], now_ms: int) -> tuple[list[dict], int]:
        with self.engine.begin() as conn:
            return self._raise_issues(conn, drafts, now_ms)

    def issues(self, *, flow: str | None = None, state: str | Sequence[str] | None = None,
               limit: int = 500) -> list[dict]:
        q = select(s.issues).order_by(s.issues.c.last_ms.desc(), s.issues.c.id.desc()).limit(limit)
        if flow:
            q = q.where(s.issues.c.flow == flow)
        if isinstance(state, str):
            q = q.where(s.issues.c.state == state)
        elif state:
            q = q.where(s.issues.c.state.in_(tuple(state)))
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def get_issue(self, issue_id: int) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(s.issues).where(s.issues.c.id == issue_id)).mappings().first()
        return dict(row) if row else None

    def set_issue_state(self, issue_id: int, state: str, actor: str, now_ms: int,
                        muted_until_ms: int | None = None) -> dict | None:
        with self.engine.begin() as conn:
            res = conn.execute(update(s.issues).where(s.issues.c.id == issue_id).values(
                state=state, actor=actor, updated_ms=now_ms, muted_until_ms=muted_until_ms))
            if res.rowcount == 0:
                return None
        return self.get_issue(issue_id)

    def resolve_by_fingerprint(self, flow: str, fingerprint: str, actor: str,
                               now_ms: int) -> int:
        """Resolve the open occurrences of an issue whose condition has cleared."""
        t = s.issues
        with self.engine.begin() as conn:
            res = conn.execute(update(t).where(
                t.c.flow == flow, t.c.fingerprint == fingerprint,
                t.c.state.in_(("open", "acknowledged"))).values(
                state="resolved", actor=actor, updated_ms=now_ms))
            return res.rowcount

    def auto_resolve(self, flow: str, kinds: Sequence[str], quiet_since_ms: int,
                     now_ms: int) -> list[dict]:
        """Resolve the open issues of these kinds that have not recurred since a time."""
        t = s.issues
        cond = (t.c.flow == flow, t.c.kind.in_(tuple(kinds)),
                t.c.state.in_(("open", "acknowledged")), t.c.last_ms < quiet_since_ms)
        with self.engine.begin() as conn:
            rows = [dict(r) for r in conn.execute(select(t.c.id, t.c.title, t.c.kind)
                                                  .where(*cond)).mappings()]
            if rows:
                conn.execute(update(t).where(t.c.id.in_([r["id"] for r in rows])).values(
                    state="resolved", actor="auto", updated_ms=now_ms))
        return rows

    def open_issue_counts(self) -> dict[tuple[str, str], int]:
        t = s.issues
        q = (select(t.c.flow, t.c.severity, func.count()).where(
            t.c.state.in_(("open", "acknowledged"))).group_by(t.c.flow, t.c.severity))
        with self.engine.connect() as conn:
            return {(f, sev): n for f, sev, n in conn.execute(q)}

    # ------------------------------------------------------------ recovery actions

    def add_action(self, *, ts_ms: int, action: str, actor: str, reason: str, outcome: str,
                   flow: str | None = None, source: str | None = None,
                   duration_ms: float | None = None, detail: dict | None = None) -> int:
        with self.engine.begin() as conn:
            res = conn.execute(insert(s.actions).values(
                ts_ms=ts_ms, flow=flow, source=source, action=action, actor=actor, reason=reason,
                outcome=outcome, duration_ms=duration_ms, detail=detail))
            return res.inserted_primary_key[0]

    def actions(self, flow: str | None = None, limit: int = 200) -> list[dict]:
        q = select(s.actions).order_by(s.actions.c.id.desc()).limit(limit)
        if flow:
            q = q.where(s.actions.c.flow == flow)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    # ------------------------------------------------------------ source state

    def save_source_state(self, flow: str, source: str, state: dict, now_ms: int) -> None:
        with self.engine.begin() as conn:
            self._upsert(conn, s.source_state, [{"flow": flow, "source": source, "state": state,
                                                 "updated_ms": now_ms}],
                         ("flow", "source"), ("state", "updated_ms"))

    def source_states(self, flow: str | None = None) -> dict[tuple[str, str], dict]:
        q = select(s.source_state)
        if flow:
            q = q.where(s.source_state.c.flow == flow)
        with self.engine.connect() as conn:
            return {(r.flow, r.source): r.state for r in conn.execute(q)}

    # ------------------------------------------------------------ maintenance

    def purge_flow(self, flow: str) -> None:
        """Remove a flow's derived data (records, series, latest); raw payloads are kept."""
        self.flush_derived()
        with self.engine.begin() as conn:
            for t in (s.records, s.latest, s.series, s.series_1m, s.series_1h):
                conn.execute(delete(t).where(t.c.flow == flow))
            conn.execute(delete(s.raw_status).where(s.raw_status.c.raw_id.in_(
                select(s.raw_payloads.c.id).where(s.raw_payloads.c.flow == flow))))


def _hot_sql(dialect: str) -> dict[str, str]:
    """Driver SQL for the hot tables (see Store._write_records), per dialect's paramstyle."""
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
        return (f'INSERT INTO {q(table)} ("flow", "key", "metric", "bucket_ms", "n", "sum", '
                f'"min", "max") SELECT "flow", "key", "metric", {ph}, {n}, {total}, {lo}, {hi} '
                f'FROM {q(source)} WHERE "flow" = {ph} AND "key" = {ph} AND "metric" = {ph} '
                f'AND {q(ts)} >= {ph} AND {q(ts)} < {ph} GROUP BY "flow", "key", "metric" '
                'ON CONFLICT ("flow", "key", "metric", "bucket_ms") DO UPDATE SET '
                '"n" = excluded."n", "sum" = excluded."sum", "min" = excluded."min", '
                '"max" = excluded."max"')

    def add(table: str) -> str:  # SQLite only (two-argument min/max)
        return (f'INSERT INTO {q(table)} ("flow", "key", "metric", "bucket_ms", "n", "sum", '
                '"min", "max") VALUES (?, ?, ?, ?, ?, ?, ?, ?) '
                'ON CONFLICT ("flow", "key", "metric", "bucket_ms") DO UPDATE SET '
                f'"n" = {q(table)}."n" + excluded."n", "sum" = {q(table)}."sum" + excluded."sum", '
                f'"min" = min({q(table)}."min", excluded."min"), '
                f'"max" = max({q(table)}."max", excluded."max")')

    raw_cols = ("flow", "source", "fetched_ms", "content_hash", "content_type", "status_code",
                "size", "truncated", "body", "run_id")
    return {
        "raw_insert": (f'INSERT INTO "raw_payloads" ({", ".join(map(q, raw_cols))}) '
                       f'VALUES ({", ".join([ph] * len(raw_cols))}) '
                       'ON CONFLICT ("flow", "source", "content_hash") DO NOTHING RETURNING "id"'),
        "raw_find": ('SELECT "id" FROM "raw_payloads" '
                     f'WHERE "flow" = {ph} AND "source" = {ph} AND "content_hash" = {ph}'),
        "contributions": ('SELECT "key", "ts_ms", "contributions" FROM "records" '
                          f'WHERE "flow" = {ph} AND "ts_ms" >= {ph} AND "ts_ms" <= {ph}'),
        "records": upsert("records", RECORD_COLS, ("flow", "key", "ts_ms")),
        "latest": upsert("latest", LATEST_COLS, ("flow", "key"),
                         ' WHERE excluded."ts_ms" >= "latest"."ts_ms"'),
        "raw_status": upsert("raw_status", RAW_STATUS_COLS, ("raw_id",)),
        "series": upsert("series", SERIES_COLS, ("flow", "key", "metric", "ts_ms")),
        "series_new": (f'INSERT INTO "series" ({", ".join(map(q, SERIES_COLS))}) '
                       f'VALUES ({values(SERIES_COLS)}) ON CONFLICT DO NOTHING'),
        "add_1m": add("series_1m"),
        "add_1h": add("series_1h"),
        "rollup_1m": rollup("series_1m", "series", "count(*)", 'sum("value")', 'min("value")',
                            'max("value")', "ts_ms"),
        "rollup_1h": rollup("series_1h", "series_1m", 'sum("n")', 'sum("sum")', 'min("min")',
                            'max("max")', "bucket_ms"),
    }


def stats_summary(store: Store, flow: str) -> dict[str, int]:
    with store.engine.connect() as conn:
        def n(t, *conds):
            return conn.execute(select(func.count()).select_from(t).where(and_(*conds))).scalar_one()
        return {
            "raw": n(s.raw_payloads, s.raw_payloads.c.flow == flow),
            "records": n(s.records, s.records.c.flow == flow),
            "quarantine": n(s.quarantine, s.quarantine.c.flow == flow,
                            s.quarantine.c.state == "open"),
            "issues_open": n(s.issues, s.issues.c.flow == flow, s.issues.c.state == "open"),
        }
