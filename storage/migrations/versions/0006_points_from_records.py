"""series points read from the records: no ``series`` table; records indexed by key and time

Revision ID: 0006
Revises: 0005 (cluster; this revision was written on 0004 beside it)
Create Date: 2026-12-03 13:20:00

Every series point (sid, ts_ms, value) was a second copy of a value its record already
holds in ``data``: five rows per record for four metrics. The points are now read from
the records themselves (a metric's finite numeric values in ``data``), along a new index
``ix_records_flow_key_ts`` (flow, key, ts_ms) that serves a series' range scans;
``series_keys`` still names each series (its id keys the roll-ups) and the roll-ups stay
tables (docs/architecture.md, "Storage layout").

Existing data: the records hold every point the engine wrote, so nothing is moved; the
``series`` table is dropped. Points whose record was already gone (a
``retention.records`` shorter than ``retention.series``) are dropped with it; their
minute and hour roll-ups stay. The downgrade rebuilds ``series`` from the records.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_records_flow_key_ts", "records", ["flow", "key", "ts_ms"])
    op.drop_table("series")


def downgrade() -> None:
    op.create_table(
        "series",
        sa.Column("sid", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("ts_ms", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("sid", "ts_ms", name=op.f("pk_series")),
        sqlite_with_rowid=False,
    )
    if op.get_bind().dialect.name == "postgresql":
        value, number = '(r."data" ->> k."metric")::float8', \
            "jsonb_typeof(r.\"data\" -> k.\"metric\") = 'number'"
    else:
        path = "'$.\"' || k.\"metric\" || '\"'"
        value = f'json_extract(r."data", {path})'
        number = f"json_type(r.\"data\", {path}) IN ('integer', 'real')"
    op.execute('INSERT INTO "series" ("sid", "ts_ms", "value") '
               f'SELECT k."id", r."ts_ms", {value} FROM "records" r JOIN "series_keys" k '
               f'ON k."flow" = r."flow" AND k."key" = r."key" WHERE {number} '
               'ORDER BY k."id", r."ts_ms"')
    op.drop_index("ix_records_flow_key_ts", table_name="records")
