"""series points keyed by an integer series id (series_keys)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 10:00:00

A series point was (flow, key, metric, ts_ms, value): every point repeated three names
(~40 bytes of key) and every b-tree comparison compared strings. ``series_keys`` now
names each (flow, key, metric) once with an integer id and ``series`` holds
(sid, ts_ms, value), clustered on that primary key on SQLite (WITHOUT ROWID): half the
bytes per point and integer comparisons (measured in docs/architecture.md, "Storage
layout"). The roll-ups keep their names: one row per series and minute or hour.

Existing points are moved (one INSERT ... SELECT each way) on SQLite and PostgreSQL.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _id():
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _set_aside(name: str) -> None:
    """Rename ``name`` to ``_old_<name>``; on PostgreSQL also its primary key, whose
    name (an index) the new table takes."""
    op.rename_table(name, f"_old_{name}")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f'ALTER TABLE "_old_{name}" RENAME CONSTRAINT "pk_{name}" TO "pk__old_{name}"')


def upgrade() -> None:
    op.create_table(
        "series_keys",
        sa.Column("id", _id(), autoincrement=True, nullable=False),
        sa.Column("flow", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("metric", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_series_keys")),
        sa.UniqueConstraint("flow", "key", "metric", name="uq_series_keys_flow_key_metric"),
    )
    _set_aside("series")
    op.create_table(
        "series",
        sa.Column("sid", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("ts_ms", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("sid", "ts_ms", name=op.f("pk_series")),
        sqlite_with_rowid=False,
    )
    op.execute('INSERT INTO "series_keys" ("flow", "key", "metric") '
               'SELECT DISTINCT "flow", "key", "metric" FROM "_old_series" '
               'ORDER BY "flow", "key", "metric"')
    op.execute('INSERT INTO "series" ("sid", "ts_ms", "value") '
               'SELECT k."id", o."ts_ms", o."value" FROM "_old_series" o JOIN "series_keys" k '
               'ON k."flow" = o."flow" AND k."key" = o."key" AND k."metric" = o."metric" '
               'ORDER BY k."id", o."ts_ms"')
    op.drop_table("_old_series")


def downgrade() -> None:
    _set_aside("series")
    op.create_table(
        "series",
        sa.Column("flow", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("metric", sa.String(length=64), nullable=False),
        sa.Column("ts_ms", sa.BigInteger(), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("flow", "key", "metric", "ts_ms", name=op.f("pk_series")),
        sqlite_with_rowid=False,
    )
    op.execute('INSERT INTO "series" ("flow", "key", "metric", "ts_ms", "value") '
               'SELECT k."flow", k."key", k."metric", o."ts_ms", o."value" '
               'FROM "_old_series" o JOIN "series_keys" k ON k."id" = o."sid"')
    op.drop_table("_old_series")
    op.drop_table("series_keys")
