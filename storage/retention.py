"""Retention: deleting old rows in small steps, what must stay, reclaiming space, and the
database's statistics.

Every table is one small function (``_records``, ``_series``, ``_raw``, ...): what it keeps
and how it walks its rows. Each call of :meth:`Retention.step` deletes at most ``limit``
rows of one table for one flow in one short transaction and returns where it got to (a
cursor over the table's time order), so the caller (``pipeline/engine/retention.py``)
interleaves it with the engine's writes and the writer never waits longer than one step.

What stays, whatever its age:

- raw payloads not processed yet (no raw status: pending, or a deferred batch still owes
  it), payloads a quarantined item still points at, payloads an open issue names, and,
  with ``keep_lineage``, payloads a kept record may name (see ``raw_cutoff``);
- records an open issue names (by key and time);
- records with a series point (a numeric value of a metric ``series_keys`` names for
  their key) whose minute roll-up is not written, and minute roll-ups whose hour roll-up
  is not written ("roll-ups complete before their raw points go"); the cutoffs of
  roll-ups are also rounded down to a whole hour, so a bucket is never cut;
- quarantined items an open issue names; runs still running.

Open issues (open, acknowledged, muted) are few; what they name is read once per pass
(:func:`protected`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, delete, exists, func, not_, or_, select, tuple_, update
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from flowdeck.storage import schema as s
from flowdeck.storage.blocks import decode, hour_of, is_point
from flowdeck.storage.db import sqlite_file

HOUR_MS = s.ROLLUP_1H
OPEN_STATES = ("open", "acknowledged", "muted")

# The kinds of row retention deletes, in the order a pass visits them (quarantine before
# raw: a quarantined item holds its payload), and the column that dates each. Series
# points are the records' values (migration 0006): they go with their records, and the
# "series" kind deletes nothing of its own (it stays a kind so that configurations and
# pass reports that name it keep working; docs/operations.md).
KINDS = ("records", "series", "series_1m", "series_1h", "quarantine", "raw", "issues_resolved",
         "actions", "runs")
TABLE_OF = {"records": s.record_blocks, "series": s.record_blocks, "series_1m": s.series_1m,
            "series_1h": s.series_1h, "quarantine": s.quarantine, "raw": s.raw_payloads,
            "issues_resolved": s.issues, "actions": s.actions, "runs": s.runs}
TIME_COLUMN = {"raw_payloads": "fetched_ms", "raw_status": "processed_ms", "records": "first_ms",
               "latest": "ts_ms", "series_1m": "bucket_ms",
               "series_1h": "bucket_ms", "quarantine": "created_ms", "issues": "updated_ms",
               "actions": "ts_ms", "runs": "started_ms", "pipeline_versions": "created_ms",
               "source_state": "updated_ms"}
TABLE_NAME = {"records": "record_blocks"}  # the table holding them, where not the name


@dataclass
class Protected:
    """What open issues name, read once per pass."""

    raw_ids: set[int] = field(default_factory=set)
    record_keys: dict[str, set[tuple[str, int]]] = field(default_factory=dict)  # per flow


@dataclass
class Scope:
    """Whose rows a step deletes: one flow, or (``flow=None``) every flow not in
    ``configured`` (removed from the config) plus rows of no flow, at the global values."""

    flow: str | None
    configured: tuple[str, ...] = ()

    def where(self, table) -> ColumnElement[bool]:
        col = table.c.flow
        if self.flow is not None:
            return col == self.flow
        if not self.configured:
            return or_(col.is_(None), col.is_not(None))
        return or_(col.is_(None), col.not_in(self.configured))


Cursor = tuple | None  # the last (time, tie-breaker...) a step walked past; None: from the start


def protected(conn: Connection) -> Protected:
    p = Protected()
    t = s.issues
    rows = conn.execute(select(t.c.flow, t.c.record_ids, t.c.raw_ids)
                        .where(t.c.state.in_(OPEN_STATES)))
    for flow, record_ids, raw_ids in rows:
        p.raw_ids.update(int(r) for r in raw_ids or [])
        keys = p.record_keys.setdefault(flow, set())
        for pair in record_ids or []:
            if isinstance(pair, list | tuple) and len(pair) == 2:
                keys.add((str(pair[0]), int(pair[1])))
    return p


class Retention:
    """Retention steps, vacuum and statistics over one store (``store.engine``)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.engine = store.engine
        self.dialect = self.engine.dialect.name

    def protected(self) -> Protected:
        with self.engine.connect() as conn:
            return protected(conn)

    def step(self, kind: str, scope: Scope, cutoff_ms: int, cursor: Cursor, limit: int,
             keep: Protected) -> tuple[int, Cursor]:
        """Delete at most ``limit`` rows of ``kind`` older than ``cutoff_ms`` (one
        transaction). Returns (rows deleted, the cursor to continue from, None when the
        kind is done for this pass)."""
        fn = _STEPS[kind]
        with self.engine.begin() as conn:
            return fn(conn, scope, cutoff_ms, cursor, limit, keep)

    # ------------------------------------------------------------ space

    def vacuum(self, pages: int, tables: Iterable[str] = ()) -> dict:
        """Give space back: SQLite ``PRAGMA incremental_vacuum(pages)`` (when the file is
        in auto_vacuum=INCREMENTAL mode), PostgreSQL plain ``VACUUM (ANALYZE)`` of the
        tables a pass deleted from (no exclusive lock; the space is reused, not returned).
        """
        if self.dialect == "sqlite":
            with self.engine.connect() as conn:
                mode = conn.exec_driver_sql("PRAGMA auto_vacuum").scalar()
                before = conn.exec_driver_sql("PRAGMA freelist_count").scalar() or 0
                if mode != 2 or pages <= 0:
                    return {"mode": _AUTO_VACUUM.get(mode, str(mode)), "freed_pages": 0,
                            "free_pages": before, "wal_truncated": _truncate_wal(conn)}
                # sqlite3's execute() steps this pragma once, which frees one page;
                # executescript() runs it to the end (and commits nothing of ours: the
                # connection is between transactions here).
                conn.commit()
                raw = conn.connection.driver_connection
                raw.executescript(f"PRAGMA incremental_vacuum({int(pages)});")
                after = conn.exec_driver_sql("PRAGMA freelist_count").scalar() or 0
                truncated = _truncate_wal(conn)
            return {"mode": "incremental", "freed_pages": before - after, "free_pages": after,
                    "wal_truncated": truncated}
        names = sorted(set(tables))
        if names:
            with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                for name in names:
                    conn.exec_driver_sql(f'VACUUM (ANALYZE) "{s.metadata.tables[name].name}"')
        return {"mode": "vacuum", "tables": names}

    def full_vacuum(self) -> dict:
        """SQLite: switch the file to auto_vacuum=INCREMENTAL and rewrite it (``VACUUM``:
        needs the daemon stopped, as much free disk as the file, and takes a while).
        A database created by this flowdeck is in that mode from the start."""
        if self.dialect != "sqlite":
            raise ValueError("flowdeck db vacuum is for SQLite; PostgreSQL: autovacuum and "
                             "the retention pass's plain VACUUM reuse the space")
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            before = self._sqlite_bytes(conn)
            conn.exec_driver_sql("PRAGMA auto_vacuum=INCREMENTAL")
            conn.exec_driver_sql("VACUUM")
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            mode = conn.exec_driver_sql("PRAGMA auto_vacuum").scalar()
            after = self._sqlite_bytes(conn)
        return {"mode": _AUTO_VACUUM.get(mode, str(mode)), "bytes_before": before,
                "bytes_after": after}

    # ------------------------------------------------------------ statistics

    def stats(self) -> dict:
        """Database size, and rows and oldest time (epoch ms) per table."""
        tables: dict[str, dict] = {}
        with self.engine.connect() as conn:
            for name, col in TIME_COLUMN.items():
                t = s.metadata.tables[TABLE_NAME.get(name, name)]
                count = (func.coalesce(func.sum(t.c.n), 0) if t is s.record_blocks
                         else func.count())  # records: those the blocks hold
                rows, oldest = conn.execute(select(count, func.min(t.c[col]))
                                            .select_from(t)).one()
                tables[name] = {"rows": int(rows), "oldest_ms": oldest}
            if self.dialect == "sqlite":
                size = self._sqlite_bytes(conn)
                mode = conn.exec_driver_sql("PRAGMA auto_vacuum").scalar()
                free = (conn.exec_driver_sql("PRAGMA freelist_count").scalar() or 0) * \
                    (conn.exec_driver_sql("PRAGMA page_size").scalar() or 0)
                extra = {"auto_vacuum": _AUTO_VACUUM.get(mode, str(mode)), "free_bytes": free}
            else:
                size = conn.exec_driver_sql(
                    "SELECT pg_database_size(current_database())").scalar()
                for name in tables:
                    tables[name]["bytes"] = conn.exec_driver_sql(
                        f"SELECT pg_total_relation_size('{TABLE_NAME.get(name, name)}')"
                    ).scalar()
                extra = {}
        return {"backend": self.dialect, "size_bytes": int(size or 0), "tables": tables, **extra}

    def _sqlite_bytes(self, conn: Connection) -> int:
        """The database file and its WAL, on disk."""
        path = sqlite_file(self.engine)
        if path is None:
            pages = conn.exec_driver_sql("PRAGMA page_count").scalar() or 0
            return int(pages * (conn.exec_driver_sql("PRAGMA page_size").scalar() or 0))
        return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))


