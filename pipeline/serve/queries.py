"""Read-side operations behind the CLI: export, lineage. The console and API reuse them."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from flowdeck.pipeline.config import Config, FlowConfig
from flowdeck.pipeline.core.durations import parse_duration
from flowdeck.pipeline.stages.chain import StageChain
from flowdeck.pipeline.stages.detect import REASON_KEY
from flowdeck.storage.model import RawDraft
from flowdeck.storage.store import Store


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


def parse_since(text: str | None, now_ms: int) -> int | None:
    """'2026-11-24T10:00:00Z', '2026-11-24', a duration ago ('15m', '2h', '1h30m'), or
    epoch milliseconds. A duration needs its unit here: a bare number is epoch ms."""
    if not text:
        return None
    if text.isdigit():
        return int(text)
    if text.rstrip()[-1:].isalpha():
        with contextlib.suppress(ValueError):  # not a duration: perhaps a time
            return now_ms - int(parse_duration(text) * 1000)
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"cannot read time {text!r}: use ISO-8601 (2026-11-24T10:00:00Z), "
                         "a duration ago (15m, 2h) or epoch milliseconds") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def split_reason(data: dict) -> tuple[dict, dict | None]:
    """A stored record's fields and its anomaly reason (kept in its data, see
    docs/detection.md), apart."""
    if REASON_KEY not in data:
        return data, None
    fields = dict(data)
    return fields, fields.pop(REASON_KEY)


def reason_summary(reason: dict | None) -> str:
    """One line: ``robust_z: observed 35 outside 19.6..20.4 (expected 20), p 1e-12``."""
    if not reason:
        return "-"
    text = f"{reason.get('detector')}: observed {_num(reason.get('observed'))}"
    low, high = reason.get("low"), reason.get("high")
    if low is not None and high is not None:
        text += f" outside {_num(low)}..{_num(high)}"
    if reason.get("expected") is not None:
        text += f" (expected {_num(reason['expected'])})"
    if reason.get("probability") is not None:
        text += f", p {reason['probability']:.2g}"
    return text


def _num(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, int | float) and not isinstance(v, bool) else str(v)


def export_rows(store: Store, flow: str, since_ms: int | None = None) -> Iterator[dict]:
    """Records as flat rows: the fields, then the scores; ``anomaly_reason`` (a dict or
    None) on every row, so a CSV has the column whatever the first row is."""
    for r in store.records_since(flow, since_ms):
        data, reason = split_reason(r["data"])
        yield {"id": r["id"], "flow": flow, "key": r["key"], "ts": iso(r["ts_ms"]),
               **data, "quality": r["quality"], "anomaly_score": r["anomaly_score"],
               "anomalous": r["anomalous"], "anomaly_reason": reason, "flags": r["flags"],
               "sources": r["sources"]}


def _csv_cell(v: Any) -> Any:
    if isinstance(v, list):
        return ";".join(map(str, v))
    if isinstance(v, dict):
        return json.dumps(v, default=str, sort_keys=True)
    return v


def export_text(store: Store, flow: str, fmt: str, since_ms: int | None, out) -> int:
    """Write validated records as CSV or JSON lines; returns how many. In CSV the
    ``anomaly_reason`` column is the reason as JSON text (empty when not flagged)."""
    n = 0
    writer = None
    for row in export_rows(store, flow, since_ms):
        if fmt == "jsonl":
            out.write(json.dumps(row, default=str) + "\n")
        else:
            flat = {k: _csv_cell(v) for k, v in row.items()}
            if writer is None:
                writer = csv.DictWriter(out, fieldnames=list(flat), extrasaction="ignore")
                writer.writeheader()
            writer.writerow(flat)
        n += 1
    return n


def _diff(before: dict | None, after: dict | None) -> dict[str, list]:
    before, after = before or {}, after or {}
    out = {}
    for k in list(before) + [k for k in after if k not in before]:
        if before.get(k) != after.get(k):
            out[k] = [before.get(k), after.get(k)]
    return out


def lineage(store: Store, config: Config, record_id: int) -> dict[str, Any]:
    """A record's raw payloads and what each stage did to it.

    Stages are deterministic given the payload and the pipeline version, so the
    trail is rebuilt by re-running the stored payload through the *stored*
    version of the flow's config, one stage at a time, and comparing.
    """
    rec = store.get_record(record_id)
    if rec is None:
        raise LookupError(f"no record with id {record_id}")
    flow = rec["flow"]
    version = store.get_version(rec["version_id"]) if rec["version_id"] else None
    if version is not None:
        flow_cfg = FlowConfig.model_validate(version["config"])
    elif flow in config.flows:
        flow_cfg = config.flows[flow]
    else:
        raise LookupError(f"flow {flow!r} is neither in the config nor in the stored versions")
    cfg = config.model_copy(update={"flows": {flow: flow_cfg}})
    chain = StageChain(flow, flow_cfg, cfg)
    fields, reason = split_reason(rec["data"])
    out: dict[str, Any] = {
        "record": {"id": rec["id"], "flow": flow, "key": rec["key"], "ts": iso(rec["ts_ms"]),
                   "data": fields, "quality": rec["quality"],
                   "anomaly_score": rec["anomaly_score"], "anomalous": rec["anomalous"],
                   "anomaly_reason": reason, "flags": rec["flags"], "sources": rec["sources"]},
        "version": {"id": rec["version_id"], "stages": version["stages"] if version else None,
                    "created": iso(version["created_ms"]) if version else None},
        "raw": [], "stages": [],
    }
    for raw_id in rec["raw_ids"]:
        raw = store.get_raw(raw_id)
        if raw is None:
            continue
        out["raw"].append({"id": raw_id, "source": raw["source"], "fetched": iso(raw["fetched_ms"]),
                           "sha256": raw["content_hash"], "size": raw["size"],
                           "content_type": raw["content_type"],
                           "excerpt": raw["body"][:400].decode("utf-8", "replace")})
        out["stages"].extend(_trace(chain, flow_cfg, raw, rec))
    contrib = rec["contributions"] or {}
    out["stages"].append({"stage": "resolve", "version": chain.resolver.version,
                          "strategy": flow_cfg.resolve.strategy,
                          "inputs": {s: c.get("v") for s, c in contrib.items()},
                          "output": fields})
    out["stages"].append({"stage": "detect", "version": chain.detector.version,
                          "anomaly_score": rec["anomaly_score"], "anomalous": rec["anomalous"],
                          "anomaly_reason": reason,
                          "flags": [f for f in rec["flags"] if f.startswith("anomaly:")]})
    return out


def _trace(chain: StageChain, flow_cfg: FlowConfig, raw: dict, rec: dict) -> list[dict]:
    """Re-run one payload stage by stage; report the matching record's data after each."""
    source = raw["source"]
    collector, resolver = chain.collector, chain.resolver
    if source not in collector.sources:
        return [{"stage": "collect", "source": source, "note": "source no longer configured"}]
    payload = RawDraft(source, raw["body"], raw["fetched_ms"], raw["content_type"],
                       truncated=raw["truncated"], raw_id=raw["id"])
    batch, _ = chain.collect(payload, raw["fetched_ms"], replay=True)

    def find() -> dict | None:
        for r in batch.records:
            if r.key == rec["key"] and resolver.bucket(r.ts) == rec["ts_ms"]:
                return dict(r.data, ts=iso(r.ts))
        return None

    steps = []
    cur = find()
    steps.append({"stage": "collect", "source": source, "version": collector.version,
                  "output": cur})

    def after(stage, batch) -> None:
        nonlocal cur
        nxt = find()
        step = {"stage": stage.name, "source": source, "version": stage.version,
                "changed": _diff(cur, nxt)}
        if stage.name == "transform":
            src_cfg = collector.sources[source].src
            step["units"] = {f: [u, flow_cfg.fields[f].unit] for f, u in src_cfg.units.items()
                             if flow_cfg.fields[f].unit and flow_cfg.fields[f].unit != u}
            if src_cfg.invert:
                step["inverted"] = list(src_cfg.invert)
        if stage.name == "quality":
            step["quality"] = next((r.quality for r in batch.records if r.key == rec["key"]
                                    and resolver.bucket(r.ts) == rec["ts_ms"]), None)
        steps.append(step)
        cur = nxt

    chain.refine(batch, raw["fetched_ms"], after=after)
    return steps


