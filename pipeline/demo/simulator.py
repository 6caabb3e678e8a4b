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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator
from websockets.asyncio.server import Server, ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from flowdeck.pipeline.config import BUNDLED_DIR
from flowdeck.pipeline.core.clock import Clock, SystemClock
from flowdeck.pipeline.core.durations import parse_duration

log = logging.getLogger(__name__)

SCENARIO_DIR = BUNDLED_DIR / "scenarios"
STATIONS_CSV = BUNDLED_DIR / "reference" / "stations.csv"

WINDOW_MINUTES = 5  # each poll returns the observations of the last 5 minutes
TIMEOUT_SECONDS = 60.0  # the ``timeout`` fault: longer than any client timeout
HUGE_BYTES = 50 * 1024 * 1024  # the ``huge`` malformed variant pads the body by this much
DEEP_NESTING = 10_000

# --------------------------------------------------------------------------- reference data


@dataclass(frozen=True)
class Station:
    station: str
    name: str
    lat: float
    lon: float
    elevation_m: int
    country: str
    # climate used by the simulator only (degC): annual mean, seasonal and diurnal half-range
    mean_c: float
    seasonal_c: float
    diurnal_c: float


STATIONS: dict[str, Station] = {
    s.station: s
    for s in (
        Station(
            "KSFO",
            "San Francisco International Airport",
            37.6190,
            -122.3749,
            4,
            "US",
            14.5,
            3.5,
            4.0,
        ),
        Station(
            "KJFK",
            "John F. Kennedy International Airport",
            40.6398,
            -73.7789,
            4,
            "US",
            13.0,
            11.5,
            4.0,
        ),
        Station(
            "KORD",
            "Chicago O'Hare International Airport",
            41.9786,
            -87.9048,
            204,
            "US",
            10.0,
            14.5,
            5.0,
        ),
        Station(
            "KDEN", "Denver International Airport", 39.8617, -104.6732, 1656, "US", 10.5, 11.5, 8.0
        ),
        Station(
            "KSEA",
            "Seattle-Tacoma International Airport",
            47.4490,
            -122.3093,
            132,
            "US",
            11.5,
            7.0,
            5.0,
        ),
        Station("KMIA", "Miami International Airport", 25.7932, -80.2906, 2, "US", 25.0, 3.5, 3.5),
        Station(
            "KBOS",
            "Boston Logan International Airport",
            42.3643,
            -71.0052,
            6,
            "US",
            11.0,
            12.0,
            4.5,
        ),
        Station(
            "KATL",
            "Hartsfield-Jackson Atlanta International Airport",
            33.6367,
            -84.4281,
            313,
            "US",
            17.0,
            9.5,
            5.5,
        ),
        Station(
            "KPHX",
            "Phoenix Sky Harbor International Airport",
            33.4343,
            -112.0116,
            346,
            "US",
            24.0,
            10.0,
            7.0,
        ),
        Station("EGLL", "London Heathrow Airport", 51.4706, -0.4619, 25, "GB", 11.5, 6.5, 4.0),
        Station(
            "LFPG", "Paris Charles de Gaulle Airport", 49.0097, 2.5479, 119, "FR", 11.5, 7.5, 4.5
        ),
        Station("EDDF", "Frankfurt Airport", 50.0333, 8.5706, 111, "DE", 10.5, 9.5, 5.0),
    )
}

# Each network covers 8 of the 12 stations; every station is covered by exactly 2 networks.
NETWORKS: dict[str, tuple[str, ...]] = {
    "metnet": ("KSFO", "KJFK", "KORD", "KDEN", "KSEA", "KMIA", "KBOS", "KATL"),
    "airnet": ("KSFO", "KJFK", "KSEA", "KMIA", "KPHX", "EGLL", "LFPG", "EDDF"),
    "skyobs": ("KORD", "KDEN", "KBOS", "KATL", "KPHX", "EGLL", "LFPG", "EDDF"),
}

# Baseline quirk: a mis-calibrated sensor (source, station, metric) -> bias added, always on.
CALIBRATION_BIAS: dict[tuple[str, str, str], float] = {("skyobs", "KDEN", "temperature"): 3.0}

# FX mid-rate levels and the inverted symbols quoted by ecbx (price = 1 / pair rate).
PAIRS: dict[str, float] = {
    "EURUSD": 1.0850,
    "GBPUSD": 1.2700,
    "USDJPY": 150.20,
    "AUDUSD": 0.6550,
    "USDCHF": 0.8800,
}
ECBX_SYMBOLS: dict[str, str] = {
    "EURUSD": "USD/EUR",
    "GBPUSD": "USD/GBP",
    "USDJPY": "JPY/USD",
    "AUDUSD": "USD/AUD",
    "USDCHF": "CHF/USD",
}