_AUTO_VACUUM = {0: "none", 1: "full", 2: "incremental"}


def _truncate_wal(conn: Connection) -> bool:
    """Give the WAL's space back too: a WAL file keeps its high-water mark (SQLite reuses
    it rather than shrinking it), so after a busy spell it stays as large as the most
    frames it ever held. ``wal_checkpoint(TRUNCATE)`` with no busy wait: done if no
    reader holds an old snapshot right now (this runs on the engine's one writer
    thread, so no write is in progress), else nothing waits and the next pass tries
    again. True if the WAL was checkpointed and truncated."""
    busy_ms = conn.exec_driver_sql("PRAGMA busy_timeout").scalar()
    conn.exec_driver_sql("PRAGMA busy_timeout=0")
    try:
        row = conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        conn.exec_driver_sql(f"PRAGMA busy_timeout={int(busy_ms or 0)}")
    return row is not None and row[0] == 0


# ---------------------------------------------------------------- the walk


def _walk(conn: Connection, table, order: list, ident: list, where: list, cursor: Cursor,
          limit: int) -> tuple[list, Cursor]:
    """The next ``limit`` rows matching ``where`` after ``cursor`` in ``order`` (an index
    order): (rows of the ``ident`` columns + order columns, the new cursor or None)."""
    conds = list(where)
    if cursor is not None:
        conds.append(tuple_(*order) > tuple_(*cursor))
    cols = [*ident, *order]
    rows = list(conn.execute(select(*cols).where(and_(*conds)).order_by(*order).limit(limit)))
    if len(rows) < limit:
        return rows, None
    last = rows[-1]
    return rows, tuple(last[len(ident):])


