"""Records and ``latest`` (the newest record per key), and the reads over records and
series: history, recent values, per-source contributions."""

from __future__ import annotations

import json
import operator
from collections.abc import Iterable

from sqlalchemy import and_, delete, func, insert, select
from sqlalchemy.engine import Connection

from flowdeck.storage import schema as s
from flowdeck.storage.codec import (
    CONTRIB_AS_ROW,
    contributions_of,
    expand_contributions,
    metric_path,
    record_rows,
)
from flowdeck.storage.repository import Repository

_FLOW, _KEY, _TS = (operator.itemgetter(i) for i in range(3))
_FLOW_KEY = operator.itemgetter(0, 1)
_NO_END = 2**63 - 1  # "before" when a read has no end


def _same(value):
    return value


class Records(Repository):
    """``records`` and ``latest`` written and read; series points (the records' metric
    values) and their roll-ups read."""

    def contributions(self, flow: str, keys_ts: Iterable[tuple[str, int]]) -> dict[tuple, dict]:
        """Stored per-source contributions for (key, ts) pairs, so late sources merge in."""
        wanted = set(keys_ts)
        if not wanted:
            return {}
        times = list(map(_KEY, wanted))  # the pairs' second items: their times
        lo, hi = min(times), max(times)
        out = {}
        # Driver SQL so that only the wanted rows' JSON is decoded, not every row's in
        # the range.
        # SQLite hands back JSON as text, PostgreSQL's driver JSONB already decoded.
        load = json.loads if self.dialect == "sqlite" else _same

        with self.engine.connect() as conn:
            for key, ts, contrib, data, sources, raw_ids, quality, flags in conn.exec_driver_sql(
                    self._sql["contributions"], (flow, lo, hi)):
                if (key, ts) in wanted:
                    contrib = load(contrib)
                    if contrib == CONTRIB_AS_ROW:
                        contrib = contributions_of(load(sources), load(data), ts,
                                                   load(raw_ids), quality, load(flags))
                    out[(key, ts)] = contrib
        return out

    # The hot tables (records, latest, series, roll-ups) are written with driver-level
    # executemany of plain tuples and pre-encoded JSON: SQLAlchemy's per-row parameter
    # processing cost more than SQLite's own work. Same columns, same upsert semantics
    # as the Core statements everywhere else; the SQL is in flowdeck.storage.codec.

    def _write_records(self, conn: Connection, records: list[dict]) -> bool:
        """Upsert records (idempotent on flow, key, ts) and keep `latest` current.
        Returns whether every record was new (none was stored before): then their
        series points are new too and the roll-ups may add them (``_write_series``)."""
        rows = record_rows(records)
        # Index order (flow, key, ts): fewer b-tree pages touched. Three stable sorts on
        # one field each give the order one sort on the (flow, key, ts) tuple does, ties
        # kept in batch order, at a third of its cost (one-field compares; a batch
        # already in time order, as a stream's is, is a single run for the first).
        for field in _TS, _KEY, _FLOW:
            rows.sort(key=field)
        if self.dialect == "postgresql":
            return self._copy_records(conn, rows)
        # Streaming data only appends: insert without overwriting and count (sqlite3 and
        # psycopg 3 both sum executemany's rowcount); only if some were stored already
        # (a replay, a late source merged in) upsert them all.
        new = conn.exec_driver_sql(self._sql["records_new"], rows).rowcount == len(rows)
        if not new:
            conn.exec_driver_sql(self._sql["records"], rows)
        # latest: the newest record per key of this batch (the last of its key in that
        # order; of two at one time the later in the batch), only if newer than the
        # stored one
        newest = dict(zip(map(_FLOW_KEY, rows), rows, strict=True))
        conn.exec_driver_sql(self._sql["latest"], [r[:9] + r[12:] for r in newest.values()])
        return new

    def _copy_records(self, conn: Connection, rows: list[tuple]) -> bool:
        """PostgreSQL: the rows COPYed into a temporary table (one stream, not a
        statement per row), inserted from it without overwriting and counted, upserted
        only if some were stored already, and folded into ``latest`` (the newest per
        key, only if newer) by one statement. Same result as the executemany path."""
        unique = {r[:3]: r for r in rows}  # of two rows for one record the later wins
        driver = conn.connection.driver_connection  # psycopg's, in this transaction
        assert driver is not None
        with driver.cursor() as cur:
            cur.execute(self._sql["records_stage"])
            with cur.copy(self._sql["records_copy"]) as copy:
                for row in unique.values():
                    copy.write_row(row)
            cur.execute(self._sql["records_new_staged"])
            # A record twice in the batch is not new the second time (its points would
            # be counted twice): the recompute path.
            new = cur.rowcount == len(rows)
            if not new:
                cur.execute(self._sql["records_staged"])
            cur.execute(self._sql["latest_staged"])
        return new

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
                yield expand_contributions(dict(row))

    def get_record(self, record_id: int) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(s.records).where(
                s.records.c.id == record_id)).mappings().first()
        return expand_contributions(dict(row)) if row else None

    def _points(self, conn: Connection, flow: str, key: str, metric: str, since_ms: int,
                before_ms: int | None, limit: int) -> list[tuple[int, float]]:
        """A series' newest ``limit`` points in [since, before), oldest first: the finite
        numeric values of ``metric`` in the key's records (``ix_records_flow_key_ts``)."""
        path = metric_path(self.dialect, metric)
        hi = _NO_END if before_ms is None else before_ms
        rows = [(int(ts), float(v)) for ts, v in conn.exec_driver_sql(
            self._sql["points"], (path, flow, key, since_ms, hi, path, limit))]
        rows.reverse()
        return rows

    def history(self, flow: str, key: str, metric: str, since_ms: int = 0,
                step_ms: int | None = None, limit: int = 5000) -> list[tuple[int, float]]:
        """A metric's values; with a step of 1m or 1h the roll-up is read instead.
        The points are the key's records' finite numeric values of ``metric``, read from
        the records themselves (committed with them, before their roll-ups)."""
        if step_ms not in s.ROLLUPS:
            with self.engine.connect() as conn:
                return self._points(conn, flow, key, metric, since_ms, None, limit)
        k = s.series_keys
        sid = select(k.c.id).where(k.c.flow == flow, k.c.key == key,
                                   k.c.metric == metric).scalar_subquery()
        t = s.ROLLUPS[step_ms]
        q = (select(t.c.bucket_ms, t.c.sum / t.c.n).where(
            t.c.sid == sid, t.c.bucket_ms >= since_ms)
            .order_by(t.c.bucket_ms.desc()).limit(limit))
        with self.engine.connect() as conn:
            rows = [(int(a), float(b)) for a, b in conn.execute(q)]
        rows.reverse()
        return rows

    def recent_values(self, flow: str, metric: str, per_series: int,
                      before_ms: int | None = None) -> dict[str, list[tuple[int, float]]]:
        """The newest ``per_series`` values of every key for a metric, oldest first (to warm
        up detectors after a restart). Reads only those rows: the metric's series come
        from ``series_keys``, then each series' newest records are read along
        ``ix_records_flow_key_ts`` ``ORDER BY ts_ms DESC LIMIT per_series``, never a key's
        whole history."""
        k = s.series_keys
        out: dict[str, list] = {}
        if per_series <= 0:
            return out
        with self.engine.connect() as conn:
            keys = conn.execute(select(k.c.key).where(
                k.c.flow == flow, k.c.metric == metric).order_by(k.c.key)).scalars().all()
            for key in keys:
                rows = self._points(conn, flow, key, metric, -_NO_END, before_ms, per_series)
                if rows:
                    out[key] = rows
        return out
