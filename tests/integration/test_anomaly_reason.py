"""Where a flagged record's anomaly_reason shows on the read side: the stored record,
`flowdeck export` (csv and jsonl), the lineage text."""

from __future__ import annotations

import csv
import io
import json

from flowdeck.pipeline.serve.queries import (
    export_text,
    reason_summary,
    render_lineage,
    split_reason,
)
from flowdeck.storage.model import BatchWrite

T = 1_795_521_600_000
REASON = {"metric": "rate", "detector": "robust_z", "observed": 1.2, "expected": 1.09,
          "low": 1.08, "high": 1.1, "score": 1.0, "probability": 1e-12, "episode": 1}


def row(key: str, ts: int, rate: float, reason: dict | None = None) -> dict:
    data = {"pair": key, "rate": rate}
    if reason is not None:
        data["anomaly_reason"] = reason
    return {"flow": "fx", "key": key, "ts_ms": ts, "data": data, "quality": 0.9,
            "anomaly_score": 1.0 if reason else 0.01, "anomalous": reason is not None,
            "flags": ["anomaly:rate"] if reason else [], "sources": ["fxquote"],
            "contributions": {"fxquote": {"v": {"pair": key, "rate": rate}}}, "raw_ids": [],
            "version_id": None, "updated_ms": T}


def stored(store) -> None:
    store.write_batch(BatchWrite("fx", records=[
        row("EURUSD", T, 1.09), row("EURUSD", T + 60_000, 1.2, REASON),
        row("GBPUSD", T, 1.26)]), T)


def test_the_reason_is_stored_in_the_records_data_and_latest(store):
    stored(store)
    rec = next(r for r in store.records_since("fx", key="EURUSD") if r["anomalous"])
    assert rec["data"]["anomaly_reason"] == REASON
    assert split_reason(rec["data"]) == ({"pair": "EURUSD", "rate": 1.2}, REASON)
    (latest,) = store.latest("fx", "EURUSD")
    assert latest["data"]["anomaly_reason"] == REASON


def test_export_has_an_anomaly_reason_column_in_csv_and_jsonl(store):
    stored(store)
    out = io.StringIO()
    assert export_text(store, "fx", "jsonl", None, out) == 3
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [ln["anomaly_reason"] for ln in lines] == [None, None, REASON]  # ts, then key
    out = io.StringIO()
    export_text(store, "fx", "csv", None, out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert "anomaly_reason" in rows[0]  # the first row is not flagged: the column is there
    assert [r["anomaly_reason"] for r in rows[:2]] == ["", ""]
    assert json.loads(rows[2]["anomaly_reason"]) == REASON
    assert rows[2]["flags"] == "anomaly:rate" and rows[2]["rate"] == "1.2"


def test_reason_summary_and_the_lineage_text():
    assert reason_summary(REASON) == (
        "robust_z: observed 1.2 outside 1.08..1.1 (expected 1.09), p 1e-12")
    assert reason_summary(None) == "-"
    info = {"record": {"id": 1, "flow": "fx", "key": "EURUSD", "ts": "t", "data": {},
                       "quality": 0.9, "anomaly_score": 1.0, "anomalous": True,
                       "anomaly_reason": REASON, "flags": ["anomaly:rate"],
                       "sources": ["fxquote"]},
            "version": {"id": None, "stages": None, "created": None}, "raw": [],
            "stages": [{"stage": "detect", "anomaly_score": 1.0, "anomalous": True,
                        "anomaly_reason": REASON}]}
    text = render_lineage(info)
    assert "ANOMALOUS; robust_z: observed 1.2 outside 1.08..1.1" in text


FLOW = """
flows:
  fx:
    key: pair
    sources:
      - {name: fxquote, kind: file, path: none.jsonl, format: jsonl,
         fields: {pair: pair, ts: ts, rate: rate}, timestamp: {format: epoch_ms}}
    fields:
      pair: {type: str, required: true}
      rate: {type: float}
    detect:
      - {metric: rate}
"""


async def test_the_control_reads_the_reason_and_the_flagged_points(tmp_path, sqlite_store, clock):
    """What the read API, the feed and the console ask the control for: `latest` rows keep
    the reason in their data; `anomalies` lists a key's points flagged for a metric."""
    from flowdeck.pipeline.config import parse_config
    from flowdeck.pipeline.engine.engine import Engine
    from flowdeck.pipeline.serve.control import LocalControl

    stored(sqlite_store)
    engine = Engine(parse_config(FLOW, str(tmp_path / "f.yaml")), sqlite_store, clock=clock)
    await engine.start(schedule=False)
    try:
        control = LocalControl(engine)
        (latest,) = await control.query("latest", flow="fx", key="EURUSD")
        assert latest["data"]["anomaly_reason"] == REASON
        flagged = await control.query("anomalies", flow="fx", key="EURUSD", metric="rate",
                                      since_ms=T - 1)
        assert flagged == [[T + 60_000, 1.2, 1.0]]
        assert await control.query("anomalies", flow="fx", key="GBPUSD", metric="rate") == []
        assert await control.query("anomalies", flow="fx", key="EURUSD", metric="rate",
                                   since_ms=T + 120_000) == []
    finally:
        await engine.stop()
