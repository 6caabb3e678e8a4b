"""Shared fixtures: stores on SQLite and on the PostgreSQL service, a simulator, clocks."""

from __future__ import annotations

import uuid

import pytest
from support.services import PG_ADMIN_URL, need_service

from flowdeck.pipeline.config import BUNDLED_CONFIG, load_config
from flowdeck.pipeline.core.clock import ManualClock
from flowdeck.storage.store import Store


def pytest_collection_modifyitems(config, items):
    """tests/e2e/ runs real subprocesses (daemons, tmux, Chromium): all of it is slow, so
    `make test-fast` (-m "not slow") leaves it out."""
    for item in items:
        if item.path.parent.name == "e2e":
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def pg_url():
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    need_service("PostgreSQL", "127.0.0.1", 5432)
    from sqlalchemy import create_engine, text

    name = f"flowdeck_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'flowdeck.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path):
    """Run a test on both databases."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'flowdeck.db'}"
    else:
        yield request.getfixturevalue("pg_url")


@pytest.fixture
def store(db_url):
    s = Store(db_url)
    yield s
    s.close()


@pytest.fixture
def sqlite_store(sqlite_url):
    s = Store(sqlite_url)
    yield s
    s.close()


@pytest.fixture
def demo_config():
    return load_config(BUNDLED_CONFIG)


@pytest.fixture
def clock():
    # 2026-11-24T12:00:30Z: mid-minute, so the simulator's minute grid is well inside the window.
    return ManualClock(1_795_521_630.0)
