"""The bench flow written by hand in Bytewax 0.21 (one worker): what a user would build
instead of flowdeck, with the same chain and the same output.

collect (parse, map fields, epoch-ms timestamps, future check) -> validate (types,
required, pattern, ranges) -> transform (degF -> degC, the derived temperature_f) ->
enrich (join the stations table; unmatched flagged ``unenriched``) -> quality (the
same 0..1 formula) -> resolve (stateful per key: the window's contribution per source;
window 0 and one source, so the record itself) -> detect (stateful per key: a robust-z
detector; flowdeck's ``Detector`` class, the algorithm both sides use, so that the
scores are identical) -> a sink that writes one row per record into SQLite with
``executemany``, one transaction per batch the sink is handed.

``compare`` checks that what this chain wrote equals what flowdeck stored, field by
field (values, quality, anomaly score, anomalous, flags) for every (key, ts).
"""

from __future__ import annotations

import csv
import math
import re
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from flowdeck.pipeline.config import Config
from flowdeck.pipeline.detectors import Detector
from flowdeck.pipeline.stages.detect import detector_settings
from flowdeck.pipeline.units import affine

FLOW = "bench"
FRESHNESS_MS = 120_000  # the flow's default freshness (2m)
WEIGHTS = (0.3, 0.3, 0.2, 0.2)  # completeness, validity, freshness, reliability
PENALTY = {"clock_skew": 0.5, "out_of_order": 0.25, "unenriched": 0.25, "conflict": 0.25}


def unavailable() -> str | None:
    """None when Bytewax 0.21 can be imported, else why not (a `bench` extra)."""
    try:
        import bytewax
        from bytewax import operators  # noqa: F401
    except ImportError as exc:
        return f"bytewax is not installed (pip install -e '.[bench]'): {exc}"
    version = getattr(bytewax, "__version__", None)
    if version is None:
        import importlib.metadata

        version = importlib.metadata.version("bytewax")
    if not version.startswith("0.21"):
        return f"bytewax {version} is installed, the comparison is written for 0.21"
    return None


def _typed(value: str) -> Any:
    if value == "":
        return None
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        return value


def _round6(reason: dict[str, Any]) -> dict[str, Any]:
    return {k: (float(f"{v:.6g}") if math.isfinite(v) else None)
            if isinstance(v, float) and k != "observed" else v for k, v in reason.items()}