def render_lineage(info: dict) -> str:
    buf = io.StringIO()
    r = info["record"]
    buf.write(f"record {r['id']}  flow {r['flow']}  key {r['key']}  ts {r['ts']}\n")
    buf.write(f"  data {json.dumps(r['data'], default=str)}\n")
    buf.write(f"  quality {r['quality']}  anomaly {r['anomaly_score']}  flags "
              f"{', '.join(r['flags']) or '-'}  sources {', '.join(r['sources'])}\n")
    v = info["version"]
    if v["stages"]:
        buf.write(f"pipeline version {v['id']} ({v['created']}): "
                  + ", ".join(v["stages"].values()) + "\n")
    buf.write("raw payloads:\n")
    for raw in info["raw"]:
        buf.write(f"  #{raw['id']} {raw['source']} fetched {raw['fetched']} "
                  f"{raw['size']} bytes sha256 {raw['sha256'][:12]}\n")
    buf.write("stages:\n")
    for st in info["stages"]:
        name = st["stage"] + (f" [{st['source']}]" if "source" in st else "")
        if "changed" in st:
            ch = st["changed"]
            text = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in ch.items()) or "no change"
            if "quality" in st:
                text += f"; score {st['quality']}"
            buf.write(f"  {name:24} {text}\n")
        elif st["stage"] == "collect":
            buf.write(f"  {name:24} {json.dumps(st.get('output'), default=str)}\n")
        elif st["stage"] == "resolve":
            buf.write(f"  {name:24} {st['strategy']} of "
                      + "; ".join(f"{s}: {json.dumps(v, default=str)}"
                                  for s, v in st["inputs"].items()) + "\n")
        elif st["stage"] == "detect":
            buf.write(f"  {name:24} score {st['anomaly_score']} "
                      f"{'ANOMALOUS' if st['anomalous'] else 'normal'}")
            if st.get("anomaly_reason"):
                buf.write(f"; {reason_summary(st['anomaly_reason'])}")
            buf.write("\n")
    return buf.getvalue()
