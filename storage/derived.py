"""Derived data: series points and their minute/hour roll-ups, and what deferred
batches still owe the store (their series and raw status, ``Store.write_batch(defer=True)``).

The owed state (``_Derived``, then ``_Flush`` while it is written in steps) is this
repository's own; the engine drives it only through ``flush_step``, ``flush_derived``,
``derived_owed`` and ``derived_seq``.
"""

from __future__ import annotations

import logging
import operator
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from itertools import groupby
from typing import Any

from sqlalchemy.engine import Connection

from flowdeck.storage import schema as s
from flowdeck.storage.blocks import points_of
from flowdeck.storage.crashpoints import crash_point
from flowdeck.storage.repository import Repository

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
        # (folded minutes: ((flow, key, metric, minute), [n, sum, min, max]), their
        # points, raw status)
        self.runs: list[tuple[list[tuple[tuple, list]], int, list[tuple]]] = []
        # Were all these runs' records new when written, and no roll-up recomputed since?
        # Then their points are in no roll-up yet and are added (``_write_series``).
        self.all_new = True
        self.raw_ids: set[int] = set()
        self.rows = 0
        self.since: float | None = None  # time.monotonic() of the oldest
        self.seq = 0  # the store's count of deferred batches, at the newest of these

    def add(self, minutes: list[tuple[tuple, list]], points: int, raw_status: list[tuple],
            seq: int, new: bool) -> None:
        if self.since is None:
            self.since = time.monotonic()
        self.runs.append((minutes, points, raw_status))
        self.all_new = self.all_new and new
        self.raw_ids.update(r[0] for r in raw_status)
        self.rows += points + len(raw_status)
        self.seq = seq


def fold_points(rows: list[tuple], minutes: dict[tuple, list]) -> dict[tuple, list]:
    """Points (flow, key, metric, ts_ms, value) folded into ``minutes``: (flow, key,
    metric, minute) -> [n, sum, min, max]. One dict update per point: the only per-point
    work the roll-ups cost (the points themselves are the records' values)."""
    m_w = s.ROLLUP_1M
    get = minutes.get
    for flow, key, metric, ts, v in rows:
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
    return minutes


_TS, _KEY, _FLOW, _DATA = (operator.itemgetter(f) for f in ("ts_ms", "key", "flow", "data"))
_FLOW_KEY = operator.itemgetter("flow", "key")
_FLOAT = {float}


def fold_records(records: list[dict], metrics: tuple[str, ...],
                 minutes: dict[tuple, list]) -> dict[tuple, list]:
    """The records' points (their values of ``metrics`` that are finite numbers, ints
    as floats, not bools) folded into ``minutes`` as ``fold_points`` folds points: a key's
    records in time order, a minute of them at a time, each metric's values summed
    with C-level ``sum``/``min``/``max`` instead of a dict update per point."""
    m_w = s.ROLLUP_1M
    recs = sorted(records, key=_TS)
    recs.sort(key=_KEY)
    recs.sort(key=_FLOW)
    for (flow, key), group in groupby(recs, _FLOW_KEY):
        grp = list(group)
        times = list(map(_TS, grp))
        datas = list(map(_DATA, grp))
        start = 0
        while start < len(times):
            minute = times[start] - times[start] % m_w
            end = bisect_left(times, minute + m_w, start)
            part = datas[start:end]
            for m in metrics:
                vals = [d.get(m) for d in part]
                if set(map(type, vals)) == _FLOAT and (t := sum(vals)) - t == 0:
                    nums = vals  # all finite floats (the sum of any other is not finite)
                else:
                    nums = [v for v in map(_point, vals) if v is not None]
                    if not nums:
                        continue
                    t = sum(nums)
                k = (flow, key, m, minute)
                a = minutes.get(k)
                if a is None:
                    minutes[k] = [len(nums), t, min(nums), max(nums)]
                else:
                    a[0] += len(nums)
                    a[1] += t
                    a[2] = min(a[2], min(nums))
                    a[3] = max(a[3], max(nums))
            start = end
    return minutes


