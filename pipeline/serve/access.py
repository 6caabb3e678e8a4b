"""Who may use the feed's port: the bind address, the token, Host and Origin checks.

:class:`Gate` is built from the feed's config (bind host, token, allowed origins) and
refuses to be built for an unsafe one: on a loopback bind no token is needed (and Host
must be a loopback name, against DNS rebinding); any other bind refuses to start without
one. ``Gate.admit`` looks at each request before the feed or the HTTP API sees it: with a
token, every request but ``/healthz``, ``/readyz`` and the static page must carry it
(``Authorization: Bearer`` or ``?token=``): HTTP answers 401 (``http_api``), the feed
closes with 4401 (``CLOSE_UNAUTHORIZED``). A request with a foreign ``Origin`` gets 403.

Also here: :func:`parse_bind` and :func:`is_loopback`, which the command line uses on
``--feed`` addresses, and :class:`FeedError`, the one-line reason a feed cannot start.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from websockets.http11 import Request, Response

from flowdeck.pipeline.serve.http_api import error

CLOSE_UNAUTHORIZED = 4401
LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


class FeedError(Exception):
    """The feed cannot start (bad bind address, missing token, port in use): one line."""


def parse_bind(text: str) -> tuple[str, int]:
    """'HOST:PORT', '[::1]:PORT' or ':PORT' (all interfaces) -> (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if not sep or not port_text:
            raise FeedError(f"cannot read bind address {text!r}: use HOST:PORT or [IPv6]:PORT")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise FeedError(
                f"cannot read bind address {text!r}: use HOST:PORT, e.g. 127.0.0.1:8765"
            )
    try:
        port = int(port_text)
    except ValueError:
        raise FeedError(
            f"cannot read bind address {text!r}: port {port_text!r} is not a number"
        ) from None
    if not 0 <= port <= 65535:
        raise FeedError(f"cannot read bind address {text!r}: port must be 0..65535")
    return host, port


def is_loopback(host: str) -> bool:
    """Whether a bind host (or a Host header's name) only reaches this machine."""
    name = host.strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _host_name(host_header: str) -> str:
    """The name part of a Host header ('127.0.0.1:8765' -> '127.0.0.1', '[::1]:80' -> '::1')."""
    if host_header.startswith("["):
        return host_header[1:].partition("]")[0]
    return host_header.rpartition(":")[0] if ":" in host_header else host_header


@dataclass(frozen=True, slots=True)
class Admitted:
    """A request the gate let through: where it goes, and what the handler must know."""

    path: str
    query: dict[str, list[str]]
    authorized: bool  # carried the token (or none is needed); False still reaches /healthz
    cors: dict[str, str]  # headers for an allowed cross-origin request, else empty


class Gate:
    """The feed's access rules for one bind address, token and origin allow-list."""

    def __init__(
        self, host: str, port: int, token: str | None, origins: list[str] | tuple[str, ...]
    ) -> None:
        if token is not None and not token.strip():
            raise FeedError("the feed token is empty")
        self.loopback = is_loopback(host) if host else False
        if not self.loopback and not token:
            where = f"{host or '*'}:{port}"
            raise FeedError(
                f"refusing to serve the feed on {where} without a token: pass "
                "--token or set the variable named by feed.token_env "
                "(no token is needed on 127.0.0.1)"
            )
        self.token = token
        self.origins = {o.rstrip("/") for o in origins}

    def admit(self, request: Request) -> Admitted | Response:
        """The refusal (400 or 403) for a request that must not get in, else what it may do."""
        parts = urlsplit(request.path)
        # keep_blank_values: "?limit=" is a bad limit (400), not an absent one
        path, query = parts.path, parse_qs(parts.query, keep_blank_values=True)
        try:
            host = request.headers.get("Host")
            origin = request.headers.get("Origin")
        except Exception:  # repeated Host or Origin headers
            return error(400, "repeated Host or Origin header")
        if (
            self.loopback
            and not self.token
            and host is not None
            and not is_loopback(_host_name(host))
        ):
            return error(
                403,
                f"Host {host!r} is not a loopback name: this feed serves "
                "loopback only (bind another address with a token)",
            )
        cors: dict[str, str] = {}
        if origin is not None:
            if not self._origin_allowed(origin, host):
                return error(403, f"Origin {origin!r} is not allowed (config feed.origins)")
            cors = {"Access-Control-Allow-Origin": origin.rstrip("/")}
        return Admitted(path, query, self._authorized(request, query), cors)

    def _authorized(self, request: Request, query: dict[str, list[str]]) -> bool:
        if not self.token:
            return True
        given = None
        auth = request.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        elif query.get("token"):
            given = query["token"][-1]
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def _origin_allowed(self, origin: str, host: str | None) -> bool:
        origin = origin.rstrip("/")
        if origin in self.origins or "*" in self.origins:
            return True
        # The bundled viewer page talks to the server it came from.
        return host is not None and origin in (f"http://{host}", f"https://{host}")


__all__ = [
    "CLOSE_UNAUTHORIZED",
    "Admitted",
    "FeedError",
    "Gate",
    "is_loopback",
    "parse_bind",
]
