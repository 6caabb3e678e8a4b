"""The store: one database, SQLite or PostgreSQL, and every read and write the engine
and the CLI make of it.

SQLAlchemy Core, parameterised statements, batched ``executemany`` on the hot path.
Methods are synchronous; the engine calls them from one worker thread so the event loop
never blocks on the database.

``Store`` is composed of one repository per concern, each a mixin in its own module:

    runs.py      Runs           pipeline versions, runs
    raw.py       RawPayloads    raw payloads, pending / processed
    records.py   Records        records, latest, history, recent values, contributions
    derived.py   DerivedSeries  series, roll-ups, what deferred batches owe (flush_*)
    issues.py    Issues         quarantine, issues, recovery actions, source state

over ``repository.Repository`` (the engine, the dialect, the upsert) and ``codec`` (the
hot tables' driver SQL and JSON text). This module keeps what spans them: opening and
closing the database, ``ping``, the WAL checkpointer, ``write_batch`` (one batch writes
records, bookkeeping and derived data in one or two transactions) and ``purge_flow``.

Why mixins, not repository objects that ``Store`` delegates to: the repositories share
one engine, one lock and one transaction per batch, and callers use ``store.start_run``,
``store.write_batch``, ... as before. With mixins each method is written once, in the
module of its concern, and ``Store`` is the list of concerns it is made of; delegation
would restate some fifty signatures here (and let them drift), and repository objects
passing the engine and the owed-series state to each other would hide what is shared.
What is shared is declared on ``Repository`` (and the owed state on ``DerivedSeries``).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from typing import Any

from sqlalchemy import and_, delete, func, select
from sqlalchemy.engine import Connection, Engine

from flowdeck.storage import schema as s
from flowdeck.storage.blocks import block_sql
from flowdeck.storage.codec import RAW_STATUS_COLS, hot_sql
from flowdeck.storage.crashpoints import crash_point
from flowdeck.storage.db import WalCheckpointer, check_schema, make_engine, sqlite_file
from flowdeck.storage.derived import DerivedSeries, fold_points, fold_records
from flowdeck.storage.issues import Issues
from flowdeck.storage.model import BatchWrite
from flowdeck.storage.raw import RawPayloads
from flowdeck.storage.records import Records
from flowdeck.storage.runs import Runs

log = logging.getLogger(__name__)
_TUPLE = frozenset({tuple})


class Store(Runs, RawPayloads, Records, DerivedSeries, Issues):
    """One database, SQLite or PostgreSQL, through the same code."""

    def __init__(self, url: str, *, engine: Engine | None = None, create_if_empty: bool = True,
                 check: bool = True, busy_timeout: float = 30.0) -> None:
        self.url = url
        self.engine = engine or make_engine(url, busy_timeout)
        self.dialect = self.engine.dialect.name
        if check:
            check_schema(self.engine, create_if_empty=create_if_empty)
        self._sql = hot_sql(self.dialect) | block_sql(self.dialect)
        self._upserts: dict[tuple, Any] = {}
        self._wal_file = sqlite_file(self.engine)
        self._checkpointer: WalCheckpointer | None = None
        self._init_derived()

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

    def ping(self) -> bool:
        with self.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        return True

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
        # Were all records new, with no roll-up recomputed meanwhile from the records
        # (which would count them already)? Then their points are added to the roll-ups.
        recomputes = self._recomputes
        new = True
        if early:
            with self.engine.begin() as conn:
                new = self._write_records(conn, batch.records)
                crash_point("mid_records_upsert")
            crash_point("after_records_commit")
            stored()
        # the batch's points folded into (flow, key, metric, minute) -> [n, sum, min, max]
        points = batch.series
        folded: dict[tuple, list] = {}
        if batch.metrics:
            fold_records(batch.records, batch.metrics, folded)
        fold_points(list(points) if set(map(type, points)) <= _TUPLE  # type: ignore[arg-type]
              else [p if type(p) is tuple else (p["flow"], p["key"], p["metric"], p["ts_ms"],
                                                float(p["value"])) for p in points], folded)
        minutes = list(folded.items())
        n_points = sum(a[0] for a in folded.values())
        raw_status = [tuple(r[c] for c in RAW_STATUS_COLS) for r in batch.raw_status]
        if defer and early:
            if batch.quarantine or batch.replayed or batch.issues:
                with self.engine.begin() as conn:
                    self._write_bookkeeping(conn, batch, now_ms, counts)
            self._defer(minutes, n_points, raw_status, new and self._recomputes == recomputes)
            return counts

        def write(conn: Connection) -> bool:
            fresh = True
            if batch.records and not early:
                fresh = self._write_records(conn, batch.records)
            self._write_bookkeeping(conn, batch, now_ms, counts)
            return fresh

        # what is owed first, raw status last
        self._write_with_owed(write, minutes, raw_status,
                              new and self._recomputes == recomputes)
        return counts

    def count(self, table: str, **where: Any) -> int:
        """Rows of a table where columns equal values; of "records", the records the
        record blocks hold (by flow or key)."""
        if table == "records":
            t = s.record_blocks
            q = select(func.coalesce(func.sum(t.c.n), 0))
        else:
            t = s.metadata.tables[table]
            q = select(func.count()).select_from(t)
        for k, v in where.items():
            q = q.where(t.c[k] == v)
        with self.engine.connect() as conn:
            return conn.execute(q).scalar_one()

    # ------------------------------------------------------------ maintenance

    def purge_flow(self, flow: str) -> None:
        """Remove a flow's derived data (records and so their series points, roll-ups,
        latest); raw payloads are kept."""
        self.flush_derived()
        with self._derived_lock, self.engine.begin() as conn:
            sids = select(s.series_keys.c.id).where(s.series_keys.c.flow == flow)
            for t in (s.series_1m, s.series_1h):
                conn.execute(delete(t).where(t.c.sid.in_(sids)))
            for t in (s.record_blocks, s.latest, s.series_keys):
                conn.execute(delete(t).where(t.c.flow == flow))
            self._sids.clear()  # those series ids are gone
            conn.execute(delete(s.raw_status).where(s.raw_status.c.raw_id.in_(
                select(s.raw_payloads.c.id).where(s.raw_payloads.c.flow == flow))))


def stats_summary(store: Store, flow: str) -> dict[str, int]:
    with store.engine.connect() as conn:
        def n(t, *conds):
            return conn.execute(select(func.count()).select_from(t).where(and_(*conds))).scalar_one()
        return {
            "raw": n(s.raw_payloads, s.raw_payloads.c.flow == flow),
            "records": store.count("records", flow=flow),
            "quarantine": n(s.quarantine, s.quarantine.c.flow == flow,
                            s.quarantine.c.state == "open"),
            "issues_open": n(s.issues, s.issues.c.flow == flow, s.issues.c.state == "open"),
        }