FLOW_KEYS: dict[str, tuple[str, ...]] = {"weather": tuple(STATIONS), "fx": tuple(PAIRS)}
# Canonical metrics (the truth): weather temperature degC, pressure hPa (sea level),
# wind_speed m/s; fx rate (mid, quote currency per base currency).
FLOW_METRICS: dict[str, tuple[str, ...]] = {
    "weather": ("temperature", "pressure", "wind_speed"),
    "fx": ("rate",),
}

TEMP_NOISE_C = 0.25  # per-network measurement noise (uniform, +-)
PRESSURE_NOISE_HPA = 0.3
WIND_NOISE_MS = 0.3
FX_NOISE_REL = 0.00006  # per-provider relative noise (uniform, +-)

HPA_TO_INHG = 0.029529983071445
MS_TO_MPH = 2.2369362920544
MS_TO_KMH = 3.6


@dataclass(frozen=True)
class _SourceSpec:
    name: str
    flow: str
    path: str
    fmt: Literal["geojson", "columnar", "csv", "quotes", "nested_columnar", "stream"]
    content_type: str
    key_field: str
    fields: tuple[str, ...]
    primary: str  # the main metric field (target of wrong_types)
    numeric: tuple[str, ...]
    lag_minutes: int = 0


SOURCES: dict[str, _SourceSpec] = {
    s.name: s
    for s in (
        _SourceSpec(
            "metnet",
            "weather",
            "/weather/metnet/obs",
            "geojson",
            "application/geo+json",
            "stationId",
            ("stationId", "timestamp", "temperature", "barometricPressure", "windSpeed"),
            "temperature",
            ("temperature", "barometricPressure", "windSpeed"),
        ),
        _SourceSpec(
            "airnet",
            "weather",
            "/weather/airnet/latest",
            "columnar",
            "application/json",
            "site",
            ("site", "epoch", "t_c", "p_hpa", "wind_ms"),
            "t_c",
            ("t_c", "p_hpa", "wind_ms"),
        ),
        _SourceSpec(
            "skyobs",
            "weather",
            "/weather/skyobs/obs.csv",
            "csv",
            "text/csv; charset=utf-8",
            "station",
            ("station", "observed_at", "temp_c", "pressure_hpa", "wind_kmh"),
            "temp_c",
            ("temp_c", "pressure_hpa", "wind_kmh"),
        ),
        _SourceSpec(
            "fxquote",
            "fx",
            "/fx/fxquote/rates",
            "quotes",
            "application/json",
            "pair",
            ("pair", "rate", "time"),
            "rate",
            ("rate",),
        ),
        _SourceSpec(
            "ecbx",
            "fx",
            "/fx/ecbx/rates.csv",
            "csv",
            "text/csv; charset=utf-8",
            "symbol",
            ("symbol", "price", "timestamp"),
            "price",
            ("price",),
        ),
        _SourceSpec(
            "slowfx",
            "fx",
            "/fx/slowfx/rates",
            "nested_columnar",
            "application/json",
            "sym",
            ("sym", "px", "t"),
            "px",
            ("px",),
            lag_minutes=2,
        ),
        _SourceSpec(
            "fxstream",
            "fx",
            "/stream/fx",
            "stream",
            "application/json",
            "pair",
            ("pair", "rate", "time"),
            "rate",
            ("rate",),
        ),
    )
}
ROUTES: dict[str, str] = {s.path: s.name for s in SOURCES.values() if s.fmt != "stream"}
STREAM_PATH = "/stream/fx"

MALFORMED_VARIANTS = (
    "truncated_json",
    "html",
    "bad_utf8",
    "nan",
    "deep_nesting",
    "wrong_types",
    "missing_fields",
    "huge",
)
MalformedVariant = Literal[
    "truncated_json",
    "html",
    "bad_utf8",
    "nan",
    "deep_nesting",
    "wrong_types",
    "missing_fields",
    "huge",
]
FaultKind = Literal[
    "outage",
    "error_burst",
    "latency",
    "timeout",
    "malformed",
    "schema_drift",
    "duplicates",
    "out_of_order",
    "clock_skew",
    "spike",
    "level_shift",
]

# --------------------------------------------------------------------------- scenarios

