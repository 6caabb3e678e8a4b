"""The database schema (SQLAlchemy Core). Alembic migrations in ``migrations/`` create it.

Times are integer epoch milliseconds (UTC) everywhere: portable between SQLite
and PostgreSQL, cheap to compare and to bucket for roll-ups.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# JSON on SQLite, JSONB on PostgreSQL.
Json = JSON().with_variant(JSONB(), "postgresql")
# Integer primary keys that autoincrement on both (SQLite needs INTEGER, not BIGINT).
Id = BigInteger().with_variant(Integer(), "sqlite")

# The configuration and stage versions that shaped records: the audit trail.
pipeline_versions = Table(
    "pipeline_versions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("flow", String(64), nullable=False),
    Column("digest", String(64), nullable=False),
    Column("config", Json, nullable=False),
    Column("stages", Json, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    UniqueConstraint("flow", "digest"),
)

runs = Table(
    "runs",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("flow", String(64), nullable=False),
    Column("trigger", String(32), nullable=False),  # schedule | once | manual | replay | resume
    Column("started_ms", BigInteger, nullable=False),
    Column("finished_ms", BigInteger),
    Column("status", String(16), nullable=False),  # running | ok | partial | failed
    Column("stats", Json),
    Column("error", Text),
    Index("ix_runs_flow_started", "flow", "started_ms"),
)

# Immutable, append-only copy of everything fetched, written before any processing.
raw_payloads = Table(
    "raw_payloads",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("flow", String(64), nullable=False),
    Column("source", String(64), nullable=False),
    Column("fetched_ms", BigInteger, nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("content_type", String(128)),
    Column("status_code", Integer),
    Column("size", BigInteger, nullable=False),
    Column("truncated", Boolean, nullable=False, default=False),
    Column("body", LargeBinary, nullable=False),
    Column("run_id", BigInteger),
    UniqueConstraint("flow", "source", "content_hash", name="uq_raw_flow_source_hash"),
    Index("ix_raw_flow_fetched", "flow", "fetched_ms"),
)

# Processing state of each raw payload (kept apart so raw rows stay immutable).
raw_status = Table(
    "raw_status",
    metadata,
    Column("raw_id", BigInteger, ForeignKey("raw_payloads.id"), primary_key=True),
    Column("outcome", String(16), nullable=False),  # ok | partial | rejected
    Column("processed_ms", BigInteger, nullable=False),
    Column("version_id", BigInteger),
    Column("records_in", Integer, nullable=False, default=0),
    Column("records_out", Integer, nullable=False, default=0),
)

# Validated records, stored as per-key blocks (migration 0007; docs/architecture.md
# "Storage layout"): the records of one key that one write brought, all in one hour,
# as one row whose ``body`` holds a column per record field (JSON arrays of equal
# length: ts_ms, data, quality, ...; ``flowdeck.storage.blocks``). A record is still one
# per (flow, key, ts): a write of a time already stored rewrites it in its block. Its
# id follows from its block's id and its position (``blocks.record_id``). ``records``
# is a view of one row per record over these blocks (migration 0007), for SQL reads.
record_blocks = Table(
    "record_blocks",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("flow", String(64), nullable=False),
    Column("key", String(128), nullable=False),
    Column("first_ms", BigInteger, nullable=False),  # its records' times lie in
    Column("last_ms", BigInteger, nullable=False),   # [first, last], in one hour
    Column("n", Integer, nullable=False),  # records in it (deleted ones not counted)
    Column("body", Json, nullable=False),
    # A key's blocks in time order (history, warm-up, roll-up recompute, rewrites), and
    # a flow's (export, retention).
    Index("ix_record_blocks_flow_key_first", "flow", "key", "first_ms"),
    Index("ix_record_blocks_flow_first", "flow", "first_ms"),
)

# The ``records`` view's rows, for reading with SQLAlchemy (not created by ``metadata``:
# the migrations create the view).
views = MetaData()
records = Table(
    "records",
    views,
    Column("id", BigInteger, primary_key=True),
    Column("flow", String(64), nullable=False),
    Column("key", String(128), nullable=False),
    Column("ts_ms", BigInteger, nullable=False),
    Column("data", Json, nullable=False),
    Column("quality", Float, nullable=False),
    Column("anomaly_score", Float, nullable=False),
    Column("anomalous", Boolean, nullable=False),
    Column("flags", Json, nullable=False),
    Column("sources", Json, nullable=False),
    Column("contributions", Json, nullable=False),  # "row": its one source is the row
    Column("raw_ids", Json, nullable=False),
    Column("version_id", BigInteger),
    Column("updated_ms", BigInteger, nullable=False),
)

# L3 cache: the newest record per key, kept current in the same transaction.
latest = Table(
    "latest",
    metadata,
    Column("flow", String(64), primary_key=True),
    Column("key", String(128), primary_key=True),
    Column("ts_ms", BigInteger, nullable=False),
    Column("data", Json, nullable=False),
    Column("quality", Float, nullable=False),
    Column("anomaly_score", Float, nullable=False),
    Column("anomalous", Boolean, nullable=False),
    Column("flags", Json, nullable=False),
    Column("sources", Json, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
)

# A series is one metric of one key of a flow. ``series_keys`` names it once and gives it
# an integer id, which the roll-ups are keyed by (migration 0004). Its points are not a
# table of their own: they are the records' values of that metric (``data``'s finite
# numbers), read from ``records`` (migration 0006; docs/architecture.md "Storage
# layout"), so a record's values are stored once.
series_keys = Table(
    "series_keys",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("flow", String(64), nullable=False),
    Column("key", String(128), nullable=False),
    Column("metric", String(64), nullable=False),
    UniqueConstraint("flow", "key", "metric", name="uq_series_keys_flow_key_metric"),
)


# Roll-ups: one row per series and minute or hour (count, sum, min, max), by series id
# too (migration 0004), clustered on it on SQLite (WITHOUT ROWID, migration 0002).
def _rollup(name: str) -> Table:
    return Table(
        name,
        metadata,
        Column("sid", BigInteger, primary_key=True, autoincrement=False),
        Column("bucket_ms", BigInteger, primary_key=True, autoincrement=False),
        Column("n", Integer, nullable=False),
        Column("sum", Float, nullable=False),
        Column("min", Float, nullable=False),
        Column("max", Float, nullable=False),
        sqlite_with_rowid=False,
    )


series_1m = _rollup("series_1m")
series_1h = _rollup("series_1h")
ROLLUP_1M, ROLLUP_1H = 60_000, 3_600_000
ROLLUPS = {ROLLUP_1M: series_1m, ROLLUP_1H: series_1h}

quarantine = Table(
    "quarantine",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("flow", String(64), nullable=False),
    Column("source", String(64), nullable=False),
    Column("raw_id", BigInteger, ForeignKey("raw_payloads.id"), nullable=False),
    Column("item", Integer, nullable=False),  # index in the payload; -1 = the whole payload
    Column("stage", String(32), nullable=False),
    Column("reason", String(64), nullable=False),
    Column("message", Text, nullable=False),
    Column("record", Json),
    Column("created_ms", BigInteger, nullable=False),
    Column("state", String(16), nullable=False, default="open"),  # open | replayed
    Column("replayed_ms", BigInteger),
    UniqueConstraint("raw_id", "item", name="uq_quarantine_raw_item"),
    Index("ix_quarantine_flow_state", "flow", "state"),
)

issues = Table(
    "issues",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("flow", String(64), nullable=False),
    Column("kind", String(32), nullable=False),  # conflict | low_quality | anomaly | quarantine | source
    Column("severity", String(16), nullable=False),  # info | warning | error | critical
    Column("state", String(16), nullable=False),  # open | acknowledged | resolved | muted
    Column("title", Text, nullable=False),
    Column("detail", Json, nullable=False),
    Column("fingerprint", String(255), nullable=False),
    Column("key", String(128)),
    Column("source", String(64)),
    Column("count", Integer, nullable=False, default=1),
    Column("first_ms", BigInteger, nullable=False),
    Column("last_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    Column("muted_until_ms", BigInteger),
    Column("actor", String(64)),
    Column("record_ids", Json, nullable=False),
    Column("raw_ids", Json, nullable=False),
    Index("ix_issues_flow_state", "flow", "state"),
    Index("ix_issues_fingerprint", "fingerprint"),
)

actions = Table(
    "actions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("ts_ms", BigInteger, nullable=False),
    Column("flow", String(64)),
    Column("source", String(64)),
    Column("action", String(32), nullable=False),
    Column("actor", String(64), nullable=False),  # auto | operator name
    Column("reason", Text, nullable=False),
    Column("outcome", String(16), nullable=False),  # ok | failed | skipped
    Column("duration_ms", Float),
    Column("detail", Json),
    Index("ix_actions_flow_ts", "flow", "ts_ms"),
)

# Per-source recovery state (breaker, failures) that survives a restart.
source_state = Table(
    "source_state",
    metadata,
    Column("flow", String(64), primary_key=True),
    Column("source", String(64), primary_key=True),
    Column("state", Json, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
)

# Scale-out (storage/leases.py): the nodes of a cluster and who owns each flow. Times are
# epoch ms of the *database's* clock (clock_timestamp()), never a node's.
cluster_nodes = Table(
    "cluster_nodes",
    metadata,
    Column("node", String(128), primary_key=True),
    Column("started_ms", BigInteger, nullable=False),
    Column("heartbeat_ms", BigInteger, nullable=False),
    Column("state", String(16), nullable=False),  # up | stopped
    Column("info", Json),  # pid, host, feed URL
)

flow_leases = Table(
    "flow_leases",
    metadata,
    Column("flow", String(64), primary_key=True),
    Column("node", String(128)),  # NULL: released
    # The fencing token: incremented at every acquisition, checked in every write
    # transaction of the flow (a node holding an older one is refused).
    Column("token", BigInteger, nullable=False),
    Column("acquired_ms", BigInteger, nullable=False),
    Column("expires_ms", BigInteger, nullable=False),
    Column("target", String(128)),  # an operator's `move FLOW NODE`: only it may acquire
)