def _delete_by(conn: Connection, table, cols: list, values: list[tuple]) -> int:
    """Delete rows whose one key column (``cols[0]``) is among ``values``, a few hundred
    per statement."""
    n = 0
    col = cols[0]
    for i in range(0, len(values), 400):
        n += conn.execute(delete(table).where(col.in_([v[0] for v in values[i:i + 400]]))
                          ).rowcount or 0
    return n


Step = Callable[[Connection, Scope, int, Cursor, int, Protected], tuple[int, Cursor]]


def _series_ids(scope: Scope):
    """The series ids whose rows a step of this scope walks (``series_keys`` names them)."""
    k = s.series_keys
    return select(k.c.id).where(scope.where(k)).scalar_subquery()


def _delete_pk(conn: Connection, t, time_col, rows: list) -> int:
    """Delete series/roll-up rows walked in (sid, time) order."""
    # Per series, ``sid = ? AND time IN (...)``: a primary-key search (a row-value IN list
    # is a full scan on SQLite).
    groups: dict[int, list] = {}
    for r in rows:
        groups.setdefault(r.sid, []).append(r[-1])
    n = 0
    for sid, times in groups.items():
        for i in range(0, len(times), 400):
            n += conn.execute(delete(t).where(t.c.sid == sid,
                                              time_col.in_(times[i:i + 400]))).rowcount or 0
    return n