def _parse_amount(value: float | str) -> tuple[float, bool]:
    """``8`` -> (8.0, absolute); ``"1.5%"`` -> (0.015, relative)."""
    if isinstance(value, str):
        text = value.strip()
        if text.endswith("%"):
            return float(text[:-1]) / 100.0, True
        return float(text), False
    return float(value), False


_SOURCE_KEYS = {"source", "start", "duration", "every", "rate"}
_ALLOWED_KEYS: dict[str, set[str]] = {
    "outage": _SOURCE_KEYS,
    "error_burst": _SOURCE_KEYS | {"status"},
    "latency": _SOURCE_KEYS | {"delay"},
    "timeout": _SOURCE_KEYS,
    "malformed": _SOURCE_KEYS | {"variants"},
    "schema_drift": _SOURCE_KEYS | {"rename"},
    "duplicates": _SOURCE_KEYS | {"fraction"},
    "out_of_order": _SOURCE_KEYS | {"older"},
    "clock_skew": _SOURCE_KEYS | {"offset"},
    "spike": {"flow", "key", "metric", "at", "duration", "magnitude"},
    "level_shift": {"flow", "key", "metric", "at", "duration", "delta"},
}
_REQUIRED_KEYS: dict[str, set[str]] = {
    "latency": {"delay"},
    "schema_drift": {"rename"},
    "clock_skew": {"offset"},
    "spike": {"flow", "key", "metric", "at", "magnitude"},
    "level_shift": {"flow", "key", "metric", "at", "delta"},
}
_STREAM_KINDS = {
    "outage",
    "error_burst",
    "latency",
    "timeout",
    "schema_drift",
    "duplicates",
    "clock_skew",
}
_TRUTH_KINDS = {"spike", "level_shift"}