def build(payloads: list[bytes], config: Config, db: Path, fetched_ms: int):
    """The dataflow: payloads in, rows in the SQLite file ``db`` out."""
    from bytewax import operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.outputs import DynamicSink, StatelessSinkPartition
    from bytewax.testing import TestingSource

    flow_cfg = config.flows[FLOW]
    spec = flow_cfg.detect[0]
    settings = detector_settings(spec)
    a, b = affine("degF", "degC")
    pattern = re.compile(r"^[A-Z0-9]{4}$")
    table_path = config.resolve_path(flow_cfg.enrich[0].table)
    with open(table_path, newline="", encoding="utf-8") as fh:
        table = {row["station"]: {"elevation": _typed(row["elevation"]),
                                  "region": _typed(row["region"])} for row in csv.DictReader(fh)}
    no_match = {"elevation": None, "region": None}
    max_future = fetched_ms + 300_000
    skew = fetched_ms + 30_000
    fields = ("station", "temperature", "pressure", "wind_speed")
    wc, wv, wf, wr = WEIGHTS

    def collect(body: bytes):
        for line in body.splitlines():
            item = orjson.loads(line)
            ts, key = item.get("t"), item.get("s")
            if key is None or ts is None or type(ts) is not int or ts > max_future:
                continue
            flags = ["clock_skew"] if ts > skew else []
            yield {"key": str(key), "ts": ts, "flags": flags,
                   "data": {"station": key, "temperature": item.get("temp_f"),
                            "pressure": item.get("p"), "wind_speed": item.get("w")}}

    def number(v: Any, lo: float, hi: float) -> float | None:
        if type(v) is bool or not isinstance(v, int | float):
            raise ValueError(v)
        v = float(v)
        if not math.isfinite(v) or not lo <= v <= hi:
            raise ValueError(v)
        return v

    def validate(rec: dict) -> dict | None:
        d = rec["data"]
        try:
            if not isinstance(d["station"], str) or not pattern.match(d["station"]):
                return None
            if d["temperature"] is None:
                return None
            d["temperature"] = number(d["temperature"], (-90 - b) / a, (60 - b) / a)
            if d["pressure"] is not None:
                d["pressure"] = number(d["pressure"], 850, 1090)
            if d["wind_speed"] is not None:
                d["wind_speed"] = number(d["wind_speed"], 0, 120)
        except ValueError:
            return None
        return rec

    def transform(rec: dict) -> dict:
        d = rec["data"]
        d["temperature"] = a * d["temperature"] + b
        d["temperature_f"] = d["temperature"] * 1.8 + 32
        return rec

    def enrich(rec: dict) -> dict:
        row = table.get(rec["data"]["station"])
        if row is None:
            rec["data"].update(no_match)
            rec["flags"].append("unenriched")
        else:
            rec["data"].update(row)
        return rec

    def quality(rec: dict) -> dict:
        d = rec["data"]
        completeness = sum(1 for n in fields if d.get(n) is not None) / len(fields)
        validity = max(1.0 - sum(PENALTY.get(f, 0.0) for f in rec["flags"]), 0.0)
        age = fetched_ms - rec["ts"]
        fresh = 1.0 if age <= FRESHNESS_MS else max(0.0, 1.0 - (age - FRESHNESS_MS) / FRESHNESS_MS)
        rec["quality"] = round(wc * completeness + wv * validity + wf * fresh + wr * 1.0, 4)
        return rec

    def resolve(state: dict | None, rec: dict):
        # (window start, {source: contribution}); window 0: a window is one timestamp.
        window = rec["ts"]
        if state is None or state["window"] != window:
            state = {"window": window, "contrib": {}}
        state["contrib"]["feed"] = {"v": rec["data"], "ts": rec["ts"], "q": rec["quality"],
                                    "f": rec["flags"]}
        rec["flags"] = sorted(set(rec["flags"]))
        return state, rec

    def detect(det: Detector | None, rec: dict):
        if det is None:
            det = Detector(settings)
        rec["anomaly"], rec["anomalous"] = 0.0, False
        v = rec["data"].get("temperature")
        if isinstance(v, float) and math.isfinite(v):
            sc = det.score((rec["key"], "temperature"), rec["ts"] / 1000, v)
            rec["anomaly"] = max(0.0, round(sc.score, 4))
            if sc.score >= 0.5:
                rec["flags"].append("anomaly:temperature")
                rec["data"] = {**rec["data"], "anomaly_reason": _round6(
                    {"metric": "temperature", **(sc.reason() or {})})}
                rec["anomalous"] = sc.anomalous
        return det, rec

    class SqlitePart(StatelessSinkPartition):
        def __init__(self) -> None:
            self.con = sqlite3.connect(db, isolation_level=None)
            self.con.execute("PRAGMA journal_mode=WAL")
            self.con.execute("PRAGMA synchronous=NORMAL")
            self.con.execute("create table if not exists records (key text, ts_ms integer, "
                             "data text, quality real, anomaly_score real, anomalous integer, "
                             "flags text, primary key (key, ts_ms))")

        def write_batch(self, items: list) -> None:
            dumps = orjson.dumps
            rows = [(r["key"], r["ts"], dumps(r["data"]).decode(), r["quality"], r["anomaly"],
                     r["anomalous"], dumps(r["flags"]).decode()) for _k, r in items]
            self.con.execute("begin")
            self.con.executemany("insert or replace into records values (?, ?, ?, ?, ?, ?, ?)",
                                 rows)
            self.con.execute("commit")

        def close(self) -> None:
            self.con.close()

    class SqliteSink(DynamicSink):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> SqlitePart:
            return SqlitePart()

    flow = Dataflow("flowdeck_bench")
    s = op.input("in", flow, TestingSource(payloads))
    s = op.flat_map("collect", s, collect)
    s = op.filter_map("validate", s, validate)
    s = op.map("transform", s, transform)
    s = op.map("enrich", s, enrich)
    s = op.map("quality", s, quality)
    keyed = op.key_on("by_key", s, lambda r: r["key"])
    keyed = op.stateful_map("resolve", keyed, resolve)
    keyed = op.stateful_map("detect", keyed, detect)
    op.output("store", keyed, SqliteSink())
    return flow


def run_chain(payloads: list[bytes], config: Config,
              fetched_ms: int | None = None) -> tuple[float, dict[tuple[str, int], dict]]:
    """Seconds to run the dataflow to the end (one worker), and what it wrote."""
    from bytewax.testing import run_main

    from bench.throughput import T0_MS

    fetched = fetched_ms if fetched_ms is not None else T0_MS + 3_600_000
    with tempfile.TemporaryDirectory(prefix="flowdeck-bench-bytewax-") as d:
        db = Path(d) / "bytewax.db"
        t = time.perf_counter()
        run_main(build(payloads, config, db, fetched))
        dt = time.perf_counter() - t
        con = sqlite3.connect(db)
        out = {}
        for key, ts, data, q, score, anomalous, flags in con.execute("select * from records"):
            out[(key, ts)] = {"data": orjson.loads(data), "quality": q, "anomaly_score": score,
                              "anomalous": bool(anomalous), "flags": orjson.loads(flags)}
        con.close()
    return dt, out


def compare(bytewax: dict, flowdeck: dict) -> dict[str, Any]:
    """Do both sides hold the same records, field by field?"""
    missing = len(flowdeck.keys() - bytewax.keys())
    extra = len(bytewax.keys() - flowdeck.keys())
    differ = []
    for k in flowdeck.keys() & bytewax.keys():
        if flowdeck[k] != bytewax[k]:
            differ.append(k)
    first = None
    if differ:
        k = sorted(differ)[0]
        first = {"key": list(k), "flowdeck": flowdeck[k], "bytewax": bytewax[k]}
    return {"identical": not (missing or extra or differ), "records": len(flowdeck),
            "missing": missing, "extra": extra, "differ": len(differ),
            "anomalous": sum(1 for r in flowdeck.values() if r["anomaly_score"] >= 0.5),
            "first_difference": first}
