"""Configuration: YAML read with line numbers, validated by pydantic models.

A broken file is refused with every problem on its own line, as
``file:line: field.path: problem``. Unknown keys are errors (they catch typos).
Config text is data: expressions are parsed by :mod:`flowdeck.pipeline.expr`,
never evaluated as Python.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from flowdeck.pipeline.core.durations import parse_duration

# The wheel carries sample_data/ as the package flowdeck.sample_data (a folder on disk once
# installed), so the bundled config and its reference tables resolve outside a checkout too.
BUNDLED_DIR = Path(str(files("flowdeck.sample_data")))
BUNDLED_CONFIG = BUNDLED_DIR / "flows" / "demo.yaml"

# ---------------------------------------------------------------- value types

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 1000, "kib": 1024, "mb": 10**6, "mib": 2**20, "gb": 10**9,
               "gib": 2**30, None: 1}


def parse_size(value: Any) -> int:
    """'16MiB', '500KB' or a number of bytes -> bytes."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            unit = m.group(2).lower() if m.group(2) else None
            return int(float(m.group(1)) * _SIZE_UNITS[unit])
    raise ValueError(f"expected a size like '16MiB' or a number of bytes, got {value!r}")


# Seconds, written in the one duration grammar (flowdeck.pipeline.core.durations).
Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
NAME_RE = r"^[A-Za-z_][A-Za-z0-9_]*$"
FlowName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$", max_length=64)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- sources


class TimestampSpec(Strict):
    """How a source writes its timestamps."""

    format: str = "iso"  # iso | epoch (s/ms/us by magnitude) | epoch_s | epoch_ms | strptime
    tz: str = "UTC"  # zone for naive timestamps
    # An ISO 8601 interval ("start/PT1H") keeps its start as the timestamp and its length,
    # in seconds, in this field (default: "<flow ts>_duration_s").
    duration_field: Annotated[str, Field(pattern=NAME_RE)] | None = None

    @field_validator("tz")
    @classmethod
    def _zone(cls, v: str) -> str:
        if v.upper() != "UTC":
            import zoneinfo

            try:
                zoneinfo.ZoneInfo(v)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {v!r} (an IANA name like "
                                 "'Europe/Berlin')") from None
        return v


class MeltSpec(Strict):
    """Wide -> long: one record per (row, column); the column's name goes to ``name``."""

    columns: list[str] | None = None
    pattern: str | None = None  # a regular expression matched against whole keys
    name: str
    value: str

    @model_validator(mode="after")
    def _one(self) -> MeltSpec:
        if (self.columns is None) == (self.pattern is None):
            raise ValueError("give exactly one of 'columns' or 'pattern'")
        if self.columns is not None and not self.columns:
            raise ValueError("'columns' is empty")
        if self.pattern is not None:
            try:
                rx = re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"bad regular expression: {exc}") from None
            if rx.groups > 1:
                raise ValueError("the pattern may have at most one group (the name kept)")
        if self.name == self.value:
            raise ValueError("'name' and 'value' must differ")
        return self


class FieldSource(Strict):
    """A source field with a value map, e.g. ``{path: symbol, map: {"USD/EUR": EURUSD}}``."""

    path: str
    map: dict[str, Any] = {}
    # A value the map does not list: kept as it is, made null, or the record quarantined.
    unmatched: Annotated[Literal["keep", "null", "reject"],
                         BeforeValidator(lambda v: "null" if v is None else v)] = "keep"


