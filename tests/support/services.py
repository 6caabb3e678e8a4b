"""Whether the services and tools a test needs are here: skip with a reason, or fail in CI
(FLOWDECK_REQUIRE_SERVICES=1), where they must run."""

from __future__ import annotations

import os
import socket

import pytest

REQUIRE_SERVICES = os.environ.get("FLOWDECK_REQUIRE_SERVICES") == "1"
PG_ADMIN_URL = os.environ.get("FLOWDECK_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def need_service(name: str, host: str, port: int) -> None:
    """Skip with a reason when a service is absent; in CI (FLOWDECK_REQUIRE_SERVICES=1) fail."""
    if _port_open(host, port):
        return
    msg = f"{name} is not reachable on {host}:{port}"
    if REQUIRE_SERVICES:
        pytest.fail(msg + " and FLOWDECK_REQUIRE_SERVICES=1")
    pytest.skip(msg)
