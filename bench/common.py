"""What every benchmark of the harness shares: the scale knob, percentiles, the run's
environment (CPU, Python, library versions, git revision) and the shape of a figure."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PG_ADMIN = os.environ.get("FLOWDECK_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")


@dataclass
class Options:
    quick: bool = False
    scale: float = 1.0  # multiplies record counts, viewers' message counts, keys, seconds
    only: set[str] = field(default_factory=set)

    def n(self, full: int, quick: int, least: int = 1) -> int:
        """A size: ``full`` or ``quick`` records (messages, keys...), times the scale."""
        return max(least, int((quick if self.quick else full) * self.scale))

    def seconds(self, full: float, quick: float, least: float = 0.5) -> float:
        return max(least, (quick if self.quick else full) * self.scale)


@dataclass
class Figure:
    """One figure of the run: its value, the baseline it is read against, the target."""

    key: str
    value: float | None
    target: str  # e.g. ">= 100000"
    baseline: str  # what it is measured against, with that baseline's own number
    unit: str = ""
    reason: str | None = None  # why value is None
    extra: dict[str, Any] = field(default_factory=dict)

    def met(self) -> bool | None:
        if self.value is None:
            return None
        op, _, num = self.target.partition(" ")
        x = float(num.replace(",", ""))
        return {">=": self.value >= x, "<=": self.value <= x, "<": self.value < x,
                ">": self.value > x}[op]


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size of a process (Linux /proc), in bytes."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_rev() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO, capture_output=True, text=True).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


LIBRARIES = ("flowdeck", "sqlalchemy", "psycopg", "orjson", "bytewax", "textual", "websockets",
             "pydantic", "redis")


def environment() -> dict[str, Any]:
    versions = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            versions[lib] = None
    import sqlite3

    versions["sqlite"] = sqlite3.sqlite_version
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "libraries": versions,
        "git_rev": git_rev(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "loadavg_at_start": load,
        # the detectors' compiled kernel (pipeline/_kernel.pyx) or their Python path
        "detector_kernel": detector_kernel(),
    }


def detector_kernel() -> bool:
    from flowdeck.pipeline import detectors

    return detectors.KERNEL


def log(msg: str) -> None:
    """Progress on stderr, so --json's stdout is the one JSON object."""
    print(msg, file=sys.stderr, flush=True)