class SourceConfig(Strict):
    name: Annotated[str, Field(pattern=NAME_RE)]
    kind: Literal["http", "file", "websocket", "simulated"]
    url: str | None = None
    path: str | None = None  # file sources: a path or a glob
    format: Literal["json", "geojson", "jsonl", "csv", "xml"] = "json"
    records: str | None = None
    columns: str | None = None
    positional: list[str | None] | None = None  # names for headerless array rows
    zip: str | None = None  # path in each item to an object of parallel arrays
    melt: MeltSpec | None = None  # wide -> long
    namespaces: dict[str, str] = {}  # xml: prefix -> URI for prefixed records path segments
    fields: dict[str, str | FieldSource] = {}
    timestamp: TimestampSpec = TimestampSpec()
    units: dict[str, str] = {}
    # Filled from `units: {field: {from: PATH}}`: the unit read per record from the payload.
    unit_from: dict[str, str] = {}
    invert: list[str] = []  # fields quoted the other way round (x -> 1/x)
    # The key of every record from this source (one station per URL): a value for the
    # flow's key field, or {field: value} for parts of a composite key.
    key: str | int | dict[str, str | int] | None = None
    priority: int = 1
    reliability: Annotated[float, Field(ge=0, le=1)] = 1.0
    enabled: bool = True
    timeout: Duration = 5.0
    retries: Annotated[int, Field(ge=0, le=10)] = 2
    backoff: Duration = 0.2  # first retry wait; doubles, with jitter of the same size
    headers: dict[str, str] = {}
    params: dict[str, str] = {}
    # Credentials never sit in the config: header / query parameter -> the environment
    # variable (or, for headers_from_file, the file) holding its value. Their values are
    # registered as secrets and masked in logs, errors, the feed and exports.
    headers_from_env: dict[str, str] = {}
    params_from_env: dict[str, str] = {}
    headers_from_file: dict[str, str] = {}
    max_bytes: Size = 16 * 2**20

    @model_validator(mode="before")
    @classmethod
    def _units_from(cls, data: Any) -> Any:
        """`units: {f: {from: PATH}}` -> unit_from[f] = PATH (the rest stay fixed units)."""
        if isinstance(data, dict) and isinstance(data.get("units"), dict):
            units = data["units"]
            taken = {f: u for f, u in units.items() if isinstance(u, dict)}
            if taken:
                data = dict(data)
                data["units"] = {f: u for f, u in units.items() if f not in taken}
                unit_from = dict(data.get("unit_from") or {})
                for f, u in taken.items():
                    if set(u) != {"from"} or not isinstance(u["from"], str) or not u["from"]:
                        raise ValueError(f"units.{f}: expected a unit name or {{from: PATH}}, "
                                         f"got {u!r}")
                    unit_from[f] = u["from"]
                data["unit_from"] = unit_from
        return data

    def resolved_headers(self, base_dir: Path | None = None) -> dict[str, str]:
        """``headers`` plus the ones read from the environment and files (SecretError if
        one is missing); every value read is registered as a secret."""
        out = dict(self.headers)
        for name, var in self.headers_from_env.items():
            out[name] = _secret_from_env(var, f"header {name}")
        for name, path in self.headers_from_file.items():
            out[name] = _secret_from_file(path, base_dir, f"header {name}")
        return out

    def resolved_params(self) -> dict[str, str]:
        out = dict(self.params)
        for name, var in self.params_from_env.items():
            out[name] = _secret_from_env(var, f"parameter {name}")
        return out

    @model_validator(mode="after")
    def _where(self) -> SourceConfig:
        if self.columns and self.positional:
            raise ValueError("give either 'columns' or 'positional', not both")
        if self.format in ("csv", "jsonl") and (self.records or self.columns or self.positional):
            raise ValueError(f"records/columns/positional do not apply to format {self.format}")
        if self.namespaces and self.format != "xml":
            raise ValueError("'namespaces' only applies to format xml")
        if self.kind in ("http", "websocket", "simulated") and not self.url:
            raise ValueError(f"a {self.kind} source needs 'url'")
        if self.kind == "file" and not self.path:
            raise ValueError("a file source needs 'path'")
        return self


class SecretError(ValueError):
    """A credential a source reads from the environment or a file is not there."""


def _secret_from_env(var: str, what: str) -> str:
    from flowdeck.pipeline.core.redact import register_secret

    value = os.environ.get(var)
    if not value:
        raise SecretError(f"{what}: the environment variable {var} is not set")
    register_secret(value)
    return value


def _secret_from_file(path: str, base_dir: Path | None, what: str) -> str:
    from flowdeck.pipeline.core.redact import register_secret

    p = Path(os.path.expanduser(path))
    if not p.is_absolute() and base_dir is not None:
        p = base_dir / p
    try:
        value = p.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SecretError(f"{what}: cannot read {p}: {exc.strerror}") from None
    if not value:
        raise SecretError(f"{what}: {p} is empty")
    register_secret(value)
    return value


def inline_secret_problems(src: SourceConfig) -> list[tuple[tuple, str]]:
    """Credentials written into the config itself: refused (they would sit in every copy
    of the file, and in the pipeline version the store keeps of it)."""
    from flowdeck.pipeline.core.redact import SECRET_HEADERS, SECRET_PARAMS

    out: list[tuple[tuple, str]] = []
    for name in src.headers:
        if SECRET_HEADERS.match(name):
            out.append((("headers", name), "a credential inline in the config; read it with "
                        f"headers_from_env: {{{name}: VAR}} or headers_from_file"))
    for name in src.params:
        if SECRET_PARAMS.match(name):
            out.append((("params", name), "a credential inline in the config; read it with "
                        f"params_from_env: {{{name}: VAR}}"))
    if src.url and re.search(r"://[^/@\s]*:[^/@\s]+@", src.url):
        out.append((("url",), "a password inline in the URL; put it in a header read with "
                    "headers_from_env"))
    if src.url and re.search(r"[?&](?:token|api_?key|apikey|access_token|password|secret)=",
                             src.url, re.IGNORECASE):
        out.append((("url",), "a credential inline in the URL's query; read it with "
                    "params_from_env"))
    return out


# ---------------------------------------------------------------- stages


class FieldSpec(Strict):
    type: Literal["str", "int", "float", "bool"] = "float"
    required: bool = False
    unit: str | None = None
    range: tuple[float | None, float | None] | None = None
    allowed: list[Any] | None = None
    pattern: str | None = None
    metric: bool | None = None  # kept as a time series (default: numeric fields)

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"bad regular expression: {exc}") from None
        return v


