"""series points and roll-ups keyed by an integer series id (series_keys)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 10:00:00

A series point was (flow, key, metric, ts_ms, value): every point and roll-up row
repeated three names (~40 bytes of key) and every b-tree comparison compared strings.
``series_keys`` now names each (flow, key, metric) once with an integer id; ``series``
holds (sid, ts_ms, value) and the roll-ups (sid, bucket_ms, n, sum, min, max),
clustered on that primary key on SQLite (WITHOUT ROWID): about half the bytes per row
and integer comparisons (measured in docs/architecture.md, "Storage layout").

Existing points and roll-ups are moved (INSERT ... SELECT) on SQLite and PostgreSQL.
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


_ROLLUPS = ("series_1m", "series_1h")
_NAMES = 'k."flow" = o."flow" AND k."key" = o."key" AND k."metric" = o."metric"'


def _rollup_by_id(name: str) -> None:
    op.create_table(
        name,
        sa.Column("sid", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("bucket_ms", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("sum", sa.Float(), nullable=False),
        sa.Column("min", sa.Float(), nullable=False),
        sa.Column("max", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("sid", "bucket_ms", name=op.f(f"pk_{name}")),
        sqlite_with_rowid=False,
    )


def _rollup_by_name(name: str) -> None:
    op.create_table(
        name,
        sa.Column("flow", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("metric", sa.String(length=64), nullable=False),
        sa.Column("bucket_ms", sa.BigInteger(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("sum", sa.Float(), nullable=False),
        sa.Column("min", sa.Float(), nullable=False),
        sa.Column("max", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("flow", "key", "metric", "bucket_ms", name=op.f(f"pk_{name}")),
        sqlite_with_rowid=False,
    )


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
    for name in ("series", *_ROLLUPS):
        _set_aside(name)
    op.create_table(
        "series",
        sa.Column("sid", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("ts_ms", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("sid", "ts_ms", name=op.f("pk_series")),
        sqlite_with_rowid=False,
    )
    for name in _ROLLUPS:
        _rollup_by_id(name)
    # Every series named anywhere (points or roll-ups) gets its id.
    names = " UNION ".join(f'SELECT "flow", "key", "metric" FROM "_old_{t}"'
                           for t in ("series", *_ROLLUPS))
    op.execute('INSERT INTO "series_keys" ("flow", "key", "metric") '
               f'SELECT "flow", "key", "metric" FROM ({names}) u '
               'ORDER BY "flow", "key", "metric"')
    op.execute('INSERT INTO "series" ("sid", "ts_ms", "value") '
               'SELECT k."id", o."ts_ms", o."value" FROM "_old_series" o '
               f'JOIN "series_keys" k ON {_NAMES} ORDER BY k."id", o."ts_ms"')
    for name in _ROLLUPS:
        op.execute(f'INSERT INTO "{name}" ("sid", "bucket_ms", "n", "sum", "min", "max") '
                   'SELECT k."id", o."bucket_ms", o."n", o."sum", o."min", o."max" '
                   f'FROM "_old_{name}" o JOIN "series_keys" k ON {_NAMES} '
                   'ORDER BY k."id", o."bucket_ms"')
    for name in ("series", *_ROLLUPS):
        op.drop_table(f"_old_{name}")


def downgrade() -> None:
    for name in ("series", *_ROLLUPS):
        _set_aside(name)
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
    for name in _ROLLUPS:
        _rollup_by_name(name)
    op.execute('INSERT INTO "series" ("flow", "key", "metric", "ts_ms", "value") '
               'SELECT k."flow", k."key", k."metric", o."ts_ms", o."value" '
               'FROM "_old_series" o JOIN "series_keys" k ON k."id" = o."sid"')
    for name in _ROLLUPS:
        op.execute(f'INSERT INTO "{name}" ("flow", "key", "metric", "bucket_ms", "n", "sum", '
                   '"min", "max") SELECT k."flow", k."key", k."metric", o."bucket_ms", o."n", '
                   f'o."sum", o."min", o."max" FROM "_old_{name}" o '
                   'JOIN "series_keys" k ON k."id" = o."sid"')
    for name in ("series", *_ROLLUPS):
        op.drop_table(f"_old_{name}")
    op.drop_table("series_keys")
