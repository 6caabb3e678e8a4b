"""What every repository of the store shares: the SQLAlchemy engine, its dialect, the
hot tables' driver SQL and the dialect's upsert.

The repositories (``runs``, ``raw``, ``records``, ``derived``, ``issues``) are mixins over
this base, and ``flowdeck.storage.store.Store`` is all of them over one engine: see that
module for why.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from flowdeck.storage.blocks import NO_START, decode, hour_of


class Repository:
    """The state every repository reads; ``Store.__init__`` sets it."""

    engine: Engine
    dialect: str  # "sqlite" or "postgresql"
    _sql: dict[str, str]  # the hot tables' driver SQL (flowdeck.storage.codec.hot_sql)
    _upserts: dict[tuple, Any]  # ON CONFLICT statements, built once per shape

    def _key_blocks(self, conn: Connection, flow: str, key: str, lo: int, hi: int,
                    newest_first: bool = False) -> Iterator[tuple[int, int, dict]]:
        """(block id, first time, body) of a key's record blocks that may hold times in
        [lo, hi], by first time (``flowdeck.storage.blocks``)."""
        sql = self._sql["key_blocks_desc" if newest_first else "key_blocks"]
        lo = max(lo, NO_START)
        for bid, _key, first, body in conn.exec_driver_sql(
                sql, (flow, key, hour_of(lo), hi, lo)):
            yield bid, first, decode(body)

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