class Schedule(Strict):
    every: Duration | None = None
    cron: str | None = None
    jitter: Duration = 0.0

    @model_validator(mode="after")
    def _one(self) -> Schedule:
        if (self.every is None) == (self.cron is None):
            raise ValueError("give exactly one of 'every' or 'cron'")
        if self.every is not None and self.every < 0.05:
            raise ValueError("'every' must be at least 50ms")
        return self


class TimestampChecks(Strict):
    max_future: Duration | None = 300.0  # later than now + this: rejected (null: no bound)
    # later than now + this (but not rejected): flagged clock_skew; null (and max_future:
    # null, forecasts) never flags
    skew: Duration | None = 30.0
    max_age: Duration | None = None  # older than now - this: rejected as stale


class EnrichSpec(Strict):
    table: str
    on: str
    key: str | None = None  # column in the table (default: same as `on`)
    add: list[str]


class QualityWeights(Strict):
    completeness: float = 0.3
    validity: float = 0.3
    freshness: float = 0.2
    reliability: float = 0.2


class QualitySpec(Strict):
    threshold: Annotated[float, Field(ge=0, le=1)] = 0.6
    weights: QualityWeights = QualityWeights()


class ResolveSpec(Strict):
    window: Duration = 0.0  # 0: only identical timestamps are merged
    strategy: Literal["priority", "median", "mean", "most_recent", "weighted"] = "priority"
    # Per field: an absolute spread (1.5) or a relative one ("0.1%") beyond which sources conflict.
    tolerance: dict[str, float | Annotated[str, Field(pattern=r"^\d+(\.\d+)?%$")]] = {}
    # median / weighted: down-weight a source by its measured agreement with the consensus
    # (docs/detection.md, "Resolution"); false: the configured weights only.
    agreement: bool = True


RESERVED_FIELD = "anomaly_reason"
"""The key of a record's data where the detect stage explains a flagged point."""

DetectMethod = Literal["robust_z", "ewma", "rate", "seasonal", "level_shift", "flatline"]


class DetectSpec(Strict):
    """One metric's anomaly detection: the settings of :class:`flowdeck.pipeline.detectors.
    DetectorSettings` (docs/detection.md says what each does and why its default)."""

    metric: str
    methods: Annotated[list[DetectMethod], Field(min_length=1)] = [
        "robust_z", "rate", "seasonal", "level_shift", "flatline"]
    window: Annotated[int, Field(ge=5, le=10000)] = 120
    threshold: Annotated[float, Field(gt=0)] = 4.0  # raw mode (calibrate: false) only
    min_history: Annotated[int, Field(ge=1)] = 10
    season: Annotated[Duration, Field(gt=0)] | None = None  # null: found (day, week or none)
    calibrate: bool = True
    flag_probability: Annotated[float, Field(gt=0, lt=1)] = 1e-4
    calibration_window: Annotated[int, Field(ge=10, le=100_000)] = 1000
    warmup: Annotated[int, Field(ge=0)] = 150
    refractory: Annotated[int, Field(ge=0)] = 100
    cusum_k: Annotated[float, Field(ge=0)] = 0.5
    cusum_h: Annotated[float, Field(gt=0)] = 30.0
    ewma_alpha: Annotated[float, Field(gt=0, le=1)] = 0.1
    rate_threshold: Annotated[float, Field(gt=0)] | None = None  # null: learn the rates

    @field_validator("methods")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        dup = sorted({m for m in v if v.count(m) > 1})
        if dup:
            raise ValueError(f"duplicate methods: {', '.join(dup)}")
        return v


class BreakerConfig(Strict):
    window: Annotated[int, Field(ge=1, le=1000)] = 10
    min_requests: Annotated[int, Field(ge=1)] = 3
    failure_rate: Annotated[float, Field(gt=0, le=1)] = 0.5
    cooldown: Duration = 30.0
    max_cooldown: Duration = 600.0
    probes: Annotated[int, Field(ge=1, le=100)] = 2


class ErrorRateConfig(Strict):
    """A source whose fetches failed at or above ``threshold`` over the last ``window``
    (counting only when at least ``min_requests`` were made) raises an ``error_rate`` issue;
    it clears when, with as many requests in the window, the rate is below the threshold.
    ``threshold: null`` turns the check off."""

    window: Duration = 300.0
    threshold: Annotated[float, Field(gt=0, le=1)] | None = 0.3
    min_requests: Annotated[int, Field(ge=1)] = 5


class RecoveryConfig(Strict):
    """merge: every healthy source each run, merged by resolve. failover: the best healthy
    source only, the next one by priority when it fails."""

    mode: Literal["merge", "failover"] = "merge"
    breaker: BreakerConfig = BreakerConfig()
    # A source that answers but brings no record newer than this (default: the flow's
    # freshness) is stale: a quality issue and a recovery action, the flow degraded.
    stale: bool = True
    stale_after: Duration | None = None
    error_rate: ErrorRateConfig = ErrorRateConfig()


