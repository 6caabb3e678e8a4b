"""Secret redaction: what must never reach a log line, an error message, the feed or an export.

Two kinds of secret are removed from any text given to :func:`redact`:

- shapes that are secret wherever they appear: the password of a URL
  (``https://user:pass@host``), the value of a ``token``/``api_key``/``password``-like
  query parameter or ``key=value`` pair, and the value of an ``Authorization``,
  ``X-Api-Key``, ``Cookie`` or ``*-Token`` header written as ``Name: value``;
- the exact values registered with :func:`register_secret`: the credentials sources read
  from environment variables or files (``headers_from_env``, ``params_from_env``,
  ``headers_from_file`` in the config), the feed token. A registered value is replaced
  wherever it appears, whatever surrounds it.

The registry is process-wide (a secret read once is a secret for the life of the process)
and guarded by a lock; :func:`redact` reads a snapshot without the lock.
"""

from __future__ import annotations

import re
import threading
from typing import Any

MASK = "***"

# Values shorter than this are not registered: masking every "1" or "on" would garble logs
# without protecting anything (no credential is that short).
MIN_SECRET_LEN = 4

_SECRET_NAMES = (r"(?:access[_-]?token|refresh[_-]?token|id[_-]?token|auth[_-]?token|token|"
                 r"api[_-]?key|apikey|api[_-]?secret|client[_-]?secret|secret|password|passwd|"
                 r"pwd|signature|private[_-]?key|session[_-]?id)")

# https://user:password@host -> https://user:***@host
_URL_USERINFO = re.compile(r"(?P<pre>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@]*:)(?P<secret>[^\s@/]+)(?=@)")
# ?token=abc&x=1, api_key=abc, "password": "abc" (JSON-ish), password: abc
_QUERY = re.compile(r"(?P<pre>(?<![A-Za-z0-9])" + _SECRET_NAMES + r"=)(?P<secret>[^\s&#\"',;]+)",
                    re.IGNORECASE)
_JSONISH = re.compile(r"(?P<pre>[\"'](?:" + _SECRET_NAMES[3:-1] + r")[\"']\s*:\s*[\"'])"
                      r"(?P<secret>[^\"']+)", re.IGNORECASE)
# Authorization: Bearer abc / X-Api-Key: abc / Cookie: a=b (up to the end of the line or a quote)
SECRET_HEADERS = re.compile(r"^(?:authorization|proxy-authorization|cookie|set-cookie|"
                            r"x-[a-z0-9-]*(?:key|token|secret|auth)[a-z0-9-]*|"
                            r"[a-z0-9-]*(?:api-key|apikey|token|secret|password))$", re.IGNORECASE)
_HEADER = re.compile(r"(?P<pre>\b(?:authorization|proxy-authorization|cookie|set-cookie|"
                     r"x-[a-z0-9-]*(?:key|token|secret|auth)[a-z0-9-]*)[\"']?\s*[:=]\s*[\"']?"
                     r"(?:(?:bearer|basic|token|digest)\s+)?)(?P<secret>[^\s\"',;}]+)",
                     re.IGNORECASE)
# Query parameters that carry credentials when written in a config (a bare "key" or
# "sig" too: in free text those words are too common to mask by name).
SECRET_PARAMS = re.compile(r"^(?:" + _SECRET_NAMES + r"|key|sig)$", re.IGNORECASE)

_lock = threading.Lock()
_secrets: tuple[str, ...] = ()
_secret_re: re.Pattern[str] | None = None


def register_secret(value: str | None) -> None:
    """Treat ``value`` as a secret from now on, wherever it appears."""
    global _secrets, _secret_re
    if not value or len(value) < MIN_SECRET_LEN:
        return
    with _lock:
        if value in _secrets:
            return
        # Longest first, so a secret containing another is masked whole.
        _secrets = tuple(sorted({*_secrets, value}, key=len, reverse=True))
        _secret_re = re.compile("|".join(re.escape(s) for s in _secrets))


def registered() -> int:
    """How many exact secret values are registered (for tests and `flowdeck check`)."""
    return len(_secrets)


def _mask(m: re.Match[str]) -> str:
    return m.group("pre") + MASK


def redact(text: str) -> str:
    """``text`` with every registered secret and every secret-shaped value masked."""
    if not text:
        return text
    rx = _secret_re
    if rx is not None:
        text = rx.sub(MASK, text)
    if "://" in text:
        text = _URL_USERINFO.sub(_mask, text)
    if "=" in text:
        text = _QUERY.sub(_mask, text)
    if ":" in text or "=" in text:
        text = _HEADER.sub(_mask, text)
        text = _JSONISH.sub(_mask, text)
    return text


def redact_obj(obj: Any) -> Any:
    """A copy of a JSON-like value with every string redacted (dict keys kept)."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {k: redact_obj(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [redact_obj(v) for v in obj]
    return obj
