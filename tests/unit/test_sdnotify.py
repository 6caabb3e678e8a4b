"""systemd's notify protocol over a real unix datagram socket."""

from __future__ import annotations

import os
import socket

from flowdeck.pipeline.core import sdnotify


def test_fields_arrive_as_one_datagram_of_lines(tmp_path, monkeypatch):
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as srv:
        srv.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert sdnotify.notify(READY=1, STATUS="running 2 flow(s)")
        assert srv.recv(4096) == b"READY=1\nSTATUS=running 2 flow(s)"


def test_the_abstract_namespace(monkeypatch):
    name = f"flowdeck-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as srv:
        srv.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.notify(WATCHDOG=1)
        assert srv.recv(4096) == b"WATCHDOG=1"


def test_without_systemd_nothing_is_sent_and_nothing_raises(tmp_path, monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify(READY=1) is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))  # nobody listening
    assert sdnotify.notify(READY=1) is False


def test_the_watchdog_pings_at_half_its_interval(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert sdnotify.watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # another process's
    assert sdnotify.watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_USEC")
    assert sdnotify.watchdog_interval() is None
