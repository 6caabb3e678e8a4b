"""records stored as per-key blocks; ``records`` becomes a view over them

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 23:30:00

A records row per record cost a b-tree entry in the table and in two indexes, and a
JSON text per field, for every record: writing them bounded the pipeline (issue 19).
Records are now stored as blocks (``flowdeck.storage.blocks``): a row per key and
write, holding the records of that key in one hour as a column per field (JSON arrays
in ``body``), indexed by (flow, key, first time) and (flow, first time). ``records`` is
a view with the rows and columns the table had (``id``: (the block's id - 1) * 4096
+ the record's position + 1), so SQL that read the table reads the same.

Existing data: every record moves, a block per key and hour (at most 4,096 records),
in time order; record ids change (from the blocks' ids and positions); issues name records by
key and time, so they still find them. The downgrade rebuilds the table from the view,
ids kept.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

SPAN_MS, BLOCK_MAX = 3_600_000, 4096
FIELDS = ("ts_ms", "data", "quality", "anomaly_score", "anomalous", "flags", "sources",
          "contributions", "raw_ids", "version_id", "updated_ms")
JSON_FIELDS = ("data", "flags", "sources", "contributions", "raw_ids")


def _json():
    return sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), "postgresql")


def _id():
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def view_sql(dialect: str) -> str:
    """The ``records`` view: a row per record a block holds (positions emptied by
    retention left out)."""
    if dialect == "postgresql":
        def pg_col(f: str) -> str:
            if f in JSON_FIELDS:
                return f'b."body" -> \'{f}\' -> (e.i - 1)::int'
            cast = {"quality": "float8", "anomaly_score": "float8", "anomalous": "boolean",
                    "version_id": "bigint", "updated_ms": "bigint"}[f]
            return f'(b."body" -> \'{f}\' ->> (e.i - 1)::int)::{cast}'
        cols = ", ".join(f'{pg_col(f)} AS "{f}"' for f in FIELDS[1:])
        return ('CREATE VIEW "records" AS SELECT (b."id" - 1) * 4096 + e.i AS "id", '
                'b."flow" AS "flow", b."key" AS "key", e.ts::bigint AS "ts_ms", '
                f'{cols} FROM "record_blocks" b CROSS JOIN LATERAL '
                'jsonb_array_elements_text(b."body" -> \'ts_ms\') WITH ORDINALITY AS e(ts, i) '
                'WHERE e.ts IS NOT NULL')

    def col(f: str) -> str:
        value = f'json_extract(b."body", \'$.{f}[\' || e."key" || \']\')'
        # json_quote: a JSON string ("row") as JSON text; a value another JSON function
        # returned (an object, a list) as it is
        return f"json_quote({value})" if f in JSON_FIELDS else value
    cols = ", ".join(f'{col(f)} AS "{f}"' for f in FIELDS[1:])
    return ('CREATE VIEW "records" AS SELECT (b."id" - 1) * 4096 + e."key" + 1 AS "id", '
            'b."flow" AS "flow", b."key" AS "key", e."value" AS "ts_ms", '
            f'{cols} FROM "record_blocks" b, json_each(b."body", \'$.ts_ms\') e '
            'WHERE e."value" IS NOT NULL')


OLD = sa.table("records", sa.column("flow"), sa.column("key"), sa.column("ts_ms"),
               *(sa.column(f, _json() if f in JSON_FIELDS else None) for f in FIELDS[1:]))


def _blocks(rows: Iterator) -> Iterator[tuple]:
    """(flow, key, first, last, n, body) of records rows in (flow, key, ts) order."""
    part: list = []

    def block() -> tuple:
        cols = {f: [r[i + 2] for r in part] for i, f in enumerate(FIELDS)}
        cols["anomalous"] = [bool(a) for a in cols["anomalous"]]
        return (part[0][0], part[0][1], part[0][2], part[-1][2], len(part),
                json.dumps(cols, separators=(",", ":")))
    for r in rows:
        if part and (r[:2] != part[0][:2] or r[2] - r[2] % SPAN_MS != part[0][2] - part[0][2] % SPAN_MS
                     or len(part) == BLOCK_MAX):
            yield block()
            part = []
        part.append(r)
    if part:
        yield block()


def upgrade() -> None:
    op.create_table(
        "record_blocks",
        sa.Column("id", _id(), autoincrement=True, nullable=False),
        sa.Column("flow", sa.String(64), nullable=False),
        sa.Column("key", sa.String(128), nullable=False),
        sa.Column("first_ms", sa.BigInteger(), nullable=False),
        sa.Column("last_ms", sa.BigInteger(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("body", _json(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_record_blocks")),
    )
    op.create_index("ix_record_blocks_flow_key_first", "record_blocks",
                    ["flow", "key", "first_ms"])
    op.create_index("ix_record_blocks_flow_first", "record_blocks", ["flow", "first_ms"])
    bind = op.get_bind()
    pg = bind.dialect.name == "postgresql"
    insert = ('INSERT INTO "record_blocks" ("flow", "key", "first_ms", "last_ms", "n", "body") '
              + ("VALUES (%s, %s, %s, %s, %s, %s::jsonb)" if pg
                 else "VALUES (?, ?, ?, ?, ?, ?)"))
    cols = [OLD.c[f] for f in ("flow", "key", *FIELDS)]
    rows = bind.execute(sa.select(*cols).order_by(OLD.c.flow, OLD.c.key, OLD.c.ts_ms),
                        execution_options={"stream_results": True, "yield_per": 2000})
    batch: list[tuple] = []
    for blk in _blocks(iter(rows)):
        batch.append(blk)
        if len(batch) >= 500:
            bind.exec_driver_sql(insert, batch)
            batch = []
    if batch:
        bind.exec_driver_sql(insert, batch)
    op.drop_table("records")
    op.execute(view_sql(bind.dialect.name))


def downgrade() -> None:
    op.create_table(
        "records_0006",
        sa.Column("id", _id(), autoincrement=True, nullable=False),
        sa.Column("flow", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("ts_ms", sa.BigInteger(), nullable=False),
        sa.Column("data", _json(), nullable=False),
        sa.Column("quality", sa.Float(), nullable=False),
        sa.Column("anomaly_score", sa.Float(), nullable=False),
        sa.Column("anomalous", sa.Boolean(), nullable=False),
        sa.Column("flags", _json(), nullable=False),
        sa.Column("sources", _json(), nullable=False),
        sa.Column("contributions", _json(), nullable=False),
        sa.Column("raw_ids", _json(), nullable=False),
        sa.Column("version_id", sa.BigInteger(), nullable=True),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_records"),
        sa.UniqueConstraint("flow", "ts_ms", "key", name="uq_records_flow_ts_key"),
    )
    cols = ", ".join(f'"{c}"' for c in ("id", "flow", "key", *FIELDS))
    op.execute(f'INSERT INTO "records_0006" ({cols}) SELECT {cols} FROM "records" '
               'ORDER BY "flow", "ts_ms", "key"')
    op.execute('DROP VIEW "records"')
    op.rename_table("records_0006", "records")
    op.create_index("ix_records_flow_key_ts", "records", ["flow", "key", "ts_ms"])
    op.drop_index("ix_record_blocks_flow_first", table_name="record_blocks")
    op.drop_index("ix_record_blocks_flow_key_first", table_name="record_blocks")
    op.drop_table("record_blocks")