def _point(v: Any) -> float | None:
    """A value as a series point, as the engine took them: a finite float or int (as a
    float), or another real number type; not a bool, a string or None."""
    tv = v.__class__
    if tv is float:
        return v if v - v == 0 else None
    if tv is int or (tv is not bool and isinstance(v, int | float)):
        return float(v) if v - v == 0 else None
    return None


def _merge(items: Iterable[tuple[tuple, list]], minutes: dict[tuple, list]) -> None:
    """Folded minutes added into ``minutes`` (copied: ``items`` stay as they are)."""
    for k, (n, total, lo, hi) in items:
        a = minutes.get(k)
        if a is None:
            minutes[k] = [n, total, lo, hi]
        else:
            a[0] += n
            a[1] += total
            a[2] = min(a[2], lo)
            a[3] = max(a[3], hi)


class _Flush:
    """Owed runs being written in steps: their points folded into minutes once, in
    series order, a slice of them per transaction, then their raw status with the last
    slice. A slice covers a range of series, so the steps together rewrite the pages one
    transaction would (a step that fails is repeated; a crash between steps leaves the
    payloads unmarked, processed again, and their roll-ups recomputed then)."""

    def __init__(self, owed: _Derived) -> None:
        minutes: dict[tuple, list] = {}
        for run in owed.runs:
            _merge(run[0], minutes)
        self.minutes = sorted(minutes.items())  # by (flow, key, metric, minute)
        self.points = sum(a[0] for a in minutes.values())
        self.done = 0  # points of the minutes written
        self.raw_status = [r for run in owed.runs for r in run[2]]
        self.raw_ids = owed.raw_ids
        self.all_new = owed.all_new
        self.since = owed.since
        self.seq = owed.seq
        self.pos = 0

    @property
    def rows(self) -> int:
        return self.points - self.done + len(self.raw_status)


