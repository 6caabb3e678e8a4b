"""Raw payloads: appended as fetched, found again by content, and which are pending.

A payload is processed once its raw status is written, or while a deferred batch owes
that status (``flowdeck.storage.derived``): so this repository reads the owed state too.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select

from flowdeck.storage import schema as s
from flowdeck.storage.crashpoints import crash_point
from flowdeck.storage.derived import DerivedSeries
from flowdeck.storage.model import RawDraft, content_hash


class RawPayloads(DerivedSeries):
    """``raw_payloads``, and ``raw_status`` read (written with the derived series)."""

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
            crash_point("before_raw_commit")
        crash_point("after_raw_commit")
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