class IssuesConfig(Strict):
    """Quality issues whose condition has not recurred for ``auto_resolve`` are resolved
    automatically (actor ``auto``); null keeps them open until an operator acts."""

    auto_resolve: Duration | None = 600.0


RETENTION_KEYS = ("raw", "records", "series", "series_1m", "series_1h", "quarantine",
                  "actions", "issues_resolved", "runs")
OptDuration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)] | None


class RetentionOverride(Strict):
    """A flow's own retention: any key left out takes the global ``retention:`` value."""

    raw: OptDuration = None
    records: OptDuration = None
    series: OptDuration = None
    series_1m: OptDuration = None
    series_1h: OptDuration = None
    quarantine: OptDuration = None
    actions: OptDuration = None
    issues_resolved: OptDuration = None
    runs: OptDuration = None
    keep_forever: list[Literal["raw", "records", "series", "series_1m", "series_1h",
                               "quarantine", "actions", "issues_resolved", "runs"]] = []


class RetentionConfig(Strict):
    """How long each kind of row is kept (docs/operations.md, Retention). ``null`` keeps
    a kind forever. A background job deletes in steps of at most ``batch`` rows, each its
    own short transaction on the engine's worker, every ``interval``."""

    enabled: bool = True
    raw: OptDuration = 7 * 86400.0
    records: OptDuration = 30 * 86400.0
    series: OptDuration = 7 * 86400.0
    series_1m: OptDuration = 90 * 86400.0
    series_1h: OptDuration = 730 * 86400.0
    quarantine: OptDuration = 30 * 86400.0
    actions: OptDuration = 90 * 86400.0
    issues_resolved: OptDuration = 90 * 86400.0
    runs: OptDuration = 90 * 86400.0
    # Raw payloads stay while a kept record may name them (its lineage): raw rows go at
    # min(raw, records - the flow's max_future) with this on, at ``raw`` with it off.
    keep_lineage: bool = True
    interval: Annotated[Duration, Field(ge=1)] = 600.0
    batch: Annotated[int, Field(ge=1, le=100_000)] = 500
    # SQLite: free pages given back to the file system after a pass (incremental vacuum).
    vacuum_pages: Annotated[int, Field(ge=0)] = 2000

    def for_flow(self, override: RetentionOverride | None) -> dict[str, float | None]:
        """Seconds to keep each kind for one flow (None: forever)."""
        out: dict[str, float | None] = {k: getattr(self, k) for k in RETENTION_KEYS}
        if override is not None:
            for k in RETENTION_KEYS:
                v = getattr(override, k)
                if v is not None:
                    out[k] = v
            for k in override.keep_forever:
                out[k] = None
        return out


class MaintenanceConfig(Strict):
    """A recurring maintenance window: from each time ``cron`` fires (UTC), for
    ``duration``, the ``flows`` (empty: every flow) are paused (no scheduled runs) or
    muted (runs go on, alerts are not sent, and the runs count for no SLA)."""

    name: str | None = None
    flows: list[str] = []
    cron: str
    duration: Annotated[Duration, Field(gt=0)]
    mode: Literal["pause", "mute"] = "pause"

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        from apscheduler.triggers.cron import CronTrigger

        try:
            CronTrigger.from_crontab(v, timezone="UTC")
        except ValueError as exc:
            raise ValueError(f"bad cron expression: {exc}") from None
        return v


class FlowConfig(Strict):
    description: str = ""
    schedule: Schedule = Schedule(every=10.0)
    key: str | Annotated[list[Annotated[str, Field(pattern=NAME_RE)]], Field(min_length=1)]
    ts: str = "ts"
    freshness: Duration | None = 120.0  # null: historical (as history: true)
    history: bool = False  # historical data: no freshness penalty, never stale
    series: str | None = None  # the field detection keys its state by (default: the key)
    availability: Annotated[float, Field(ge=0, le=1)] = 0.99  # SLA target
    timestamps: TimestampChecks = TimestampChecks()
    sources: Annotated[list[SourceConfig], Field(min_length=1)]
    fields: dict[Annotated[str, Field(pattern=NAME_RE)], FieldSpec]
    rules: list[str] = []
    derive: dict[Annotated[str, Field(pattern=NAME_RE)], str] = {}
    enrich: list[EnrichSpec] = []
    quality: QualitySpec = QualitySpec()
    resolve: ResolveSpec = ResolveSpec()
    detect: list[DetectSpec] = []
    recovery: RecoveryConfig = RecoveryConfig()
    issues: IssuesConfig = IssuesConfig()
    retention: RetentionOverride = RetentionOverride()

    @property
    def key_fields(self) -> list[str]:
        """The key's fields: one, or the parts of a composite key (stored joined by '/')."""
        return [self.key] if isinstance(self.key, str) else list(self.key)

    @property
    def historical(self) -> bool:
        """``history: true`` or ``freshness: null``: no freshness score, never stale."""
        return self.history or self.freshness is None

    def metrics(self) -> list[str]:
        """Fields kept as time series: numeric fields (and derived ones) unless told otherwise."""
        keys = self.key_fields
        out = [n for n, f in self.fields.items()
               if f.metric or (f.metric is None and f.type in ("int", "float") and n not in keys)]
        return out + [n for n in self.derive if n not in out and n not in keys]


