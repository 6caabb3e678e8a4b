"""The HTTP side of the feed's port: probes, ``/metrics``, the read API and the viewer page.

Requests arrive through ``websockets``' ``process_request`` hook (no second web
framework): each gets one response and the connection closes. JSON answers
carry a strong ``ETag`` and a ``Cache-Control`` with ``stale-while-revalidate``,
and a request whose ``If-None-Match`` names the current ETag gets ``304 Not
Modified`` without a body, so a reverse proxy or CDN can cache the API (the L4
layer of DESIGN.md section 2). ``docs/api.md`` documents every endpoint.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import hashlib
import json
import re
import time
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlencode

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from flowdeck.pipeline.serve.control import ControlError
from flowdeck.pipeline.serve.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from flowdeck.pipeline.serve.protocol import ProtocolError, dumps, remote_actor
from flowdeck.pipeline.serve.queries import parse_since

if TYPE_CHECKING:
    from flowdeck.pipeline.serve.feed import FeedServer

VIEWER_PAGE = Path(__file__).with_name("viewer.html")
JSON = "application/json"
STEPS = {"raw": None, "1m": 60_000, "1h": 3_600_000}
ISSUE_STATES = ("open", "acknowledged", "resolved", "muted")
_FLOW_PATH = re.compile(r"^/api/flows/([^/]+)/(latest|history)$")
_ACTION_PATH = re.compile(r"^/api/actions/([A-Za-z_][A-Za-z0-9_]{0,63})$")
MAX_PARAMS = 8192  # characters of the ?params= JSON
# Seconds a response may be reused, then served stale while one request revalidates
# (the defaults; `cache.http` in the config overrides them per endpoint).
CACHE = {
    "flows": (1, 5),
    "latest": (1, 5),
    "history": (5, 30),
    "issues": (2, 10),
    "actions": (2, 10),
}



_REASON_TEXT = {"disk_full": "disk full", "io_error": "I/O error", "locked": "database locked",
                "unavailable": "database unavailable"}


def _write_outage(flows: dict[str, Any]) -> dict[str, Any] | None:
    """The store's write outage as the engine's flows see it (None: writes are taken):
    its reason, since when, the driver's message and each flow's spool meanwhile."""
    down = {name: f.get("store") or {} for name, f in flows.items()}
    down = {name: st for name, st in down.items() if st.get("available") is False}
    if not down:
        return None
    first = next(iter(down.values()))
    since = [st["down_since_ms"] for st in down.values() if st.get("down_since_ms")]
    return {"reason": first.get("reason") or "unavailable",
            "error": first.get("error"),
            "since_ms": min(since) if since else None,
            "flows": {name: {"down_since_ms": st.get("down_since_ms"),
                             "buffered": st.get("buffered", 0),
                             "dropped": st.get("dropped", 0),
                             "spool_refused": st.get("spool_refused"),
                             "outage": st.get("outage")}
                      for name, st in down.items()}}

class BadRequest(Exception):
    """A request the API refuses: status and one line of explanation."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def response(
    status: int,
    body: bytes = b"",
    content_type: str | None = JSON,
    headers: dict[str, str] | None = None,
) -> Response:
    """A complete HTTP/1.1 response; the connection closes after it."""
    st = HTTPStatus(status)
    h = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("X-Content-Type-Options", "nosniff"),
        ]
    )
    if status != 304:
        h["Content-Length"] = str(len(body))
        if content_type:
            h["Content-Type"] = content_type
    for k, v in (headers or {}).items():
        h[k] = v
    return Response(st.value, st.phrase, h, body if status != 304 else b"")


def error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return response(status, dumps({"error": message}), JSON, headers)


