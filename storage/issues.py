"""Quarantined items, quality issues, the recovery actions log and per-source state."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.engine import Connection

from flowdeck.storage import schema as s
from flowdeck.storage.model import BatchWrite, IssueDraft
from flowdeck.storage.repository import Repository


class Issues(Repository):
    """``quarantine``, ``issues``, ``actions`` and ``source_state``."""

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