class Fault(BaseModel):
    """One scripted fault. Times are seconds relative to the simulator's t0."""

    model_config = ConfigDict(extra="forbid")

    kind: FaultKind
    source: list[str] | None = None
    flow: str | None = None
    key: str | None = None
    metric: str | None = None
    start: float = 0.0
    duration: float | None = None
    every: float | None = None  # repeat the [start, start+duration) window every N seconds
    at: float | None = None
    rate: float = 1.0
    status: int = 500
    delay: float | None = None
    variants: list[MalformedVariant] | None = None
    rename: dict[str, str] | None = None
    offset: float | None = None
    magnitude: float | str | None = None
    delta: float | str | None = None
    fraction: float = 0.3
    older: int = 3

    @field_validator("source", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("start", "duration", "every", "at", "delay", "offset", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> Any:
        # Scenario times may be negative (a clock skew's offset: -3m); start >= 0 is
        # checked below.
        return None if v is None else parse_duration(v, signed=True)

    @model_validator(mode="after")
    def _check(self) -> Fault:
        given = self.model_fields_set - {"kind"}
        extra = given - _ALLOWED_KEYS[self.kind]
        if extra:
            raise ValueError(
                f"{self.kind}: unexpected key(s) {sorted(extra)}; "
                f"allowed: {sorted(_ALLOWED_KEYS[self.kind])}"
            )
        missing = _REQUIRED_KEYS.get(self.kind, set()) - given
        if self.kind not in _TRUTH_KINDS and not self.source:
            missing.add("source")
        if missing:
            raise ValueError(f"{self.kind}: missing key(s) {sorted(missing)}")
        if self.kind in _TRUTH_KINDS:
            self._check_truth()
        else:
            self._check_sources()
        if self.start < 0:
            raise ValueError("start must be >= 0")
        if self.duration is not None and self.duration <= 0:
            raise ValueError("duration must be > 0")
        if self.every is not None:
            if self.duration is None or self.every <= self.duration:
                raise ValueError("every needs a duration shorter than every")
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError("rate is a probability in [0, 1]")
        if not 400 <= self.status <= 599:
            raise ValueError("status must be an HTTP error status (400..599)")
        if self.delay is not None and self.delay < 0:
            raise ValueError("delay must be >= 0")
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError("fraction must be in [0, 1]")
        if self.older < 0:
            raise ValueError("older must be >= 0")
        if self.variants is not None and not self.variants:
            raise ValueError("variants must not be empty")
        return self

    def _check_sources(self) -> None:
        for name in self.source or []:
            if name not in SOURCES:
                raise ValueError(f"unknown source {name!r}; sources: {sorted(SOURCES)}")
            if name == "fxstream" and self.kind not in _STREAM_KINDS:
                raise ValueError(f"{self.kind} is not supported on fxstream")
            if self.rename:
                unknown = set(self.rename) - set(SOURCES[name].fields)
                if unknown:
                    raise ValueError(
                        f"rename: {name} has no field(s) {sorted(unknown)}; "
                        f"fields: {list(SOURCES[name].fields)}"
                    )

    def _check_truth(self) -> None:
        if self.flow not in FLOW_KEYS:
            raise ValueError(f"unknown flow {self.flow!r}; flows: {sorted(FLOW_KEYS)}")
        if self.key not in FLOW_KEYS[self.flow]:
            raise ValueError(f"unknown {self.flow} key {self.key!r}; keys: {FLOW_KEYS[self.flow]}")
        if self.metric not in FLOW_METRICS[self.flow]:
            raise ValueError(
                f"unknown {self.flow} metric {self.metric!r}; metrics: {FLOW_METRICS[self.flow]}"
            )
        if self.at is None or self.at < 0:
            raise ValueError("at must be >= 0")
        _parse_amount(self.magnitude if self.kind == "spike" else self.delta)  # type: ignore[arg-type]

    # -- helpers used by the simulator
    def active(self, elapsed: float) -> bool:
        """Is the fault's window open ``elapsed`` seconds after t0?"""
        if elapsed < self.start:
            return False
        if self.duration is None:
            return True
        if self.every is not None:
            return (elapsed - self.start) % self.every < self.duration
        return elapsed < self.start + self.duration

    def applies_to(self, source: str) -> bool:
        return bool(self.source) and source in self.source  # type: ignore[operator]


class _ScenarioFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    faults: list[Fault] = []


@dataclass
class Scenario:
    name: str
    description: str = ""
    faults: list[Fault] = field(default_factory=list)

    @classmethod
    def parse(cls, data: Any, origin: str = "<scenario>") -> Scenario:
        try:
            model = _ScenarioFile.model_validate(data if data is not None else {})
        except ValidationError as exc:
            raise ValueError(f"invalid scenario {origin}: {exc}") from exc
        return cls(name=model.name, description=model.description, faults=list(model.faults))

    @classmethod
    def load(cls, name_or_path: str | Path) -> Scenario:
        text = str(name_or_path)
        path = Path(text)
        is_path = isinstance(name_or_path, Path) or path.suffix in (".yaml", ".yml") or "/" in text
        if not is_path:
            path = SCENARIO_DIR / f"{text}.yaml"
            if not path.is_file():
                raise ValueError(
                    f"unknown scenario {text!r}; available: {', '.join(available_scenarios())}"
                )
        if not path.is_file():
            raise ValueError(f"scenario file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ValueError(f"invalid scenario YAML {path}: {exc}") from exc
        return cls.parse(data, origin=str(path))


def available_scenarios() -> list[str]:
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml"))


# --------------------------------------------------------------------------- deterministic values


def _unit(seed: int, *parts: object) -> float:
    """Uniform [0, 1) from a string hash (stable across processes, unlike ``hash()``)."""
    data = ":".join(str(p) for p in (seed, *parts)).encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big") / 2.0**64


def _sym(seed: int, *parts: object) -> float:
    """Uniform [-1, 1)."""
    return 2.0 * _unit(seed, *parts) - 1.0


def _smooth(seed: int, name: str, x: float, scale: float) -> float:
    """Value noise in [-1, 1]: random knots every ``scale`` units, smoothly interpolated."""
    k = math.floor(x / scale)
    f = x / scale - k
    a = _sym(seed, name, scale, k)
    b = _sym(seed, name, scale, k + 1)
    f = f * f * (3.0 - 2.0 * f)
    return a + (b - a) * f


_FX_OCTAVES = (1, 4, 16, 64, 256, 1024, 4096, 16384)
_FX_SIGMA = 0.00008  # relative move per minute at the finest octave


def true_weather(seed: int, station: str, minute: int) -> dict[str, float]:
    """Anomaly-free truth for a station at a whole minute (epoch minutes)."""
    st = STATIONS[station]
    ts = minute * 60
    day_of_year = (ts / 86400.0) % 365.2425
    seasonal = -st.seasonal_c * math.cos(2 * math.pi * (day_of_year - 15.0) / 365.2425)
    local_hour = ((ts % 86400) / 3600.0 + st.lon / 15.0) % 24.0
    diurnal = st.diurnal_c * math.cos(2 * math.pi * (local_hour - 15.0) / 24.0)
    temp = (
        st.mean_c
        + seasonal
        + diurnal
        + 1.5 * _smooth(seed, f"t:{station}", minute, 180)
        + 0.5 * _smooth(seed, f"t:{station}", minute, 30)
        + 0.1 * _sym(seed, "tj", station, minute)
    )
    pressure = (
        1013.0
        + 6.0 * _smooth(seed, f"p:{station}", minute, 1440)
        + 2.5 * _smooth(seed, f"p:{station}", minute, 240)
        + 0.3 * _smooth(seed, f"p:{station}", minute, 20)
    )
    wind = (
        5.0
        + 4.0 * _smooth(seed, f"w:{station}", minute, 240)
        + 2.0 * _smooth(seed, f"w:{station}", minute, 20)
        + 0.8 * _sym(seed, "wj", station, minute)
    )
    return {"temperature": temp, "pressure": pressure, "wind_speed": min(15.0, max(0.0, wind))}


def true_fx(seed: int, pair: str, minute: int) -> float:
    """Anomaly-free mid rate: a multi-scale (random-walk-like) path, pure in the minute."""
    x = sum(_FX_SIGMA * math.sqrt(s) * _smooth(seed, f"fx:{pair}", minute, s) for s in _FX_OCTAVES)
    return PAIRS[pair] * math.exp(x)


def _iso_utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat()  # 2026-11-24T21:05:00+00:00


def _iso_z(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _plain_utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def _sig(x: float, digits: int) -> float:
    return float(f"{x:.{digits}g}")


def _fx_decimals(pair: str, coarse: bool = False) -> int:
    places = 3 if pair.endswith("JPY") else 5
    return places - 1 if coarse else places


_HTML_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n"
    b"<body><h1>502 Bad Gateway</h1>\n<p>The upstream server returned an invalid response."
    b"</p>\n<hr><address>nginx</address></body></html>\n"
)


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
        self.t0 = self.clock.now()
        self._anomalies = self._build_anomalies(self.t0)
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
            if f.kind not in _TRUTH_KINDS:
                continue
            start = _minute_ceil(t0 + (f.at or 0.0))
            duration = (
                f.duration if f.duration is not None else (60.0 if f.kind == "spike" else None)
            )
            end = None if duration is None else start + max(1, math.ceil(duration / 60.0)) * 60.0
            amount, relative = _parse_amount(f.magnitude if f.kind == "spike" else f.delta)  # type: ignore[arg-type]
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
                "start": _iso_utc(a.start),
                "end": None if a.end is None else _iso_utc(a.end),
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
                + TEMP_NOISE_C * _sym(seed, "noise", source, key, "temperature", minute)
                + CALIBRATION_BIAS.get((source, key, "temperature"), 0.0)
            )
            pres = truth["pressure"] + PRESSURE_NOISE_HPA * _sym(
                seed, "noise", source, key, "pressure", minute
            )
            wind = max(
                0.0,
                truth["wind_speed"]
                + WIND_NOISE_MS * _sym(seed, "noise", source, key, "wind", minute),
            )
            if source == "metnet":
                st = STATIONS[key]
                return {
                    "_coords": [st.lon, st.lat],
                    "stationId": key,
                    "timestamp": _iso_utc(ts),
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
                "observed_at": _plain_utc(ts),
                "temp_c": round(temp, 1),
                "pressure_hpa": round(pres, 1),
                "wind_kmh": round(wind * MS_TO_KMH, 1),
            }
        rate = truth["rate"] * (
            1.0 + FX_NOISE_REL * _sym(seed, "noise", source, key, "rate", minute)
        )
        if source == "ecbx":
            return {
                "symbol": ECBX_SYMBOLS[key],
                "price": _sig(1.0 / rate, 6),
                "timestamp": int(round(ts * 1000)),
            }
        if source == "slowfx":
            return {"sym": key, "px": round(rate, _fx_decimals(key, coarse=True)), "t": _iso_z(ts)}
        return {"pair": key, "rate": round(rate, _fx_decimals(key)), "time": _iso_z(ts)}

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
        minutes = range(cur - WINDOW_MINUTES + 1, cur + 1)
        records = self._records(source, minutes, faults, n)
        variant = self._malformed_variant(source, faults, n)
        if variant in ("missing_fields", "wrong_types", "nan"):
            self._corrupt_records(source, variant, records, n)
        body = self._serialize(source, records, _renames(faults))
        ctype = spec.content_type
        if variant == "truncated_json":
            body = body[: max(1, len(body) // 2)]
        elif variant == "html":
            body, ctype = _HTML_PAGE, "text/html; charset=utf-8"
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
        return _unit(self.seed, "chance", source, n, index) < rate

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