class L1Config(Strict):
    """In-process cache: entries are fresh for ``ttl``, then served stale for ``stale``
    more while one load refreshes them; at most ``size`` entries per flow (LRU)."""

    ttl: Annotated[Duration, Field(gt=0)] = 30.0
    size: Annotated[int, Field(ge=1)] = 10000
    stale: Annotated[Duration, Field(ge=0)] = 5.0


class L2Config(Strict):
    """Redis cache (when ``cache.redis_url`` is set): entry lifetime and per-call timeout."""

    ttl: Annotated[Duration, Field(gt=0)] = 300.0
    timeout: Annotated[Duration, Field(gt=0)] = 0.25


class HttpCachePolicy(Strict):
    """Cache-Control of one read-API endpoint (the L4 HTTP edge)."""

    max_age: Annotated[Duration, Field(ge=0)]
    stale_while_revalidate: Annotated[Duration, Field(ge=0)] = 0.0


HTTP_ENDPOINTS = ("flows", "latest", "history", "issues", "actions")
DEFAULT_HTTP_CACHE = {"flows": (1, 5), "latest": (1, 5), "history": (5, 30), "issues": (2, 10),
                      "actions": (2, 10)}


class CacheConfig(Strict):
    l1: L1Config = L1Config()
    l2: L2Config = L2Config()
    redis_url: str | None = None
    namespace: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")] = "flowdeck"
    http: dict[Literal["flows", "latest", "history", "issues", "actions"], HttpCachePolicy] = {}
    prewarm: Annotated[int, Field(ge=0, le=10_000)] = 20  # hot keys per flow after each run
    stats_interval: Annotated[Duration, Field(gt=0)] = 5.0

    def http_policies(self) -> dict[str, tuple[float, float]]:
        """(max-age, stale-while-revalidate) per endpoint: the defaults, then the config's."""
        out = {k: (float(a), float(b)) for k, (a, b) in DEFAULT_HTTP_CACHE.items()}
        for k, p in self.http.items():
            out[k] = (p.max_age, p.stale_while_revalidate)
        return out


class FeedConfig(Strict):
    bind: str = "127.0.0.1:8765"
    origins: list[str] = []
    token_env: str = "FLOWDECK_TOKEN"


class StoreConfig(Strict):
    url: str | None = None
    # SQLite: how long a write waits for a lock held by another connection before the
    # store counts as unavailable and fetched payloads go to the spool.
    busy_timeout: Duration = 5.0
    # Where payloads wait while the database is away (default: next to a SQLite file,
    # else ./flowdeck-spool/<database>), how much per flow, and how often to retry.
    spool_dir: str | None = None
    spool_max: Size = 256 * 2**20
    retry: Duration = 5.0
    # How long a run's series, roll-ups and raw status may wait to be written together
    # with the next runs' (records and `latest` never wait); 0: each run writes its own.
    derived_delay: Duration = 0.25


class ClusterConfig(Strict):
    """Several daemons on one PostgreSQL database (storage/leases.py): how long a node's
    lease on a flow lasts without renewal, how often it renews, and how long before the
    lease could expire a node that cannot renew stops running its flows."""

    lease_ttl: Annotated[Duration, Field(ge=1.0, le=3600.0)] = 15.0
    renew: Annotated[Duration, Field(gt=0)] | None = None  # default lease_ttl / 3
    margin: Annotated[Duration, Field(gt=0)] | None = None  # default lease_ttl / 5

    @model_validator(mode="after")
    def _fits(self) -> ClusterConfig:
        if self.renew is not None and self.renew * 2 > self.lease_ttl:
            raise ValueError(f"renew ({self.renew:g}s) must be at most half of lease_ttl "
                             f"({self.lease_ttl:g}s), so one missed renewal is not fatal")
        if self.margin is not None and self.margin + self.renew_every >= self.lease_ttl:
            raise ValueError(f"margin ({self.margin:g}s) plus renew ({self.renew_every:g}s) "
                             f"must be less than lease_ttl ({self.lease_ttl:g}s)")
        return self

    @property
    def renew_every(self) -> float:
        return self.renew if self.renew is not None else self.lease_ttl / 3

    @property
    def stop_margin(self) -> float:
        return self.margin if self.margin is not None else self.lease_ttl / 5


class ConsoleConfig(Strict):
    """Console preferences: theme, refresh interval, and key rebinding (binding id -> keys)."""

    theme: Literal["dark", "light", "high-contrast"] = "dark"
    refresh: Duration = 1.0
    keys: dict[str, str] = {}


class AlertsConfig(Strict):
    """A webhook URL per severity; newly opened issues are POSTed there as JSON."""

    webhooks: dict[Literal["info", "warning", "error", "critical"], str] = {}
    timeout: Duration = 5.0
    retries: Annotated[int, Field(ge=0, le=10)] = 3
    backoff: Duration = 0.5