def etag_of(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an If-None-Match header names this ETag (weak comparison, as RFC 9110 asks)."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    tags = [t.strip() for t in if_none_match.split(",")]
    return any((t[2:] if t.startswith("W/") else t) == etag for t in tags)


def _int(query: dict[str, list[str]], name: str, default: int, lo: int, hi: int) -> int:
    raw = _one(query, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise BadRequest(f"{name} must be between {lo} and {hi}, got {value}")
    return value


def _one(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


class ViewerPage:
    """The browser viewer: one static HTML file with inline script and style.

    It is served with a Content-Security-Policy that allows exactly its own
    inline script and style (by hash) and websocket connections back to this
    host, nothing else.
    """

    def __init__(self, path: Path = VIEWER_PAGE) -> None:
        self.body = path.read_bytes()
        text = self.body.decode()
        hashes = {}
        for tag in ("script", "style"):
            blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", text, re.S)
            hashes[tag] = " ".join(
                "'sha256-" + base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() + "'"
                for b in blocks
            )
        self.script_src = hashes["script"]
        self.style_src = hashes["style"]
        self.etag = etag_of(self.body)

    def respond(self, request: Request) -> Response:
        host = request.headers.get("Host", "")
        csp = (
            f"default-src 'none'; script-src {self.script_src}; "
            f"style-src {self.style_src}; connect-src 'self' ws://{host} wss://{host}; "
            "img-src 'self' data:; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'"
        )
        headers = {
            "ETag": self.etag,
            "Cache-Control": "no-cache",
            "Content-Security-Policy": csp,
            "Referrer-Policy": "no-referrer",
        }
        if matches(request.headers.get("If-None-Match"), self.etag):
            return response(304, headers=headers)
        return response(200, self.body, "text/html; charset=utf-8", headers)


class HttpApi:
    """Answers every plain HTTP request on the feed's port."""

    def __init__(self, server: FeedServer) -> None:
        self.server = server
        self.page = ViewerPage()
        self.started = time.monotonic()

    async def handle(
        self,
        request: Request,
        path: str,
        query: dict[str, list[str]],
        authorized: bool,
        cors: dict[str, str],
    ) -> Response:
        action = _ACTION_PATH.match(path)
        if action and request.method != "POST":
            return error(405, "an action is a POST", {"Allow": "POST", **cors})
        if request.method not in ("GET", "HEAD") and not action:
            return error(
                405,
                f"{request.method} is not supported: the API is read-only "
                "(operator actions: POST /api/actions/{name}, or the websocket feed)",
                {"Allow": "GET, HEAD", **cors},
            )
        try:
            if action:
                return await self._act(request, action.group(1), query, authorized, cors)
            resp = await self._route(request, path, query, authorized, cors)
        except BadRequest as exc:
            resp = error(exc.status, str(exc), cors)
        except ControlError as exc:
            resp = error(404 if str(exc).startswith("no ") else 400, str(exc), cors)
        except (TimeoutError, OSError) as exc:
            resp = error(503, f"the engine did not answer: {type(exc).__name__}: {exc}", cors)
        if request.method == "HEAD":
            resp.body = b""
        return resp

    async def _route(
        self,
        request: Request,
        path: str,
        query: dict[str, list[str]],
        authorized: bool,
        cors: dict[str, str],
    ) -> Response:
        if path in ("/", "/index.html"):
            return self.page.respond(request)
        if path == "/healthz":
            return response(
                200,
                dumps({"status": "ok", "uptime_s": round(time.monotonic() - self.started, 1)}),
                JSON,
                {"Cache-Control": "no-store", **cors},
            )
        if path == "/readyz":
            return await self._ready(authorized, cors)
        if not authorized:
            return error(
                401,
                "missing or wrong token: send 'Authorization: Bearer <token>' or ?token=<token>",
                {"WWW-Authenticate": 'Bearer realm="flowdeck"', **cors},
            )
        if path == "/metrics":
            await self.server.refresh_metrics()
            return response(
                200,
                self.server.metrics.render(),
                METRICS_CONTENT_TYPE,
                {"Cache-Control": "no-store"},
            )
        server = self.server
        if path == "/api/flows":
            snap = await server.snapshot()
            return self._cached(request, "flows", {"flows": server.all_flows(snap)}, cors)
        m = _FLOW_PATH.match(path)
        if m:
            flow = unquote(m.group(1))
            if flow not in server.flows:
                raise BadRequest(f"no flow {flow!r} (flows: {', '.join(server.flows)})", 404)
            if m.group(2) == "latest":
                key = _one(query, "key")
                # Every source down: these are the last-known-good values, and say so.
                stale = await server.flow_stale(flow)

                async def latest() -> dict:
                    rows = await server.control.query("latest", flow=flow, key=key)
                    return {"flow": flow, "stale": stale, "records": rows}

                return await self._edge(request, "latest", flow, key, query, latest, cors,
                                        extra="stale" if stale else "")
            return await self._edge(request, "history", flow, _one(query, "key"), query,
                                    lambda: self._history(flow, query), cors)
        if path == "/api/issues":
            state = _one(query, "state")
            if state is None:
                states: Any = ["open", "acknowledged", "muted"]
            elif state == "all":
                states = None
            elif state in ISSUE_STATES:
                states = state
            else:
                raise BadRequest(f"state must be one of {', '.join(ISSUE_STATES)} or all")
            flow = self._flow_param(query)
            rows = await server.control.query(
                "issues", flow=flow, state=states, limit=_int(query, "limit", 200, 1, 1000)
            )
            return self._cached(request, "issues", {"issues": rows}, cors)
        if path == "/api/actions":
            rows = await server.control.query(
                "actions", flow=self._flow_param(query), limit=_int(query, "limit", 100, 1, 1000)
            )
            return self._cached(request, "actions", {"actions": rows}, cors)
        return error(404, f"no such endpoint {path!r} (see docs/api.md)", cors)

    async def _act(
        self,
        request: Request,
        name: str,
        query: dict[str, list[str]],
        authorized: bool,
        cors: dict[str, str],
    ) -> Response:
        """``POST /api/actions/{name}``: an operator action, as the feed's ``action`` message.

        The HTTP parser of the feed's port takes no request body, so parameters come in
        the query string: ``?params=<JSON object>``, and/or one ``?name=value`` each (a
        value that reads as JSON, like ``600`` or ``true``, is taken as such). A foreign
        Origin was already refused (CSRF); the token is required whenever one is set.
        """
        headers = {"Cache-Control": "no-store", **cors}
        if not authorized:
            return error(
                401,
                "missing or wrong token: send 'Authorization: Bearer <token>' or ?token=<token>",
                {"WWW-Authenticate": 'Bearer realm="flowdeck"', **headers},
            )
        params: dict[str, Any] = {}
        raw = _one(query, "params")
        if raw is not None:
            if len(raw) > MAX_PARAMS:
                raise BadRequest(f"params is longer than {MAX_PARAMS} characters", 413)
            try:
                params = json.loads(raw)
            except ValueError as exc:
                raise BadRequest(f"params is not JSON: {exc}") from None
            if not isinstance(params, dict):
                raise BadRequest("params must be a JSON object")
        for key, values in query.items():
            if key in ("params", "token", "actor"):
                continue
            try:
                params[key] = json.loads(values[-1])
            except ValueError:
                params[key] = values[-1]
        try:
            actor = remote_actor(request.headers.get("X-Flowdeck-Actor") or _one(query, "actor"))
        except ProtocolError as exc:
            raise BadRequest(str(exc)) from None
        try:
            result = await self.server.control.act(
                name, **({"actor": actor} if actor else {}), **params)
        except ControlError as exc:
            status = 404 if str(exc).startswith(("unknown action", "no ")) else 400
            return error(status, str(exc), headers)
        except (TypeError, KeyError, ValueError) as exc:
            what = f"missing parameter {exc}" if isinstance(exc, KeyError) else str(exc)
            return error(400, f"action {name!r}: {what}", headers)
        body = {"action": name, "ok": bool(result.get("ok", True)), "result": result}
        return response(200 if body["ok"] else 409, dumps(body), JSON, headers)

    def _flow_param(self, query: dict[str, list[str]]) -> str | None:
        flow = _one(query, "flow")
        if flow is not None and flow not in self.server.flows:
            raise BadRequest(f"no flow {flow!r} (flows: {', '.join(self.server.flows)})", 404)
        return flow

    async def _history(self, flow: str, query: dict[str, list[str]]) -> dict:
        key, metric = _one(query, "key"), _one(query, "metric")
        if not key or not metric:
            raise BadRequest("history needs ?key=<series key>&metric=<metric>")
        snap = await self.server.snapshot()
        metrics = snap["flows"][flow].get("metrics") or []
        if metrics and metric not in metrics:
            raise BadRequest(
                f"flow {flow!r} has no metric {metric!r} (metrics: {', '.join(metrics)})", 404
            )
        step = _one(query, "step") or "raw"
        if step not in STEPS:
            raise BadRequest(f"step must be one of {', '.join(STEPS)}, got {step!r}")
        try:
            since = parse_since(_one(query, "since"), int(time.time() * 1000)) or 0
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        limit = _int(query, "limit", 2000, 1, 5000)
        points = await self.server.control.query(
            "history",
            flow=flow,
            key=key,
            metric=metric,
            since_ms=since,
            step_ms=STEPS[step],
            limit=limit,
        )
        return {
            "flow": flow,
            "key": key,
            "metric": metric,
            "step": step,
            "since_ms": since,
            "points": [list(p) for p in points],
        }

    async def _edge(self, request: Request, kind: str, flow: str, key: str | None,
                    query: dict[str, list[str]], build, cors: dict[str, str],
                    extra: str = "") -> Response:
        """A per-flow read whose encoded body and ETag are cached until its data changes.

        With the engine in this process the body is kept in its L1 cache (invalidated with
        the values it shows), so a repeated request, a 304 above all, costs a lookup.
        """
        caches = self.server.caches
        if caches is None:
            return self._cached(request, kind, await build(), cors)
        variant = kind + "?" + urlencode(
            sorted((k, v) for k, vs in query.items() if k != "token" for v in vs)) + extra

        async def encoded() -> bytes:
            return dumps(await build())

        body, etag = await caches.http_response(flow, key, variant, encoded)
        return self._respond(request, kind, body, etag, cors)

    def _cached(self, request: Request, kind: str, obj: Any, cors: dict[str, str]) -> Response:
        body = dumps(obj)
        return self._respond(request, kind, body, etag_of(body), cors)

    def _respond(self, request: Request, kind: str, body: bytes, etag: str,
                 cors: dict[str, str]) -> Response:
        """200 with the body, or 304 when If-None-Match names its ETag (an L4 hit)."""
        caches = self.server.caches
        policy = caches.http_policy(kind) if caches is not None else None
        max_age, swr = policy or CACHE[kind]
        scope = "private" if self.server.token else "public"
        headers = {
            "ETag": etag,
            "Vary": "Authorization, Origin",
            "Cache-Control": f"{scope}, max-age={max_age:g}, stale-while-revalidate={swr:g}",
            **cors,
        }
        not_modified = matches(request.headers.get("If-None-Match"), etag)
        if caches is not None:
            caches.count_http(not_modified)
        if not_modified:
            return response(304, headers=headers)
        return response(200, body, JSON, headers)

    async def _ready(self, authorized: bool, cors: dict[str, str]) -> Response:
        """Ready when the store answers and the scheduler runs; flow states for the curious."""
        problems = []
        store = "ok"
        cluster = None
        try:
            await asyncio.wait_for(self.server.control.query("actions", limit=1), 3.0)
        except Exception as exc:  # any failure to reach the store means not ready
            store = f"unreachable: {type(exc).__name__}: {exc}"
            problems.append("store " + store)
        flows: dict[str, str] = {}
        scheduler = "unknown"
        try:
            snap = await asyncio.wait_for(self.server.snapshot(fresh_after=time.monotonic()), 3.0)
            active = [f for f in snap["flows"].values() if not f.get("paused")]
            running = any(f.get("next_run_ms") is not None for f in active) or not active
            scheduler = "running" if running else "stopped"
            if not running:
                problems.append("scheduler is not running")
            flows = {name: f.get("state", "unknown") for name, f in snap["flows"].items()}
            outage = _write_outage(snap["flows"])
            cluster = snap.get("cluster")
            if cluster is not None and not cluster["valid"]:
                problems.append(f"cluster: node {cluster['node']} cannot renew its leases"
                                + (f" ({cluster['error']})" if cluster.get("error") else ""))
        except Exception as exc:
            scheduler = f"unknown: {type(exc).__name__}: {exc}"
            problems.append("engine did not answer")
            outage = None
        if outage is not None:
            # Reads may still answer while writes fail (a full disk): the engine's store
            # guard knows, and it is what decides whether fetched data is kept.
            store = f"unavailable for writes: {outage['reason']}"
            problems.append(f"store_unavailable: {_REASON_TEXT.get(outage['reason'], outage['reason'])}")
        body: dict[str, Any] = {"ready": not problems, "store": store, "scheduler": scheduler}
        if outage is not None:
            body["reason"] = problems[-1]
            body["store_outage"] = outage if authorized else {
                k: outage[k] for k in ("reason", "since_ms")}
        if cluster is not None:  # a node of a cluster: which flows it runs, and the others
            body["cluster"] = cluster if authorized else {
                k: cluster[k] for k in ("node", "valid", "last_renewal_age_s")}
        if authorized:
            body["flows"] = flows
        if problems:
            body["problems"] = problems
        return response(
            200 if not problems else 503, dumps(body), JSON, {"Cache-Control": "no-store", **cors}
        )
