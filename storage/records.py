"""Records and ``latest`` (the newest record per key), and the reads over records and
series: history, recent values, per-source contributions. Records are stored as per-key
blocks (``flowdeck.storage.blocks``)."""

from __future__ import annotations

import heapq
import operator
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from itertools import groupby, islice

from sqlalchemy import delete, func, insert, select
from sqlalchemy.engine import Connection

from flowdeck.storage import schema as s
from flowdeck.storage.blocks import (
    BLOCK_MAX,
    NO_START,
    SPAN_MS,
    columns_of,
    contribution_at,
    decode,
    encode,
    hour_of,
    points_of,
    record_at,
    records_of,
    split_id,
)
from flowdeck.storage.codec import JsonCodec, all_row_contributions
from flowdeck.storage.repository import Repository

_NO_END = 2**63 - 1  # "before" when a read has no end
_TS, _KEY, _FLOW = (operator.itemgetter(f) for f in ("ts_ms", "key", "flow"))
_FLOW_KEY = operator.itemgetter("flow", "key")
_FIRST, _SECOND = operator.itemgetter(0), operator.itemgetter(1)
_ROW_FIELDS = operator.itemgetter("data", "quality", "flags", "sources", "contributions",
                                  "raw_ids", "ts_ms")


def _all_row(records: list[dict]) -> bool:
    """Are every record's contributions its one source's reading as its own fields
    hold it (``codec.row_contribution``)? Checked a column at a time over the batch."""
    try:
        return bool(records) and all_row_contributions(*zip(*map(_ROW_FIELDS, records),
                                                            strict=True))
    except KeyError:
        return False


_LATEST = ("data", "quality", "anomaly_score", "anomalous", "flags", "sources", "updated_ms")


