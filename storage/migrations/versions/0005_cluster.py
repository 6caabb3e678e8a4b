"""cluster: nodes and flow leases with fencing tokens (scale-out, issue 17)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 13:00:00

Additive only (two new tables, nothing altered): a node of the previous release keeps
running on the upgraded database; it neither reads nor writes these tables.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _json():
    return sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "cluster_nodes",
        sa.Column("node", sa.String(128), nullable=False),
        sa.Column("started_ms", sa.BigInteger, nullable=False),
        sa.Column("heartbeat_ms", sa.BigInteger, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("info", _json()),
        sa.PrimaryKeyConstraint("node", name="pk_cluster_nodes"),
    )
    op.create_table(
        "flow_leases",
        sa.Column("flow", sa.String(64), nullable=False),
        sa.Column("node", sa.String(128)),
        sa.Column("token", sa.BigInteger, nullable=False),
        sa.Column("acquired_ms", sa.BigInteger, nullable=False),
        sa.Column("expires_ms", sa.BigInteger, nullable=False),
        sa.Column("target", sa.String(128)),
        sa.PrimaryKeyConstraint("flow", name="pk_flow_leases"),
    )


def downgrade() -> None:
    op.drop_table("flow_leases")
    op.drop_table("cluster_nodes")
