"""systemd's notify protocol (sd_notify(3)): one datagram of ``KEY=VALUE`` lines to the
unix socket named by ``$NOTIFY_SOCKET`` (``@name``: the abstract namespace).

Without ``$NOTIFY_SOCKET`` (not started by systemd with ``Type=notify``) every call is a
no-op, so the daemon calls these unconditionally. A send that fails is reported (False)
and never raises: a service manager going away must not take the daemon down.
"""

from __future__ import annotations

import os
import socket


def _address() -> str | None:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr or not (addr.startswith("/") or addr.startswith("@")):
        return None
    return "\0" + addr[1:] if addr.startswith("@") else addr


def notify(**fields: str | int) -> bool:
    """``notify(READY=1, STATUS="running")``; True if a datagram was sent."""
    addr = _address()
    if addr is None or not fields:
        return False
    msg = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(msg)
        return True
    except OSError:
        return False


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings: half of ``$WATCHDOG_USEC`` (when it is meant for
    this process, ``$WATCHDOG_PID``), else None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(0.1, int(usec) / 2e6)
    except ValueError:
        return None
