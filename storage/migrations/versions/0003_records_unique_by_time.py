"""records: unique on (flow, ts_ms, key), in time order

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 07:00:00

A streaming run stores one record per key, all at about the same (new) time. With the
unique index in (flow, key, ts_ms) order each of those rows lands on its own leaf page
of the index, so a run of 100 keys rewrote ~100 index pages: measured 137 WAL frames
per 100-record commit on SQLite, 24 in (flow, ts_ms, key) order, where new rows append
at the right edge. The constraint is the same set of columns, so the upsert's
ON CONFLICT ("flow", "key", "ts_ms") still names it (both databases match a conflict
target to a unique index by its set of columns). Its (flow, ts_ms) prefix serves what
ix_records_flow_ts served (a flow's records in time order), so that index goes.
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _swap(old: str, new: str, new_cols: list[str], drop_index: bool) -> None:
    # SQLite cannot drop a table constraint: batch mode rebuilds the table (copy, rename).
    with op.batch_alter_table("records", recreate="auto") as batch:
        batch.drop_constraint(old, type_="unique")
        batch.create_unique_constraint(new, new_cols)
        if drop_index:
            batch.drop_index("ix_records_flow_ts")
        else:
            batch.create_index("ix_records_flow_ts", ["flow", "ts_ms"], unique=False)


def upgrade() -> None:
    _swap("uq_records_flow_key_ts", "uq_records_flow_ts_key", ["flow", "ts_ms", "key"],
          drop_index=True)


def downgrade() -> None:
    _swap("uq_records_flow_ts_key", "uq_records_flow_key_ts", ["flow", "key", "ts_ms"],
          drop_index=False)
