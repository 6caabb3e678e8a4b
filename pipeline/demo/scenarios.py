"""Fault scenarios for the demo simulator: YAML files in sample_data/scenarios/ (or a path),
validated by pydantic; fault times are seconds relative to the simulator's t0."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from flowdeck.pipeline.config import BUNDLED_DIR
from flowdeck.pipeline.core.durations import parse_duration
from flowdeck.pipeline.demo.catalogue import FLOW_KEYS, FLOW_METRICS, SOURCES, MalformedVariant

SCENARIO_DIR = BUNDLED_DIR / "scenarios"

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
    "drift",
]

# --------------------------------------------------------------------------- scenarios

def parse_amount(value: float | str) -> tuple[float, bool]:
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
    # One source's reading runs away from the truth by `delta` per hour from `start`
    # (on one key, or every key), for `duration` or for good; the truth stays.
    "drift": {"source", "key", "metric", "start", "duration", "delta"},
}
_REQUIRED_KEYS: dict[str, set[str]] = {
    "latency": {"delay"},
    "schema_drift": {"rename"},
    "clock_skew": {"offset"},
    "spike": {"flow", "key", "metric", "at", "magnitude"},
    "level_shift": {"flow", "key", "metric", "at", "delta"},
    "drift": {"metric", "delta"},
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
TRUTH_KINDS = {"spike", "level_shift"}


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
        if self.kind not in TRUTH_KINDS and not self.source:
            missing.add("source")
        if missing:
            raise ValueError(f"{self.kind}: missing key(s) {sorted(missing)}")
        if self.kind in TRUTH_KINDS:
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
            if self.kind == "drift":
                flow = SOURCES[name].flow
                if self.metric not in FLOW_METRICS[flow]:
                    raise ValueError(f"unknown {flow} metric {self.metric!r}; "
                                     f"metrics: {FLOW_METRICS[flow]}")
                if self.key is not None and self.key not in FLOW_KEYS[flow]:
                    raise ValueError(f"unknown {flow} key {self.key!r}; keys: {FLOW_KEYS[flow]}")
                parse_amount(self.delta)  # type: ignore[arg-type]
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
        parse_amount(self.magnitude if self.kind == "spike" else self.delta)  # type: ignore[arg-type]

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

    def drift_bias(self, source: str, key: str, metric: str, elapsed: float
                   ) -> tuple[float, bool]:
        """A drift fault's bias on ``source``'s ``metric`` of ``key`` at ``elapsed``
        seconds after t0, and whether it is relative (a share of the value); (0, False)
        when it does not apply."""
        if (self.kind != "drift" or not self.applies_to(source) or metric != self.metric
                or (self.key is not None and key != self.key) or elapsed < self.start):
            return 0.0, False
        amount, relative = parse_amount(self.delta)  # type: ignore[arg-type]
        hours = (elapsed - self.start) / 3600.0
        if self.duration is not None:
            hours = min(hours, self.duration / 3600.0)
        return amount * hours, relative

    def applies_to(self, source: str) -> bool:
        return bool(self.source) and source in self.source  # type: ignore[operator]


class _ScenarioFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    # The first answer of each HTTP source also carries this much healthy history before
    # t0 (as an API's first page of recent observations would), so a fresh engine's
    # detectors are calibrated before the scenario's first fault. 0: the last 5 minutes.
    backlog: float = 0.0
    faults: list[Fault] = []

    @field_validator("backlog", mode="before")
    @classmethod
    def _backlog(cls, v: Any) -> Any:
        value = 0.0 if v is None else parse_duration(v)
        if value < 0 or value > 7 * 86400:
            raise ValueError("backlog must be between 0 and 7d")
        return value


@dataclass
class Scenario:
    name: str
    description: str = ""
    faults: list[Fault] = field(default_factory=list)
    backlog: float = 0.0  # seconds of history before t0 in each source's first answer

    @classmethod
    def parse(cls, data: Any, origin: str = "<scenario>") -> Scenario:
        try:
            model = _ScenarioFile.model_validate(data if data is not None else {})
        except ValidationError as exc:
            raise ValueError(f"invalid scenario {origin}: {exc}") from exc
        return cls(name=model.name, description=model.description, faults=list(model.faults),
                   backlog=model.backlog)

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