class Config(Strict):
    flows: Annotated[dict[FlowName, FlowConfig], Field(min_length=1)]
    store: StoreConfig = StoreConfig()
    cache: CacheConfig = CacheConfig()
    feed: FeedConfig = FeedConfig()
    cluster: ClusterConfig = ClusterConfig()
    console: ConsoleConfig = ConsoleConfig()
    alerts: AlertsConfig = AlertsConfig()
    retention: RetentionConfig = RetentionConfig()
    maintenance: list[MaintenanceConfig] = []

    # Where the file was read from; relative paths in it are relative to its folder.
    base_dir: Path = Field(default=Path("."), exclude=True)
    path: Path | None = Field(default=None, exclude=True)
    # Where each key of the file is (loc tuple -> line), for warnings after loading.
    lines: dict[tuple, int] = Field(default_factory=dict, exclude=True)

    def resolve_path(self, p: str) -> Path:
        q = Path(os.path.expanduser(p))
        return q if q.is_absolute() else (self.base_dir / q)


# ---------------------------------------------------------------- loading


@dataclass(frozen=True)
class Problem:
    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class ConfigError(Exception):
    """A config that cannot be used. ``problems`` lists every reason."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def _loc_str(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


class _LineLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans (only true/false: `on: station` stays a string key)."""


_LineLoader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_LineLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"))


