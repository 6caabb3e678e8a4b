"""Loopback data sources shaped like real public APIs, with scriptable faults.

One ``websockets`` server on 127.0.0.1 answers plain HTTP GETs through ``process_request``
(weather and FX endpoints, ``/healthz``) and streams FX quotes over a websocket
(``/stream/fx``).  Everything is deterministic for a seed: an observation's value is a
pure function of (seed, source, key, minute), computed with hashlib, so the same request
at the same simulated time returns the same bytes in any process.

Simulated time comes from the injected :class:`~flowdeck.pipeline.core.clock.Clock`.
``t0 = clock.now()`` at :meth:`Simulator.start`; scenario fault times are relative to t0.
Observations exist at every whole UTC minute; a poll returns the last 5 minutes.

Endpoints (``source`` name -> path):

========  =========================  ==============================================
metnet    GET /weather/metnet/obs    GeoJSON FeatureCollection, degF / inHg / mph
airnet    GET /weather/airnet/latest columnar JSON, degC / hPa / m/s, epoch seconds
skyobs    GET /weather/skyobs/obs.csv CSV, degC / hPa / km/h, "YYYY-MM-DD HH:MM:SS"
fxquote   GET /fx/fxquote/rates      JSON quotes, ISO-8601 "Z"
ecbx      GET /fx/ecbx/rates.csv     CSV of inverted pairs, epoch milliseconds
slowfx    GET /fx/slowfx/rates       nested columnar JSON, 2 minutes behind
fxstream  WS  /stream/fx             one JSON text message per pair per minute
========  =========================  ==============================================

The sources, stations and true values are in ``catalogue.py``, the fault scenarios in
``scenarios.py``; this module is the server that serves them.

Run standalone: ``python -m flowdeck.pipeline.demo.simulator --scenario chaos``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import csv
import email.utils
import hashlib
import http
import io
import json
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from websockets.asyncio.server import Server, ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from flowdeck.pipeline.core.clock import Clock, SystemClock
from flowdeck.pipeline.demo.catalogue import (
    CALIBRATION_BIAS,
    DEEP_NESTING,
    ECBX_SYMBOLS,
    FX_NOISE_REL,
    HPA_TO_INHG,
    HTML_ERROR_PAGE,
    HUGE_BYTES,
    MALFORMED_VARIANTS,
    MS_TO_KMH,
    MS_TO_MPH,
    NETWORKS,
    PAIRS,
    PRESSURE_NOISE_HPA,
    ROUTES,
    SOURCES,
    STATIONS,
    STREAM_PATH,
    TEMP_NOISE_C,
    TIMEOUT_SECONDS,
    WIND_NOISE_MS,
    WINDOW_MINUTES,
    fx_decimals,
    hash_sym,
    hash_unit,
    iso_utc,
    iso_z,
    plain_utc,
    round_sig,
    true_fx,
    true_weather,
)
from flowdeck.pipeline.demo.scenarios import (
    TRUTH_KINDS,
    Fault,
    Scenario,
    available_scenarios,
    parse_amount,
)

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class _Anomaly:
    kind: str
    flow: str
    key: str
    metric: str
    start: float  # epoch seconds, whole minute
    end: float | None  # exclusive; None = sustained
    amount: float
    relative: bool

    def covers(self, ts: float) -> bool:
        return ts >= self.start and (self.end is None or ts < self.end)


def _minute_ceil(ts: float) -> float:
    return math.ceil(ts / 60.0) * 60.0


# --------------------------------------------------------------------------- the simulator


class Simulator:
    def __init__(
        self,
        *,
        seed: int = 7,
        scenario: Scenario | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.seed = int(seed)
        self.scenario = scenario or Scenario(name="normal", description="no faults")
        self.clock = clock or SystemClock()
        self.request_counts: dict[str, int] = dict.fromkeys(SOURCES, 0)
        self.t0: float | None = None
        self.host = "127.0.0.1"
        self.port: int | None = None
        self._server: Server | None = None
        self._stopping: asyncio.Event | None = None
        self._anomalies: list[_Anomaly] = []
        self._malformed_hits: dict[tuple[int, str], int] = {}

    # -- lifecycle
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        if self._server is not None:
            raise RuntimeError("simulator already started")
        self.begin()
        self._stopping = asyncio.Event()
        self._server = await ws_serve(
            self._ws_handler,
            host,
            port,
            process_request=self._process_request,
            server_header="flowdeck-simulator",
            open_timeout=TIMEOUT_SECONDS + 60.0,  # process_request may sleep (latency/timeout)
            close_timeout=2.0,
            logger=logging.getLogger(f"{__name__}.ws"),
        )
        sock = next(iter(self._server.sockets))
        self.host = host
        self.port = sock.getsockname()[1]
        return self.port

    def begin(self) -> None:
        """Set t0 to the clock's now (the scenario's times count from it): :meth:`start`
        does it; an offline reader of :meth:`payload` calls it instead of starting."""
        self.t0 = self.clock.now()
        self._anomalies = self._build_anomalies(self.t0)

    def payload(self, source: str, now: float) -> tuple[bytes, str]:
        """The body and Content-Type an HTTP source would answer at ``now`` (its data
        faults and drifts applied; request faults such as outages are not), without the
        server: for measuring what the pipeline makes of it (pipeline/demo/truth.py)."""
        if self.t0 is None:
            raise RuntimeError("call begin() or start() first")
        self.request_counts[source] += 1
        return self._payload(source, now, self._active_faults(source, now),
                             self.request_counts[source])

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        assert self._stopping is not None
        self._stopping.set()  # wakes sleeping faults and stream loops
        server.close()
        try:
            await asyncio.wait_for(server.wait_closed(), 5.0)
        except TimeoutError:
            for task in list(server.handler_tasks):
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("simulator not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        if self.port is None:
            raise RuntimeError("simulator not started")
        return f"ws://127.0.0.1:{self.port}{STREAM_PATH}"

    # -- labels
    def _build_anomalies(self, t0: float) -> list[_Anomaly]:
        out = []
        for f in self.scenario.faults:
            if f.kind not in TRUTH_KINDS:
                continue
            start = _minute_ceil(t0 + (f.at or 0.0))
            duration = (
                f.duration if f.duration is not None else (60.0 if f.kind == "spike" else None)
            )
            end = None if duration is None else start + max(1, math.ceil(duration / 60.0)) * 60.0
            amount, relative = parse_amount(f.magnitude if f.kind == "spike" else f.delta)  # type: ignore[arg-type]
            out.append(
                _Anomaly(f.kind, f.flow, f.key, f.metric, start, end, amount, relative)  # type: ignore[arg-type]
            )
        return out

    def labels(self) -> list[dict]:
        """Injected anomalies; [start, end) in ISO-8601 UTC, end None for a sustained shift."""
        if self.t0 is None:
            raise RuntimeError("labels are known after start()")
        rows = [
            {
                "flow": a.flow,
                "key": a.key,
                "metric": a.metric,
                "kind": a.kind,
                "start": iso_utc(a.start),
                "end": None if a.end is None else iso_utc(a.end),
            }
            for a in self._anomalies
        ]
        return sorted(rows, key=lambda r: (r["start"], r["flow"], r["key"], r["metric"]))

    def write_labels(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.labels(), indent=2) + "\n", encoding="utf-8")

    # -- truth (with injected anomalies)
    def _apply_anomalies(self, flow: str, key: str, metric: str, ts: float, value: float) -> float:
        for a in self._anomalies:
            if a.flow == flow and a.key == key and a.metric == metric and a.covers(ts):
                value = value * (1.0 + a.amount) if a.relative else value + a.amount
        return value

    def truth(self, flow: str, key: str, minute: int) -> dict[str, float]:
        """True values at an epoch minute, anomalies included (every source sees these)."""
        base = (
            true_weather(self.seed, key, minute)
            if flow == "weather"
            else {"rate": true_fx(self.seed, key, minute)}
        )
        ts = minute * 60.0
        return {m: self._apply_anomalies(flow, key, m, ts, v) for m, v in base.items()}

    def source_bias(self, source: str, key: str, metric: str, minute: int) -> tuple[float, bool]:
        """What the scenario's drift faults add to ``source``'s reading of ``metric`` at an
        epoch minute, over the truth (and the source's noise): ``(amount, relative)``,
        relative meaning a share of the value. The fixed calibration quirks are not in it."""
        elapsed = minute * 60.0 - (self.t0 if self.t0 is not None else minute * 60.0)
        total, rel = 0.0, False
        for f in self.scenario.faults:
            amount, relative = f.drift_bias(source, key, metric, elapsed)
            total += amount
            rel = rel or relative
        return total, rel

    def _drifted(self, source: str, key: str, metric: str, minute: int, value: float) -> float:
        amount, relative = self.source_bias(source, key, metric, minute)
        if not amount:
            return value
        return value * (1.0 + amount) if relative else value + amount

    # -- records
    def _keys(self, source: str) -> tuple[str, ...]:
        return NETWORKS[source] if source in NETWORKS else tuple(PAIRS)

    def _record(self, source: str, key: str, minute: int, ts: float) -> dict[str, Any]:
        """One observation in the source's native field names, units and time format."""
        seed, spec = self.seed, SOURCES[source]
        truth = self.truth(spec.flow, key, minute)
        if spec.flow == "weather":
            temp = (
                truth["temperature"]
                + TEMP_NOISE_C * hash_sym(seed, "noise", source, key, "temperature", minute)
                + CALIBRATION_BIAS.get((source, key, "temperature"), 0.0)
            )
            temp = self._drifted(source, key, "temperature", minute, temp)
            pres = self._drifted(source, key, "pressure", minute, truth["pressure"] + (
                PRESSURE_NOISE_HPA * hash_sym(seed, "noise", source, key, "pressure", minute)))
            wind = max(0.0, self._drifted(source, key, "wind_speed", minute, (
                truth["wind_speed"]
                + WIND_NOISE_MS * hash_sym(seed, "noise", source, key, "wind", minute))))
            if source == "metnet":
                st = STATIONS[key]
                return {
                    "_coords": [st.lon, st.lat],
                    "stationId": key,
                    "timestamp": iso_utc(ts),
                    "temperature": {
                        "value": round(temp * 9 / 5 + 32, 1),
                        "unitCode": "wmoUnit:degF",
                    },
                    "barometricPressure": {
                        "value": round(pres * HPA_TO_INHG, 2),
                        "unitCode": "inHg",
                    },
                    "windSpeed": {"value": round(wind * MS_TO_MPH, 1), "unitCode": "mph"},
                }
            if source == "airnet":
                return {
                    "site": key,
                    "epoch": int(ts),
                    "t_c": round(temp, 1),
                    "p_hpa": round(pres, 1),
                    "wind_ms": round(wind, 1),
                }
            return {
                "station": key,
                "observed_at": plain_utc(ts),
                "temp_c": round(temp, 1),
                "pressure_hpa": round(pres, 1),
                "wind_kmh": round(wind * MS_TO_KMH, 1),
            }
        rate = self._drifted(source, key, "rate", minute, truth["rate"] * (
            1.0 + FX_NOISE_REL * hash_sym(seed, "noise", source, key, "rate", minute)
        ))
        if source == "ecbx":
            return {
                "symbol": ECBX_SYMBOLS[key],
                "price": round_sig(1.0 / rate, 6),
                "timestamp": int(round(ts * 1000)),
            }
        if source == "slowfx":
            return {"sym": key, "px": round(rate, fx_decimals(key, coarse=True)), "t": iso_z(ts)}
        return {"pair": key, "rate": round(rate, fx_decimals(key)), "time": iso_z(ts)}

    def _records(
        self, source: str, minutes: range, faults: list[tuple[int, Fault]], n: int
    ) -> list[dict[str, Any]]:
        skew = sum(f.offset or 0.0 for _, f in faults if f.kind == "clock_skew")
        keys = self._keys(source)
        records = [self._record(source, k, m, m * 60 + skew) for m in minutes for k in keys]
        for i, f in faults:
            rng = random.Random(f"{self.seed}:{source}:{n}:{i}:{f.kind}")
            if f.kind == "out_of_order" and records:
                oldest = minutes.start
                for _ in range(f.older):
                    m = oldest - 1 - rng.randrange(0, 10)
                    records.append(self._record(source, rng.choice(keys), m, m * 60 + skew))
                rng.shuffle(records)
            elif f.kind == "duplicates" and records:
                picked = [j for j in range(len(records)) if rng.random() < f.fraction] or [0]
                for j in reversed(picked):
                    records.insert(j + 1, copy.deepcopy(records[j]))
        return records

    # -- malformed (record-level)
    def _corrupt_records(self, source: str, variant: str, records: list[dict], n: int) -> None:
        spec = SOURCES[source]
        rng = random.Random(f"{self.seed}:{source}:{n}:{variant}")
        picked = [r for r in records if rng.random() < 1 / 3] or records[:1]
        tabular = spec.fmt in ("columnar", "nested_columnar", "csv")
        for j, rec in enumerate(picked):
            if variant == "missing_fields":
                if tabular:
                    rec[spec.key_field] = None
                else:
                    rec.pop(spec.key_field, None)
            elif variant == "wrong_types":
                _set_value(rec, spec.primary, "warm" if spec.flow == "weather" else "n/a")
            elif variant == "nan":
                specials = (math.nan, math.inf, -math.inf)
                for k, name in enumerate(spec.numeric):
                    v = specials[(j + k) % 3]
                    if spec.fmt == "csv":
                        v = {0: "NaN", 1: "Infinity", 2: "-Infinity"}[(j + k) % 3]  # type: ignore[assignment]
                    _set_value(rec, name, v)

    # -- serialization
    def _serialize(self, source: str, records: list[dict], rename: dict[str, str]) -> bytes:
        spec = SOURCES[source]
        fields = [rename.get(f, f) for f in spec.fields]
        records = [{rename.get(k, k): v for k, v in r.items()} for r in records]
        if spec.fmt == "csv":
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n")
            writer.writerow(fields)
            for r in records:
                writer.writerow(["" if r.get(f) is None else r.get(f) for f in fields])
            return buf.getvalue().encode("utf-8")
        if spec.fmt == "geojson":
            features = []
            for r in records:
                coords = r.pop("_coords")
                features.append(
                    {
                        "type": "Feature",
                        "geometry": {"type": "Point", "coordinates": coords},
                        "properties": r,
                    }
                )
            doc: Any = {"type": "FeatureCollection", "features": features}
        elif spec.fmt == "columnar":
            doc = {"columns": fields, "rows": [[r.get(f) for f in fields] for r in records]}
        elif spec.fmt == "nested_columnar":
            doc = {
                "data": {"columns": fields, "rows": [[r.get(f) for f in fields] for r in records]}
            }
        else:  # quotes
            doc = {"provider": source, "quotes": records}
        return json.dumps(doc, separators=(",", ":")).encode("utf-8")

    def _payload(
        self, source: str, now: float, faults: list[tuple[int, Fault]], n: int
    ) -> tuple[bytes, str]:
        """Body and Content-Type of one answer (data faults and malformed variants applied)."""
        spec = SOURCES[source]
        cur = int(now // 60) - spec.lag_minutes
        window = WINDOW_MINUTES
        if n == 1 and self.scenario.backlog:  # the first answer: the scenario's backlog too
            window = max(window, int(self.scenario.backlog // 60) + WINDOW_MINUTES)
        minutes = range(cur - window + 1, cur + 1)
        records = self._records(source, minutes, faults, n)
        variant = self._malformed_variant(source, faults, n)
        if variant in ("missing_fields", "wrong_types", "nan"):
            self._corrupt_records(source, variant, records, n)
        body = self._serialize(source, records, _renames(faults))
        ctype = spec.content_type
        if variant == "truncated_json":
            body = body[: max(1, len(body) // 2)]
        elif variant == "html":
            body, ctype = HTML_ERROR_PAGE, "text/html; charset=utf-8"
        elif variant == "bad_utf8":
            first = str(records[0].get(spec.key_field, "")).encode() if records else b""
            if len(first) >= 2 and first in body:
                body = body.replace(first, first[:1] + b"\xc3\x28\xff" + first[1:], 1)
            else:
                body = body[: len(body) // 2] + b"\xff\xfe" + body[len(body) // 2 :]
        elif variant == "deep_nesting":
            body = b"[" * DEEP_NESTING + b"]" * DEEP_NESTING
        elif variant == "huge":
            body = body + _padding(b"\n" if spec.fmt == "csv" else b" ")
        return body, ctype

    def _chance(self, source: str, n: int, index: int, rate: float) -> bool:
        if rate >= 1.0:
            return True
        return hash_unit(self.seed, "chance", source, n, index) < rate

    def _malformed_variant(
        self, source: str, faults: list[tuple[int, Fault]], n: int
    ) -> str | None:
        for index, f in faults:
            if f.kind != "malformed":
                continue
            if not self._chance(source, n, index, f.rate):
                continue
            variants = f.variants or [v for v in MALFORMED_VARIANTS if v != "huge"]
            hits = self._malformed_hits.get((index, source), 0)
            self._malformed_hits[(index, source)] = hits + 1
            return variants[hits % len(variants)]
        return None

    def _active_faults(self, source: str, now: float) -> list[tuple[int, Fault]]:
        """(index in the scenario, fault) of the faults open for ``source`` at ``now``."""
        elapsed = now - (self.t0 if self.t0 is not None else now)
        return [
            (i, f)
            for i, f in enumerate(self.scenario.faults)
            if f.applies_to(source) and f.active(elapsed)
        ]

    # -- HTTP
    def _response(
        self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None
    ) -> Response:
        headers = Headers()
        headers["Date"] = email.utils.formatdate(self.clock.now(), usegmt=True)
        if content_type:
            headers["Content-Type"] = content_type
        headers["Content-Length"] = str(len(body))
        headers["Connection"] = "close"
        for k, v in (extra or {}).items():
            headers[k] = v
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        return Response(status, phrase, headers, body)

    def _json_error(self, status: int, message: str, **extra: Any) -> Response:
        body = json.dumps({"error": message, "status": status, **extra}).encode()
        headers = {"Retry-After": "30"} if status == 503 else None
        return self._response(status, body, "application/json", headers)

    async def _sleep(self, seconds: float) -> None:
        assert self._stopping is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _request_faults(
        self, source: str, n: int, faults: list[tuple[int, Fault]]
    ) -> Response | None:
        """Timeouts, latency, outages and error bursts; returns an error response or None."""
        for index, f in faults:
            if f.kind in ("timeout", "latency") and self._chance(source, n, index, f.rate):
                await self._sleep(TIMEOUT_SECONDS if f.kind == "timeout" else f.delay or 0.0)
        if self._stopping is not None and self._stopping.is_set():
            return self._json_error(503, "simulator shutting down", source=source)
        for index, f in faults:
            if f.kind == "outage" and self._chance(source, n, index, f.rate):
                return self._json_error(503, "service unavailable", source=source)
            if f.kind == "error_burst" and self._chance(source, n, index, f.rate):
                return self._json_error(f.status, "upstream error", source=source)
        return None

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        try:
            return await self._route(request)
        except Exception:  # pragma: no cover - a bug here must not kill the server
            log.exception("simulator failed on %s", request.path)
            return self._json_error(500, "simulator internal error")

    async def _route(self, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == STREAM_PATH:
            if "websocket" not in request.headers.get("Upgrade", "").lower():
                return self._json_error(426, "websocket upgrade required", path=path)
            now = self.clock.now()
            self.request_counts["fxstream"] += 1
            n = self.request_counts["fxstream"]
            return await self._request_faults("fxstream", n, self._active_faults("fxstream", now))
        if request.method not in ("GET", "HEAD"):
            return self._json_error(405, "method not allowed", method=request.method)
        if path == "/healthz":
            return self._response(200, b"ok", "text/plain; charset=utf-8")
        source = ROUTES.get(path)
        if source is None:
            return self._json_error(404, "not found", path=path)
        now = self.clock.now()
        self.request_counts[source] += 1
        n = self.request_counts[source]
        faults = self._active_faults(source, now)
        error = await self._request_faults(source, n, faults)
        if error is not None:
            return error
        body, ctype = self._payload(source, now, faults, n)
        etag = '"' + hashlib.sha256(body).hexdigest()[:24] + '"'
        if _etag_matches(request.headers.get("If-None-Match"), etag):
            response = self._response(304, b"", "", {"ETag": etag})
            del response.headers["Content-Length"]
            return response
        response = self._response(200, body, ctype, {"ETag": etag, "Cache-Control": "no-cache"})
        if request.method == "HEAD":
            response.body = b""
        return response

    # -- websocket
    async def _ws_handler(self, ws: ServerConnection) -> None:
        assert self._stopping is not None
        sent_up_to: int | None = None
        n = self.request_counts["fxstream"]
        try:
            while not self._stopping.is_set():
                now = self.clock.now()
                cur = int(now // 60)
                if sent_up_to is None or cur > sent_up_to:
                    first = (
                        cur if sent_up_to is None else max(sent_up_to + 1, cur - WINDOW_MINUTES + 1)
                    )
                    faults = self._active_faults("fxstream", now)
                    rename = _renames(faults)
                    records = self._records("fxstream", range(first, cur + 1), faults, n)
                    for rec in records:
                        msg = {rename.get(k, k): v for k, v in rec.items()}
                        await ws.send(json.dumps(msg, separators=(",", ":")))
                    sent_up_to = cur
                await self._sleep(0.2)
        except ConnectionClosed:
            pass


def _renames(faults: list[tuple[int, Fault]]) -> dict[str, str]:
    rename: dict[str, str] = {}
    for _, f in faults:
        if f.kind == "schema_drift":
            rename.update(f.rename or {})
    return rename


def _set_value(record: dict, name: str, value: Any) -> None:
    if isinstance(record.get(name), dict):
        record[name] = {**record[name], "value": value}
    else:
        record[name] = value


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or any(t.removeprefix("W/") == etag for t in tags)


_PADDING: dict[bytes, bytes] = {}


def _padding(char: bytes) -> bytes:
    if char not in _PADDING:
        _PADDING[char] = char * HUGE_BYTES
    return _PADDING[char]


# --------------------------------------------------------------------------- entry points


async def serve(
    port: int = 8700,
    scenario: str | None = None,
    seed: int = 7,
    labels_path: str | Path | None = None,
) -> None:
    """Run the simulator until cancelled."""
    scen = Scenario.load(scenario) if scenario else Scenario(name="normal", description="no faults")
    sim = Simulator(seed=seed, scenario=scen)
    await sim.start(port=port)
    try:
        if labels_path is not None:
            sim.write_labels(labels_path)
        print(f"simulator on {sim.base_url} (scenario {scen.name}, seed {seed})", flush=True)
        await asyncio.Event().wait()
    finally:
        await sim.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="flowdeck loopback source simulator")
    parser.add_argument("--port", type=int, default=8700)
    parser.add_argument(
        "--scenario", default=None, help=f"one of {available_scenarios()} or a path"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--labels", default=None, help="write injected-anomaly labels (JSON)")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, args.scenario, args.seed, args.labels))


if __name__ == "__main__":
    main()
