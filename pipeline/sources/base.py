"""What every source kind returns: the bytes it fetched, or why it could not."""

from __future__ import annotations

from dataclasses import dataclass


class FetchError(Exception):
    """A fetch failed (timeout, connection refused, HTTP error). ``kind`` is for counting."""

    def __init__(self, kind: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind  # timeout | connect | http | protocol | io
        self.message = message
        self.status = status


@dataclass
class Fetched:
    """One payload: it becomes one raw row and one batch."""

    body: bytes
    content_type: str | None = None
    status: int | None = None
    truncated: bool = False
    origin: str = ""  # URL or file path, for the log