def _construct(loader: _LineLoader, node: yaml.Node, path: tuple, lines: dict) -> Any:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        out: dict[Any, Any] = {}
        for knode, vnode in node.value:
            key = loader.construct_object(knode, deep=True)
            if not isinstance(key, str):
                key = str(key)
            if key in out:
                raise ConfigError([Problem("", knode.start_mark.line + 1,
                                           _loc_str(path + (key,)), "duplicate key")])
            lines[path + (key,)] = knode.start_mark.line + 1
            out[key] = _construct(loader, vnode, path + (key,), lines)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(loader, item, path + (i,), lines) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def load_yaml_with_lines(text: str, filename: str) -> tuple[Any, dict[tuple, int]]:
    lines: dict[tuple, int] = {}
    try:
        loader = _LineLoader(text)
    except yaml.reader.ReaderError as exc:  # the reader checks every character up front
        at = text.count("\n", 0, exc.position) + 1
        char = exc.character if isinstance(exc.character, int) else 0
        raise ConfigError([Problem(filename, at, "", f"YAML syntax: character #x{char:04x}"
                                   f" is not allowed ({exc.reason})")]) from None
    try:
        node = loader.get_single_node()
        if node is None:
            raise ConfigError([Problem(filename, 1, "", "the file is empty")])
        data = _construct(loader, node, (), lines)
    except ConfigError as exc:
        raise ConfigError([Problem(filename, p.line, p.field, p.message)
                           for p in exc.problems]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        msg = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([Problem(filename, line, "", f"YAML syntax: {msg}")]) from None
    finally:
        loader.dispose()
    return data, lines


def _line_for(lines: dict[tuple, int], loc: tuple) -> int | None:
    loc = tuple(loc)
    while loc:
        if loc in lines:
            return lines[loc]
        loc = loc[:-1]
    return lines.get(())


def _clean_loc(loc: tuple) -> tuple:
    """Drop pydantic's internal segments (union branches, validator names) from a location."""
    out = []
    for part in loc:
        if isinstance(part, str) and (part in ("str", "FieldSource", "float", "int", "none")
                                      or part.startswith(("function-", "literal[", "tagged-union"))):
            continue
        out.append(part)
    return tuple(out)


def _pydantic_message(err: dict) -> str:
    t = err["type"]
    if t == "extra_forbidden":
        return "unknown key (check the spelling)"
    if t == "missing":
        return "required key is missing"
    msg = err["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    return msg


def parse_config(text: str, filename: str = "<config>", base_dir: Path | None = None) -> Config:
    data, lines = load_yaml_with_lines(text, filename)
    if not isinstance(data, dict):
        raise ConfigError([Problem(filename, 1, "", "expected a mapping with a 'flows' key")])
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        problems = []
        seen = set()
        for err in exc.errors():
            loc = _clean_loc(err["loc"])
            p = Problem(filename, _line_for(lines, loc), _loc_str(loc), _pydantic_message(err))
            if (p.line, p.field, p.message) not in seen:
                seen.add((p.line, p.field, p.message))
                problems.append(p)
        raise ConfigError(problems) from None
    base = base_dir if base_dir is not None else Path(filename).resolve().parent
    cfg = cfg.model_copy(update={"base_dir": base, "lines": lines,
                                 "path": Path(filename) if filename != "<config>" else None})
    problems = [Problem(filename, _line_for(lines, loc), _loc_str(loc), msg)
                for loc, msg in semantic_problems(cfg)]
    if problems:
        raise ConfigError(problems)
    return cfg


def load_config(path: str | os.PathLike | None = None) -> Config:
    """Read a config file (default: FLOWDECK_CONFIG, else the bundled demo config)."""
    if path is None:
        path = os.environ.get("FLOWDECK_CONFIG") or BUNDLED_CONFIG
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError([Problem(str(p), None, "", f"cannot read: {exc.strerror}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([Problem(str(p), None, "", f"not UTF-8 (byte {exc.start})")]) from None
    return parse_config(text, str(p), p.resolve().parent)


# ---------------------------------------------------------------- cross-checks


def source_key_constants(flow: FlowConfig, src: SourceConfig) -> dict[str, str]:
    """The key parts a source fixes for every record (``key:`` on the source), as strings."""
    if src.key is None:
        return {}
    if isinstance(src.key, dict):
        return {k: str(v) for k, v in src.key.items()}
    return {flow.key_fields[0]: str(src.key)}


def semantic_problems(cfg: Config) -> list[tuple[tuple, str]]:
    """Checks that need more than one key at a time: names that must exist, units, expressions."""
    from flowdeck.pipeline.expr import ExprError, compile_expr
    from flowdeck.pipeline.units import UnitError, affine, check_unit

    out: list[tuple[tuple, str]] = []
    for i, window in enumerate(cfg.maintenance):
        for j, name in enumerate(window.flows):
            if name not in cfg.flows:
                out.append((("maintenance", i, "flows", j), f"no flow '{name}'"))
    for fname, flow in cfg.flows.items():
        base = ("flows", fname)
        known = set(flow.fields) | {flow.ts}
        keys = flow.key_fields
        for k in keys:
            if k not in flow.fields and k not in flow.derive:
                out.append((base + ("key",), f"'{k}' is not one of the flow's fields"))
        if len(set(keys)) < len(keys):
            out.append((base + ("key",), "a key part is named twice"))
        if flow.series is not None and flow.series not in known | set(flow.derive):
            out.append((base + ("series",), f"'{flow.series}' is not a field"))
        names = [s.name for s in flow.sources]
        for i, src in enumerate(flow.sources):
            sloc = base + ("sources", i)
            if names.count(src.name) > 1:
                out.append((sloc + ("name",), f"duplicate source name '{src.name}'"))
            out.extend((sloc + loc, msg) for loc, msg in inline_secret_problems(src))
            if flow.ts not in src.fields:
                out.append((sloc + ("fields",), f"no mapping for the timestamp field '{flow.ts}'"))
            constant = source_key_constants(flow, src)
            if isinstance(src.key, dict):
                for k in src.key:
                    if k not in keys:
                        out.append((sloc + ("key", k), f"'{k}' is not a part of the flow's key"))
            elif src.key is not None and len(keys) > 1:
                out.append((sloc + ("key",), "the flow's key has several parts: give "
                            "{part: value} for the parts this source fixes"))
            for k in keys:
                if k not in src.fields and k not in constant and k not in flow.derive:
                    out.append((sloc + ("fields",), f"no mapping for the key field '{k}' "
                                "(map it, derive it, or give the source a constant 'key')"))
            if src.format != "csv" and src.columns:
                from flowdeck.pipeline.payload import _split_path

                try:  # as the daemon reads it (records, zip and field paths: _shape_problems)
                    _split_path(src.columns, "columns path")
                except ValueError as exc:
                    out.append((sloc + ("columns",), str(exc)))
            for f in src.fields:
                if f not in known:
                    out.append((sloc + ("fields", f), f"'{f}' is not one of the flow's fields"))
            out.extend(_shape_problems(sloc, src, flow))
            for f, unit in src.units.items():
                uloc = sloc + ("units", f)
                spec = flow.fields.get(f)
                if spec is None:
                    out.append((uloc, f"'{f}' is not one of the flow's fields"))
                    continue
                try:
                    check_unit(unit)
                    if spec.unit is None:
                        out.append((uloc, f"field '{f}' declares no unit to convert to"))
                    else:
                        affine(unit, spec.unit)
                except UnitError as exc:
                    out.append((uloc, str(exc)))
            for f in src.invert:
                if f not in flow.fields:
                    out.append((sloc + ("invert",), f"'{f}' is not one of the flow's fields"))
        for f, spec in flow.fields.items():
            if spec.unit:
                try:
                    check_unit(spec.unit)
                except UnitError as exc:
                    out.append((base + ("fields", f, "unit"), str(exc)))
            if spec.range and None not in spec.range and spec.range[0] > spec.range[1]:
                out.append((base + ("fields", f, "range"), "lower bound is above upper bound"))
        env_names = set(known)
        for i, rule in enumerate(flow.rules):
            try:
                e = compile_expr(rule)
                missing = e.names - env_names
                if missing:
                    out.append((base + ("rules", i), f"unknown field(s): {', '.join(sorted(missing))}"))
            except ExprError as exc:
                out.append((base + ("rules", i), f"bad expression: {exc}"))
        for name, text in flow.derive.items():
            try:
                e = compile_expr(text)
                missing = e.names - env_names
                if missing:
                    out.append((base + ("derive", name),
                                f"unknown field(s): {', '.join(sorted(missing))}"))
            except ExprError as exc:
                out.append((base + ("derive", name), f"bad expression: {exc}"))
            env_names.add(name)
        for i, en in enumerate(flow.enrich):
            eloc = base + ("enrich", i)
            table = cfg.resolve_path(en.table)
            if en.on not in flow.fields:
                out.append((eloc + ("on",), f"'{en.on}' is not one of the flow's fields"))
            if not table.is_file():
                out.append((eloc + ("table",), f"no such file: {table}"))
            else:
                with open(table, encoding="utf-8") as fh:
                    header = fh.readline().strip().split(",")
                for col in [en.key or en.on, *en.add]:
                    if col not in header:
                        out.append((eloc + ("add",), f"column '{col}' not in {table.name}"))
        for f in flow.resolve.tolerance:
            if f not in env_names:
                out.append((base + ("resolve", "tolerance", f), f"'{f}' is not a field"))
        for name in (*flow.fields, *flow.derive):
            if name == RESERVED_FIELD:
                where = "fields" if name in flow.fields else "derive"
                out.append((base + (where, name), f"'{name}' is reserved: flagged records "
                            "carry their anomaly reason under it"))
        for i, d in enumerate(flow.detect):
            if d.metric not in env_names:
                out.append((base + ("detect", i, "metric"), f"'{d.metric}' is not a field"))
            if d.warmup > d.calibration_window:
                out.append((base + ("detect", i, "warmup"),
                            f"must not exceed calibration_window ({d.calibration_window})"))
    return out


def _shape_problems(sloc: tuple, src: SourceConfig, flow: FlowConfig) -> list[tuple[tuple, str]]:
    """Every path the engine will compile (fields, records, zip, unit_from) compiled now, so
    a config `check` accepts is never refused when the daemon starts."""
    from flowdeck.pipeline.payload import _parse_records_path, _split_path, compile_path

    out: list[tuple[tuple, str]] = []
    for f, spec in src.fields.items():
        path = spec.path if isinstance(spec, FieldSource) else spec
        floc = sloc + ("fields", f) + (("path",) if isinstance(spec, FieldSource) else ())
        try:
            compile_path(path)
        except ValueError as exc:
            out.append((floc, str(exc)))
    try:
        if src.records and src.format in ("json", "geojson"):
            _parse_records_path(src.records)
        if src.records and src.format == "xml":
            for seg in _split_path(src.records, "records path"):
                prefix, sep, _local = seg.rpartition(":")
                if sep and prefix not in src.namespaces:
                    raise ValueError(f"namespace prefix '{prefix}' is not declared in "
                                     "'namespaces'")
    except ValueError as exc:
        out.append((sloc + ("records",), str(exc)))
    if src.zip:
        try:
            _split_path(src.zip, "zip path")
        except ValueError as exc:
            out.append((sloc + ("zip",), str(exc)))
    for f, path in src.unit_from.items():
        uloc = sloc + ("units", f)
        fspec = flow.fields.get(f)
        if fspec is None:
            out.append((uloc, f"'{f}' is not one of the flow's fields"))
            continue
        if fspec.unit is None:
            out.append((uloc, f"field '{f}' declares no unit to convert to"))
        try:
            compile_path(path)
        except ValueError as exc:
            out.append((uloc + ("from",), str(exc)))
    return out


_ID_LIKE = re.compile(r"(?:^|_)(?:id|uuid|guid|event|code)(?:$|_)", re.IGNORECASE)


def config_warnings(cfg: Config) -> list[Problem]:
    """What loads but may not do what the author expects (``flowdeck check`` prints these
    as ``file:line: field: warning: ...`` and still passes)."""
    filename = str(cfg.path) if cfg.path is not None else "<config>"
    out: list[tuple[tuple, str]] = []
    for fname, flow in cfg.flows.items():
        base = ("flows", fname)
        for i, src in enumerate(flow.sources):
            ts = src.timestamp
            if "tz" in ts.model_fields_set or ts.format.startswith("epoch"):
                continue
            if ts.format == "iso":
                what = "ISO timestamps without an offset"
            elif "%z" in ts.format or "%Z" in ts.format:
                continue
            else:
                what = f"timestamps read by {ts.format!r} carry no zone and"
            out.append((base + ("sources", i, "timestamp"),
                        f"{what} are taken as UTC in field '{flow.ts}' (set timestamp.tz "
                        "to say which zone they are in)"))
        if flow.detect and flow.series is None and any(_ID_LIKE.search(k)
                                                       for k in flow.key_fields):
            out.append((base + ("detect",),
                        f"detection keeps its state per key ('{'/'.join(flow.key_fields)}'); "
                        "if every key has one record (an event feed keyed by event id), "
                        "nothing is ever detected: name the series with 'series: FIELD'"))
    return [Problem(filename, _line_for(cfg.lines, loc), _loc_str(loc), "warning: " + msg)
            for loc, msg in out]
