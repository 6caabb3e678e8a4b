"""Named crash points for the crash-point harness (tests/support/crashes.py).

``crash_point("after_raw_commit")`` is placed where a crash matters for durability: before
and after the raw commit, mid records upsert, between the records commit and the deferred
series write, mid series write, mid spool write, mid migration. With the environment
variable ``FLOWDECK_CRASH_AT=<point>:<n>`` set when the process starts, the n-th time
(default 1) the process passes that point it SIGKILLs itself: no cleanup, no flush, no
atexit, as a power cut or the OOM killer would. Unset (always, outside the harness),
``crash_point`` is a function that returns at once: the environment is read once, at import.
"""

from __future__ import annotations

import os
import signal

POINTS = (
    "mid_migration",  # schema created in the transaction, not committed
    "before_raw_commit",  # a run's raw payloads inserted, not committed
    "after_raw_commit",  # raw payloads committed, nothing processed
    "mid_records_upsert",  # records and latest written, not committed
    "after_records_commit",  # records committed; bookkeeping and series not yet
    "mid_series_write",  # series, roll-ups and raw status written, not committed
    "mid_spool_write",  # a spool file's bytes written, not fsynced or renamed
)


def _armed(spec: str) -> tuple[str, int]:
    name, _, n = spec.partition(":")
    if name not in POINTS or (n and not n.isdigit()):
        raise SystemExit(f"FLOWDECK_CRASH_AT={spec!r}: use <point>[:<n>], point one of "
                         + ", ".join(POINTS))
    return name, int(n or 1)


_SPEC = os.environ.get("FLOWDECK_CRASH_AT")

if not _SPEC:

    def crash_point(name: str) -> None:
        """Not armed: nothing to do."""

else:
    _POINT, _AT = _armed(_SPEC)
    _hits = 0

    def crash_point(name: str) -> None:
        """Armed: SIGKILL this process the n-th time it passes the armed point."""
        global _hits
        if name != _POINT:
            return
        _hits += 1
        if _hits >= _AT:
            os.kill(os.getpid(), signal.SIGKILL)


__all__ = ["POINTS", "crash_point"]