class DerivedSeries(Repository):
    """``series_keys``, ``series_1m``, ``series_1h`` and ``raw_status`` written, now or
    owed (the series points are the records' values: ``Records``)."""

    _derived: _Derived  # owed by deferred batches, not being written yet
    _flushing: _Flush | None  # owed, being written in steps
    _deferred_seq: int  # deferred batches so far
    _written_seq: int  # ... of which every one up to this is written
    _derived_lock: threading.RLock  # held while the owed set changes or is written
    _sids: dict[tuple, int]  # (flow, key, metric) -> series_keys.id, of committed series
    _recomputes: int  # roll-up recomputes begun so far (see write_batch)

    # Past this many rows owed (series points + raw status), a flush that fails gives up
    # the oldest runs: their payloads stay unprocessed (no raw status) and are processed
    # again by the next run's backlog or the next start's resume, so nothing is lost.
    MAX_DERIVED_ROWS = 1_000_000

    def _init_derived(self) -> None:
        self._derived = _Derived()
        self._flushing = None
        self._deferred_seq = 0
        self._written_seq = 0
        self._derived_lock = threading.RLock()
        self._sids: dict[tuple, int] = {}  # (flow, key, metric) -> series_keys.id
        self._recomputes = 0

    def _defer(self, minutes: list[tuple[tuple, list]], points: int, raw_status: list[tuple],
               new: bool) -> None:
        """Leave one batch's series (folded into minutes) and raw status owed (its records
        are committed; ``new``: all of them were new, and no roll-up was recomputed since
        they were)."""
        with self._derived_lock:
            self._deferred_seq += 1
            self._derived.add(minutes, points, raw_status, self._deferred_seq, new)

    def _write_with_owed(self, write: Callable[[Connection], bool],
                         minutes: list[tuple[tuple, list]], raw_status: list[tuple],
                         new: bool = True) -> None:
        """One transaction: ``write(conn)`` (True unless it wrote records that were
        stored before), then everything owed, then one batch's own series and raw status
        (raw status last). The lock is held while written, so the owed set stays exact;
        if it fails, what was owed stays owed and this batch fails whole."""
        with self._derived_lock:
            try:
                with self.engine.begin() as conn:
                    new = write(conn) and new
                    self._write_owed(conn, minutes, raw_status, new)
            except Exception:
                self._bound_derived()
                raise
            self._all_written()

    def _bound_derived(self) -> None:
        """After a failed write (lock held): past the bound, give up the oldest runs.
        The series-id map is dropped too: ids added by the failed transaction are gone."""
        self._sids.clear()
        owed = self._derived
        given_up = []
        while owed.rows > self.MAX_DERIVED_ROWS and len(owed.runs) > 1:
            _minutes, points, raw_status = owed.runs.pop(0)
            owed.rows -= points + len(raw_status)
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

    def _write_series_and_status(self, conn: Connection, minutes: list[tuple[tuple, list]],
                                 raw_status: list[tuple], all_new: bool) -> None:
        if minutes:
            self._write_series(conn, minutes, all_new)
        crash_point("mid_series_write")  # in the transaction, before its commit
        if raw_status:
            # Every run writes it: driver SQL, as for the hot tables below (the Core
            # upsert's per-call compilation and parameter processing cost ~0.7 ms of a
            # run of one 100-record payload, more than SQLite's own work).
            conn.exec_driver_sql(self._sql["raw_status"], raw_status)

    def _write_owed(self, conn: Connection, own: Sequence[tuple[tuple, list]] = (),
                    raw_status: list[tuple] = (), new: bool = True) -> int:
        """Everything owed (lock held), then one batch's own series and raw status, the
        newest last (once committed, the caller calls ``_all_written``). Returns the
        payloads marked."""
        f, owed = self._flushing, self._derived
        minutes: dict[tuple, list] = {}
        all_status = []
        all_new = new and owed.all_new
        if f is not None:
            _merge(f.minutes[f.pos:], minutes)
            all_status += f.raw_status
            all_new = all_new and f.all_new
        for run_minutes, _points, run_status in owed.runs:
            _merge(run_minutes, minutes)
            all_status += run_status
        _merge(own, minutes)
        all_status += raw_status
        self._write_series_and_status(conn, sorted(minutes.items()), all_status, all_new)
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
        """Write the next slice (at most ``max_rows`` minute roll-ups, of a range of
        series, in series order: one upsert each, however many points it folds) of what
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
            points = sum(a[0] for _k, a in f.minutes[f.pos:end])
            last = end >= len(f.minutes)
            try:
                with self.engine.begin() as conn:
                    self._write_series_and_status(conn, f.minutes[f.pos:end],
                                                  f.raw_status if last else [], f.all_new)
            except Exception:
                self._bound_derived()
                raise
            f.pos = end
            f.done += points
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

    # Series and roll-ups go through driver SQL (flowdeck.storage.codec), as the records do.

    def _sids_of(self, conn: Connection, names: Iterable[tuple]) -> dict[tuple, int]:
        """The series id of every (flow, key, metric) of ``names``; those the store's map
        lacks are added to ``series_keys`` in this transaction and read back with the
        flow's others. The map is dropped if the transaction fails (``_bound_derived``),
        so an id rolled back is never used."""
        sids = self._sids
        missing = sorted({n for n in names if n not in sids})
        if missing:
            conn.exec_driver_sql(self._sql["series_key_add"], missing)
            for flow in {m[0] for m in missing}:
                for sid, key, metric in conn.exec_driver_sql(self._sql["series_keys_of"],
                                                             (flow,)):
                    sids[(flow, key, metric)] = int(sid)
        return sids

    def _write_series(self, conn: Connection, minutes: list[tuple[tuple, list]],
                      all_new: bool) -> None:
        """Points folded into minutes (``fold_points``: (flow, key, metric, minute) -> [n, sum,
        min, max], in that order) written into the roll-ups, new series named in
        ``series_keys``. The points themselves are the records' values, already written
        (``Records._write_records``).

        ``all_new``: every point's record was new when written, and no roll-up was
        recomputed since (so none counts them yet): the roll-ups are exact by adding the
        batch's own aggregates, one upsert per (series, bucket), not per point.
        Otherwise (a replay, a corrected value, a late source merged in, or runs owed
        across a recompute) each touched bucket is recomputed from the records, which
        are committed before their roll-ups are written."""
        h_w = s.ROLLUP_1H
        sids = self._sids_of(conn, {k[:3] for k, _a in minutes})
        if not all_new:
            # A recompute reads every committed record, among them those of runs still
            # owed (committed, roll-ups not written): those must not be added after it.
            self._recomputes += 1
            self._derived.all_new = False
            self._rollups(conn, [(sids[k[:3]], k) for k, _a in minutes])
            return
        by_sid = sorted((sids[k[:3]], k[3], a) for k, a in minutes)  # b-tree order
        hours: dict[tuple, list] = {}
        _merge([((sid, b - b % h_w), a) for sid, b, a in by_sid], hours)
        self._add(conn, "add_1m", [(sid, b, *a) for sid, b, a in by_sid])
        self._add(conn, "add_1h", [k + tuple(a) for k, a in hours.items()])

    def _add(self, conn: Connection, sql: str, rows: list[tuple]) -> None:
        """Roll-up rows (sid, bucket, n, sum, min, max), each (sid, bucket) once, added
        into their table: executemany on SQLite (its loop is C), on PostgreSQL one
        statement over an array per column, each sent as its text (``{1,2,...}``, the
        numbers as ``str`` writes them, which is what psycopg sends for one parameter:
        the same values, without psycopg's work per element of a list)."""
        if not rows:
            return
        if self.dialect != "postgresql":
            conn.exec_driver_sql(self._sql[sql], rows)
            return
        conn.exec_driver_sql(self._sql[sql + "_all"], tuple(
            "{" + ",".join(map(str, col)) + "}" for col in zip(*rows, strict=True)))

    def _rollups(self, conn: Connection, minutes: list[tuple[int, tuple]]) -> None:
        """Recompute the touched roll-up buckets: idempotent under replays and rewrites.

        Each touched minute (series id, (flow, key, metric, minute)) is re-aggregated
        from the records' values of its metric (the key's blocks over the touched
        minutes, read once per key), then each touched hour from its minutes, so the
        work follows the batch, not the size of the table. A minute that holds no value
        any more keeps its row, as the aggregate of no rows writes none.
        """
        m_w, h_w = s.ROLLUP_1M, s.ROLLUP_1H
        by_key: dict[tuple[str, str], dict[tuple[str, int], int]] = {}
        for sid, (flow, key, metric, b) in minutes:
            by_key.setdefault((flow, key), {})[(metric, b)] = sid
        rows = []
        for (flow, key), wanted in sorted(by_key.items()):
            metrics = {m for m, _b in wanted}
            lo = min(b for _m, b in wanted)
            hi = max(b for _m, b in wanted) + m_w - 1
            values: dict[tuple[str, int], list[tuple[int, float]]] = {}
            for _bid, _first, body in self._key_blocks(conn, flow, key, lo, hi):
                for metric in metrics:
                    for ts, v in points_of(body, metric):
                        mk = (metric, ts - ts % m_w)
                        if mk in wanted:
                            values.setdefault(mk, []).append((ts, v))
            for mk, pts in values.items():
                pts.sort()  # summed in time order, as the records are read
                vs = [v for _ts, v in pts]
                rows.append((wanted[mk], mk[1], len(vs), sum(vs), min(vs), max(vs)))
        if rows:
            conn.exec_driver_sql(self._sql["set_1m"], sorted(rows))
        hours = sorted({(sid, k[3] - k[3] % h_w) for sid, k in minutes})
        conn.exec_driver_sql(self._sql["rollup_1h"], [
            (b, sid, b, b + h_w) for sid, b in hours])