def _records(conn, scope, cutoff, cursor, limit, keep) -> tuple[int, Cursor]:
    """Records, and with them their series points, once those are rolled up: a record
    older than the cutoff goes unless an open issue names it or one of its series
    points (a finite number under a metric ``series_keys`` names for its key) has no
    minute roll-up yet. Walks the record blocks in time order, at most ``limit`` records
    a step; a block all of whose records go is deleted, one with some left rewritten
    with those positions emptied (record ids stay; ``flowdeck.storage.blocks``)."""
    b, k, m = s.record_blocks, s.series_keys, s.series_1m
    conds = [scope.where(b), b.c.first_ms < cutoff]
    if cursor is not None:
        conds.append(tuple_(b.c.first_ms, b.c.id) > tuple_(*cursor))
    blocks = conn.execute(select(b.c.id, b.c.flow, b.c.key, b.c.first_ms).where(and_(*conds))
                          .order_by(b.c.first_ms, b.c.id).limit(limit)).all()
    series: dict[tuple[str, str], dict[str, int]] = {}
    deleted = 0
    nxt: Cursor = None
    drop, rewrite = [], []
    for bid, flow, key, first in blocks:
        body = decode(conn.execute(select(b.c.body).where(b.c.id == bid)).scalar_one())
        sids = series.get((flow, key))
        if sids is None:
            sids = series[(flow, key)] = dict(conn.execute(select(k.c.metric, k.c.id).where(
                k.c.flow == flow, k.c.key == key)).all())
        hour = hour_of(first)
        rolled = set(conn.execute(select(m.c.sid, m.c.bucket_ms).where(
            m.c.sid.in_(list(sids.values())), m.c.bucket_ms >= hour,
            m.c.bucket_ms < hour + HOUR_MS)).all()) if sids else set()
        kept = keep.record_keys.get(flow, ())
        live, going = 0, []
        for pos, ts in enumerate(body["ts_ms"]):
            if ts is None:
                continue
            live += 1
            data = body["data"][pos]
            if (ts < cutoff and (key, ts) not in kept
                    and all((sid, ts - ts % 60000) in rolled for metric, sid in sids.items()
                            if type(data) is dict and is_point(data.get(metric)))):
                going.append(pos)
        take = going[:limit - deleted]
        for pos in take:
            for col in body.values():
                col[pos] = None
        if take and len(take) == live:
            drop.append((bid,))
        elif take:
            rewrite.append({"id": bid, "n": live - len(take), "body": body})
        deleted += len(take)
        if len(take) < len(going):  # at most ``limit`` a step: this block again next
            nxt = (first, bid - 1)
            break
        nxt = (first, bid)
        if deleted >= limit:
            break
    else:
        if len(blocks) < limit:
            nxt = None
    _delete_by(conn, b, [b.c.id], drop)
    for row in rewrite:
        conn.execute(update(b).where(b.c.id == row["id"]).values(n=row["n"], body=row["body"]))
    return deleted, nxt


def _series(conn, scope, cutoff, cursor, limit, keep) -> tuple[int, Cursor]:
    """Series points are the records' values: they go with their records (``_records``)."""
    return 0, None


def _minutes(conn, scope, cutoff, cursor, limit, keep) -> tuple[int, Cursor]:
    t, h = s.series_1m, s.series_1h
    cutoff -= cutoff % HOUR_MS
    rolled = exists().where(h.c.sid == t.c.sid,
                            h.c.bucket_ms == t.c.bucket_ms - t.c.bucket_ms % HOUR_MS)
    rows, nxt = _walk(conn, t, [t.c.sid, t.c.bucket_ms], [],
                      [t.c.sid.in_(_series_ids(scope)), t.c.bucket_ms < cutoff, rolled],
                      cursor, limit)
    return _delete_pk(conn, t, t.c.bucket_ms, rows), nxt


def _hours(conn, scope, cutoff, cursor, limit, keep) -> tuple[int, Cursor]:
    t = s.series_1h
    cutoff -= cutoff % HOUR_MS
    rows, nxt = _walk(conn, t, [t.c.sid, t.c.bucket_ms], [],
                      [t.c.sid.in_(_series_ids(scope)), t.c.bucket_ms < cutoff],
                      cursor, limit)
    return _delete_pk(conn, t, t.c.bucket_ms, rows), nxt