class Records(Repository):
    """Records (as blocks) and ``latest`` written and read; series points (the records'
    metric values) and their roll-ups read."""

    def contributions(self, flow: str, keys_ts: Iterable[tuple[str, int]]) -> dict[tuple, dict]:
        """Stored per-source contributions for (key, ts) pairs, so late sources merge in.
        Streaming data asks only for times newer than every stored one of its keys
        (``latest``): then nothing is read but that, and no pair is grouped."""
        pairs = keys_ts if isinstance(keys_ts, set | frozenset | list | tuple) else list(keys_ts)
        if not pairs:
            return {}
        out: dict[tuple, dict] = {}
        with self.engine.connect() as conn:
            keys = sorted(set(map(_FIRST, pairs)))
            newest = self._newest_times(conn, flow, keys)
            oldest_asked = min(map(_SECOND, pairs))
            if len(newest) == len(keys) and max(newest.values()) < oldest_asked:
                return out
            by_key: dict[str, set[int]] = {}
            for key, ts in pairs:
                by_key.setdefault(key, set()).add(ts)
            for key, times in by_key.items():
                if key in newest and min(times) > newest[key]:
                    continue  # all newer than anything stored (streaming data)
                for _bid, _first, body in self._key_blocks(conn, flow, key, min(times),
                                                           max(times)):
                    for pos, ts in enumerate(body["ts_ms"]):
                        if ts in times:
                            out[(key, ts)] = contribution_at(body, pos)
        return out

    def _write_records(self, conn: Connection, records: list[dict]) -> bool:
        """Store records (one per flow, key and ts: a time already stored is rewritten
        in its block) and keep ``latest`` current. Returns whether every record was new
        (none was stored before, none twice in the batch): then their series points are
        new too and the roll-ups may add them (``_write_series``).

        A batch's records are grouped by key; a key whose times all come after its
        newest stored one (``latest``, kept in the same transactions: streaming data)
        only appends new blocks; any other key's stored blocks in the batch's time range
        are read first, and the times they hold rewritten there."""
        sql = self._sql
        # (flow, key, ts) order by three stable sorts on one field each (ties kept in
        # batch order; a stream's batch, already in time order, is one run for the
        # first), then a group per key: C-level work, not a dict update per record.
        recs = sorted(records, key=_TS)
        recs.sort(key=_KEY)
        recs.sort(key=_FLOW)
        groups = [(fk, list(g)) for fk, g in groupby(recs, _FLOW_KEY)]
        row = _all_row(records)  # every record's contributions "row": no check per block
        new = True
        by_flow: dict[str, list[str]] = {}
        for flow, key in map(_FIRST, groups):
            by_flow.setdefault(flow, []).append(key)
        newest = {(flow, key): ts for flow, keys in by_flow.items()
                  for key, ts in self._newest_times(conn, flow, keys).items()}
        inserts: list[tuple] = []
        rewrites: list[tuple] = []
        latest: list[dict] = []
        for (flow, key), grp in groups:
            times = list(map(_TS, grp))
            if len(set(times)) < len(times):  # a time twice: the later record wins
                once = dict(zip(times, grp, strict=True))
                times, grp = list(once), list(once.values())
                new = False
            top = grp[-1]
            stored = newest.get((flow, key))
            if stored is None or times[0] <= stored:
                left = self._rewrite_stored(conn, flow, key, dict(zip(times, grp, strict=True)),
                                            times, rewrites)
                if len(left) < len(times):
                    new = False
                    grp = [r for r in grp if r["ts_ms"] in left]
                    times = list(map(_TS, grp))
            start = 0
            while start < len(times):  # one block per hour, of at most BLOCK_MAX records
                end = min(bisect_left(times, hour_of(times[start]) + SPAN_MS, start),
                          start + BLOCK_MAX)
                inserts.append((flow, key, times[start], times[end - 1], end - start,
                                encode(columns_of(grp[start:end], row))))
                start = end
            if stored is None or top["ts_ms"] >= stored:
                latest.append(top)
        if inserts:
            conn.exec_driver_sql(sql["insert"], inserts)
        if rewrites:
            conn.exec_driver_sql(sql["rewrite"], rewrites)
        if latest:
            codec = JsonCodec()
            conn.exec_driver_sql(self._sql["latest"], [
                (r["flow"], r["key"], r["ts_ms"], codec.dumps(r["data"]), r["quality"],
                 r.get("anomaly_score", 0.0), bool(r.get("anomalous", False)),
                 codec.small_list(r["flags"]), codec.small_list(r["sources"]), r["updated_ms"])
                for r in latest])
        return new

    def _newest_times(self, conn: Connection, flow: str, keys: list[str]) -> dict[str, int]:
        """The newest stored time of each of a flow's keys that has records, from
        ``latest`` (kept in the same transactions as the records, never older than
        them; a key missing from it is looked up in its blocks by the caller)."""
        out: dict[str, int] = {}
        for i in range(0, len(keys), 500):
            part = keys[i:i + 500]
            ph = ", ".join([self._sql["ph"]] * len(part))
            out.update(conn.exec_driver_sql(self._sql["newest"].replace("(KEYS)", f"({ph})"),
                                            (flow, *part)).all())
        return out

    def _rewrite_stored(self, conn: Connection, flow: str, key: str, by_ts: dict[int, dict],
                        times: list[int], rewrites: list[tuple]) -> set[int]:
        """Rewrite in their blocks the records of ``by_ts`` whose time is stored (adding
        each changed block to ``rewrites``); returns the other times, still to store."""
        left = set(times)
        for bid, _first, body in self._key_blocks(conn, flow, key, times[0], times[-1]):
            hit = [(pos, ts) for pos, ts in enumerate(body["ts_ms"]) if ts in left]
            if not hit:
                continue
            fresh = columns_of([by_ts[ts] for _pos, ts in hit])
            for i, (pos, ts) in enumerate(hit):
                for f, col in body.items():
                    col[pos] = fresh[f][i]
                left.discard(ts)
            rewrites.append((encode(body), sum(t is not None for t in body["ts_ms"]), bid))
        return left

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
        b, lt = s.record_blocks, s.latest
        scope_blocks, scope_latest = [], []
        if flow is not None:
            scope_blocks.append(b.c.flow == flow)
            scope_latest.append(lt.c.flow == flow)
        if key is not None:
            scope_blocks.append(b.c.key == key)
            scope_latest.append(lt.c.key == key)
        with self.engine.begin() as conn:
            keys = conn.execute(select(b.c.flow, b.c.key).where(*scope_blocks).distinct()).all()
            rows = []
            for f, k in keys:
                r = self._newest(conn, f, k)
                if r is not None:
                    rows.append({"flow": f, "key": k, "ts_ms": r["ts_ms"],
                                 **{c: r[c] for c in _LATEST}})
            conn.execute(delete(lt).where(*scope_latest))
            if rows:
                conn.execute(insert(lt), rows)
            return len(rows)

    def _newest(self, conn: Connection, flow: str, key: str) -> dict | None:
        """A key's newest stored record (None: none is): the newest hour holding blocks,
        or the one before it if retention deleted all of that hour's records."""
        b = s.record_blocks
        below = _NO_END
        while True:
            top = conn.execute(select(func.max(b.c.first_ms)).where(
                b.c.flow == flow, b.c.key == key, b.c.first_ms < below)).scalar()
            if top is None:
                return None
            hour = hour_of(top)
            best = None
            for bid, _first, body in self._key_blocks(conn, flow, key, hour, hour + SPAN_MS - 1):
                for r in records_of(bid, flow, key, body):
                    if best is None or r["ts_ms"] > best["ts_ms"]:
                        best = r
            if best is not None:
                return best
            below = hour

    def records_since(self, flow: str, since_ms: int | None = None, *, limit: int | None = None,
                      key: str | None = None) -> Iterable[dict]:
        """A flow's records (or one key's) from ``since_ms`` on, in time order (of one
        time, by key), streamed: blocks are read in order of their first time and their
        records merged, so only the blocks that overlap in time are held at once."""
        lo = NO_START if since_ms is None else max(since_ms, NO_START)
        sql, args = ((self._sql["key_blocks"], (flow, key, hour_of(lo), _NO_END, lo))
                     if key is not None else
                     (self._sql["flow_blocks"], (flow, hour_of(lo), _NO_END, lo)))
        merged = self._merged(flow, lo, sql, args)
        return islice(merged, limit) if limit else merged

    def _merged(self, flow: str, lo: int, sql: str, args: tuple) -> Iterator[dict]:
        """The records of blocks read in order of their first time, in (ts, key) order:
        a record is let out once no block still to come can hold an earlier one."""
        heap: list[tuple[int, str, int, dict]] = []
        seq = 0
        with self.engine.connect() as conn:
            rows = conn.execution_options(stream_results=True).exec_driver_sql(sql, args)
            for bid, k, first, body in rows:
                while heap and heap[0][0] < first:
                    yield heapq.heappop(heap)[3]
                for r in records_of(bid, flow, k, decode(body)):
                    if r["ts_ms"] >= lo:
                        heapq.heappush(heap, (r["ts_ms"], k, seq, r))
                        seq += 1
            while heap:
                yield heapq.heappop(heap)[3]

    def get_record(self, record_id: int) -> dict | None:
        bid, pos = split_id(int(record_id))
        with self.engine.connect() as conn:
            row = conn.exec_driver_sql(self._sql["block"], (bid,)).first()
        if row is None:
            return None
        flow, key, body = row
        body = decode(body)
        if pos >= len(body["ts_ms"]):
            return None
        return record_at(bid, flow, key, body, pos)

    def _points(self, conn: Connection, flow: str, key: str, metric: str, since_ms: int,
                before_ms: int | None, limit: int) -> list[tuple[int, float]]:
        """A series' newest ``limit`` points in [since, before), oldest first: the finite
        numeric values of ``metric`` in the key's records, read newest block first until
        an hour older than every point kept (``ix_record_blocks_flow_key_first``)."""
        hi = _NO_END if before_ms is None else before_ms - 1
        points: list[tuple[int, float]] = []
        hour = None
        for _bid, first, body in self._key_blocks(conn, flow, key, since_ms, hi,
                                                  newest_first=True):
            if hour_of(first) != hour:
                # every point kept is in a later hour than this block's: enough?
                if len(points) >= limit:
                    break
                hour = hour_of(first)
            points += [p for p in points_of(body, metric) if since_ms <= p[0] <= hi]
        points.sort()
        return points[-limit:] if limit > 0 else []

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
