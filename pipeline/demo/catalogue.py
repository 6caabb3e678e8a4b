"""The demo's catalogue: the stations and FX pairs it serves, the shape of every source
(path, format, units) and the deterministic "true" values each observation derives from.

A value is a pure function of (seed, source, key, minute), computed with hashlib, so the
same request at the same simulated time returns the same bytes in any process."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, get_args

from flowdeck.pipeline.config import BUNDLED_DIR

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
MALFORMED_VARIANTS: tuple[str, ...] = get_args(MalformedVariant)


# --------------------------------------------------------------------------- deterministic values


def hash_unit(seed: int, *parts: object) -> float:
    """Uniform [0, 1) from a string hash (stable across processes, unlike ``hash()``)."""
    data = ":".join(str(p) for p in (seed, *parts)).encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big") / 2.0**64


def hash_sym(seed: int, *parts: object) -> float:
    """Uniform [-1, 1)."""
    return 2.0 * hash_unit(seed, *parts) - 1.0


def _smooth(seed: int, name: str, x: float, scale: float) -> float:
    """Value noise in [-1, 1]: random knots every ``scale`` units, smoothly interpolated."""
    k = math.floor(x / scale)
    f = x / scale - k
    a = hash_sym(seed, name, scale, k)
    b = hash_sym(seed, name, scale, k + 1)
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
        + 0.1 * hash_sym(seed, "tj", station, minute)
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
        + 0.8 * hash_sym(seed, "wj", station, minute)
    )
    return {"temperature": temp, "pressure": pressure, "wind_speed": min(15.0, max(0.0, wind))}


def true_fx(seed: int, pair: str, minute: int) -> float:
    """Anomaly-free mid rate: a multi-scale (random-walk-like) path, pure in the minute."""
    x = sum(_FX_SIGMA * math.sqrt(s) * _smooth(seed, f"fx:{pair}", minute, s) for s in _FX_OCTAVES)
    return PAIRS[pair] * math.exp(x)


def iso_utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat()  # 2026-11-24T21:05:00+00:00


def iso_z(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def plain_utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def round_sig(x: float, digits: int) -> float:
    return float(f"{x:.{digits}g}")


def fx_decimals(pair: str, coarse: bool = False) -> int:
    places = 3 if pair.endswith("JPY") else 5
    return places - 1 if coarse else places


HTML_ERROR_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n"
    b"<body><h1>502 Bad Gateway</h1>\n<p>The upstream server returned an invalid response."
    b"</p>\n<hr><address>nginx</address></body></html>\n"
)


