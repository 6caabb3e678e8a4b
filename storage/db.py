"""Database setup: engines for SQLite (WAL) and PostgreSQL, and the schema check.

The schema is owned by Alembic. A store opened on an empty database creates
the schema (``create_if_empty``); a database at a revision this code does not
know, or at an older one, is refused with a clear message so that two
versions of flowdeck never write one database with different ideas of it.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event, inspect
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as SATimeoutError
from sqlalchemy.pool import NullPool

from flowdeck.storage.crashpoints import crash_point

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
DEFAULT_URL = "sqlite:///flowdeck.db"


class StoreError(Exception):
    """The store cannot be used (bad URL, unreachable, unknown schema)."""


def resolve_url(url: str | None, config_url: str | None = None) -> str:
    """--db, else FLOWDECK_DB, else the config's store URL, else ./flowdeck.db."""
    return url or os.environ.get("FLOWDECK_DB") or config_url or DEFAULT_URL


# The database is away (locked past the busy timeout, unreachable, connections refused):
# callers that can wait for it (the engine's raw spool) catch these.
UNAVAILABLE = (OperationalError, InterfaceError, SATimeoutError)


# SQLite checkpoints the WAL automatically inside the commit that takes it past this many
# pages. With a WalCheckpointer running, that only happens if the thread falls behind.
WAL_BACKSTOP_PAGES = 10_000  # ~40 MB of WAL


def _sqlite_pragmas(busy_timeout_ms: int):
    def on_connect(dbapi_conn, _record) -> None:
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        # A new file starts in incremental auto-vacuum (an existing one keeps its mode until
        # `flowdeck db vacuum`): retention gives freed pages back (storage/retention.py).
        cur.execute("PRAGMA auto_vacuum=INCREMENTAL")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA wal_autocheckpoint={WAL_BACKSTOP_PAGES}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()
    return on_connect


def make_engine(url: str, busy_timeout: float = 30.0) -> Engine:
    try:
        u = make_url(url)
    except ArgumentError:
        raise StoreError(f"not a database URL: {url!r}") from None
    if u.get_backend_name() == "sqlite":
        db = u.database
        if db and db != ":memory:" and not db.startswith("file:"):
            parent = Path(db).expanduser().resolve().parent
            if not parent.is_dir():
                raise StoreError(f"no such folder for the SQLite database: {parent}")
        # One connection per thread; the store writes from one thread at a time.
        engine = create_engine(u, poolclass=NullPool if db in (None, "", ":memory:") else None,
                               connect_args={"check_same_thread": False,
                                             "timeout": busy_timeout})
        event.listen(engine, "connect", _sqlite_pragmas(int(busy_timeout * 1000)))
        return engine
    if u.get_backend_name() == "postgresql":
        if u.drivername == "postgresql":
            u = u.set(drivername="postgresql+psycopg")
        # A network cut leaves a query waiting for an answer that never comes (the kernel
        # gives up after ~15 min): keepalives and tcp_user_timeout fail it within ~30 s,
        # so the engine spools and a cluster node gets its worker back (URL options win).
        alive = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
                 "keepalives_count": 3, "tcp_user_timeout": 30_000}
        return create_engine(u, pool_size=5, max_overflow=5, pool_pre_ping=True,
                             connect_args={k: v for k, v in alive.items() if k not in u.query})
    raise StoreError(f"unsupported database {u.get_backend_name()!r} (use sqlite or postgresql)")


class WalCheckpointer:
    """Checkpoints a SQLite database's WAL on a thread of its own, off the writer's commits.

    SQLite's automatic checkpoint (every 1,000 pages by default) runs inside the commit
    that crosses it, so the engine's worker paid for copying the WAL into the database
    file and its fsync: ~10 ms of each streaming run (a run of 600 records writes ~800
    pages; bench_feed / cProfile). Here a daemon thread runs a PASSIVE checkpoint (it
    never waits for readers or the writer) every ``interval`` seconds, which also writes
    a page rewritten by several runs once; commits stay as durable as before (WAL,
    synchronous=NORMAL). ``WAL_BACKSTOP_PAGES`` bounds the WAL if this thread lags.
    """

    def __init__(self, path: str, interval: float = 0.25) -> None:
        self.path = path
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="flowdeck-wal-checkpoint",
                                        daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        conn = None
        try:
            while not self._stop.wait(self.interval):
                try:
                    if conn is None:
                        conn = sqlite3.connect(self.path, timeout=0)
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error:
                    pass  # busy or away: next time (the backstop still applies)
        finally:
            if conn is not None:
                conn.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)


def sqlite_file(engine: Engine) -> str | None:
    """The absolute path of an engine's SQLite database file, or None (memory, PostgreSQL)."""
    if engine.dialect.name != "sqlite":
        return None
    db = engine.url.database
    if not db or db == ":memory:" or db.startswith("file:"):
        return None
    return str(Path(db).expanduser().resolve())


def alembic_config(engine: Engine) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    return cfg


def head_revision() -> str:
    return ScriptDirectory(str(MIGRATIONS)).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Bring the schema to the newest revision. Returns (before, after)."""
    before = _safe_current(engine)
    cfg = alembic_config(engine)
    with engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            # pysqlite opens no transaction for DDL (each CREATE commits by itself): open
            # one, so a crash mid-migration leaves the database as it was, not half made.
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
        crash_point("mid_migration")
    return before, head_revision()


def _safe_current(engine: Engine) -> str | None:
    try:
        return current_revision(engine)
    except OperationalError as exc:
        raise StoreError(f"cannot reach the database: {_short(exc)}") from None


def _short(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def check_schema(engine: Engine, *, create_if_empty: bool = True) -> str:
    """Make sure the schema is the one this code knows; create it in an empty database."""
    rev = _safe_current(engine)
    head = head_revision()
    if rev == head:
        return head
    if rev is None:
        tables = set(inspect(engine).get_table_names())
        if tables & {"records", "raw_payloads"}:
            raise StoreError("the database has flowdeck tables but no migration revision; "
                             "it was not created by flowdeck db upgrade")
        if not create_if_empty:
            raise StoreError("the database has no flowdeck schema; run: flowdeck db upgrade")
        upgrade(engine)
        return head
    known = {s.revision for s in ScriptDirectory(str(MIGRATIONS)).walk_revisions()}
    if rev in known:
        raise StoreError(f"the database schema is at revision {rev}, this flowdeck needs {head}; "
                         "run: flowdeck db upgrade")
    raise StoreError(f"the database schema is at revision {rev}, which this flowdeck does not "
                     "know (a newer version wrote it); refusing to start")
