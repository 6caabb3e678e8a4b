"""What every repository of the store shares: the SQLAlchemy engine, its dialect, the
hot tables' driver SQL and the dialect's upsert.

The repositories (``runs``, ``raw``, ``records``, ``derived``, ``issues``) are mixins over
this base, and ``flowdeck.storage.store.Store`` is all of them over one engine: see that
module for why.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine


class Repository:
    """The state every repository reads; ``Store.__init__`` sets it."""

    engine: Engine
    dialect: str  # "sqlite" or "postgresql"
    _sql: dict[str, str]  # the hot tables' driver SQL (flowdeck.storage.codec.hot_sql)
    _upserts: dict[tuple, Any]  # ON CONFLICT statements, built once per shape

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