def _quarantine(conn, scope, cutoff, cursor, limit, keep) -> tuple[int, Cursor]:
    t = s.quarantine
    rows, nxt = _walk(conn, t, [t.c.created_ms, t.c.id], [t.c.raw_id],
                      [scope.where(t), t.c.created_ms < cutoff], cursor, limit)
    ids = [(r.id,) for r in rows if r.raw_id not in keep.raw_ids]
    return _delete_by(conn, t, [t.c.id], ids), nxt


def _raw(conn, scope, cutoff, cursor, limit, keep) -> tuple[int, Cursor]:
    t, st, q = s.raw_payloads, s.raw_status, s.quarantine
    processed = exists().where(st.c.raw_id == t.c.id)
    quarantined = exists().where(q.c.raw_id == t.c.id)
    rows, nxt = _walk(conn, t, [t.c.fetched_ms, t.c.id], [],
                      [scope.where(t), t.c.fetched_ms < cutoff, processed, not_(quarantined)],
                      cursor, limit)
    ids = [(r.id,) for r in rows if r.id not in keep.raw_ids]
    _delete_by(conn, st, [st.c.raw_id], ids)  # its processing state goes with it
    return _delete_by(conn, t, [t.c.id], ids), nxt


def _issues(conn, scope, cutoff, cursor, limit, keep) -> tuple[int, Cursor]:
    t = s.issues
    rows, nxt = _walk(conn, t, [t.c.updated_ms, t.c.id], [],
                      [scope.where(t), t.c.state == "resolved", t.c.updated_ms < cutoff],
                      cursor, limit)
    return _delete_by(conn, t, [t.c.id], [(r.id,) for r in rows]), nxt


def _actions(conn, scope, cutoff, cursor, limit, keep) -> tuple[int, Cursor]:
    t = s.actions
    rows, nxt = _walk(conn, t, [t.c.ts_ms, t.c.id], [], [scope.where(t), t.c.ts_ms < cutoff],
                      cursor, limit)
    return _delete_by(conn, t, [t.c.id], [(r.id,) for r in rows]), nxt


def _runs(conn, scope, cutoff, cursor, limit, keep) -> tuple[int, Cursor]:
    t = s.runs
    rows, nxt = _walk(conn, t, [t.c.started_ms, t.c.id], [],
                      [scope.where(t), t.c.started_ms < cutoff, t.c.finished_ms.is_not(None)],
                      cursor, limit)
    return _delete_by(conn, t, [t.c.id], [(r.id,) for r in rows]), nxt


_STEPS: dict[str, Step] = {"records": _records, "series": _series, "series_1m": _minutes,
                           "series_1h": _hours, "quarantine": _quarantine, "raw": _raw,
                           "issues_resolved": _issues, "actions": _actions, "runs": _runs}


def raw_cutoff(now_ms: int, keep: dict[str, float | None], keep_lineage: bool,
               max_future_s: float | None) -> int | None:
    """The time before which a flow's raw payloads may go (None: never).

    A record's timestamp is at most ``max_future`` after the fetch that brought it (collect
    rejects later ones), so a payload fetched before ``records cutoff - max_future`` is
    named by no kept record: with ``keep_lineage`` raw payloads go at the later of the two
    cutoffs, and every kept record's lineage still finds its payloads."""
    raw = keep.get("raw")
    if raw is None:
        return None
    cutoff = now_ms - int(raw * 1000)
    if keep_lineage:
        records = keep.get("records")
        if records is None or max_future_s is None:  # no bound on how far ahead a record is
            return None
        cutoff = min(cutoff, now_ms - int(records * 1000) - int(max_future_s * 1000))
    return cutoff


def cutoff_for(kind: str, now_ms: int, keep: dict[str, float | None]) -> int | None:
    seconds = keep.get(kind)
    return None if seconds is None else now_ms - int(seconds * 1000)


def last_pass(store: Any) -> dict | None:
    """The newest retention pass recorded (an action ``retention``): when, and its detail."""
    t = s.actions
    with store.engine.connect() as conn:
        row = conn.execute(select(t).where(t.c.action == "retention").order_by(t.c.id.desc())
                           .limit(1)).mappings().first()
    return dict(row) if row else None
