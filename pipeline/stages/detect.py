"""Detect: streaming, causal anomaly scores per key and metric; anomalies are flagged, never dropped."""

from __future__ import annotations

import math

from flowdeck.pipeline.config import FlowConfig
from flowdeck.pipeline.detectors import Detector, DetectorSettings
from flowdeck.pipeline.model import Batch
from flowdeck.pipeline.stages.base import register
from flowdeck.storage.model import IssueDraft

VERSION = "detect/1"


@register("detect")
class AnomalyDetector:
    name = "detect"
    version = VERSION

    def __init__(self, flow_name: str, flow: FlowConfig) -> None:
        self.flow_name = flow_name
        self.detectors = []
        for spec in flow.detect:
            settings = DetectorSettings(methods=tuple(spec.methods), window=spec.window,
                                        z_threshold=spec.threshold, min_history=spec.min_history,
                                        season=spec.season)
            self.detectors.append((spec.metric, Detector(settings)))

    def warm(self, metric: str, history: dict[str, list[tuple[int, float]]]) -> None:
        """Feed stored history (oldest first) so scores after a restart match a warm engine."""
        for m, det in self.detectors:
            if m != metric:
                continue
            for key, points in history.items():
                for ts, value in points:
                    det.score((key, m), ts / 1000, value)

    def run(self, batch: Batch, now_ms: int) -> None:
        if not self.detectors:
            return
        recs = sorted(batch.records, key=lambda r: r.ts)
        for metric, det in self.detectors:
            for rec in recs:
                v = rec.data.get(metric)
                if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
                    continue
                sc = det.score((rec.key, metric), rec.ts / 1000, float(v))
                if sc.score > rec.anomaly:
                    rec.anomaly = round(sc.score, 4)
                if sc.anomalous:
                    rec.anomalous = True
                    rec.flags.append(f"anomaly:{metric}")
                    batch.issues.append(IssueDraft(
                        flow=self.flow_name, kind="anomaly",
                        severity="error" if sc.score >= 0.9 else "warning",
                        title=f"{rec.key}: {metric}={v:.4g} is anomalous "
                              f"({sc.method}, score {sc.score:.2f})",
                        fingerprint=f"anomaly:{self.flow_name}:{rec.key}:{metric}",
                        key=rec.key,
                        detail={"metric": metric, "value": v, "score": sc.score,
                                "method": sc.method, "ts": rec.ts,
                                "details": {k: round(x, 3) for k, x in sc.details.items()}},
                        record_keys=[(rec.key, rec.ts)], raw_ids=list(rec.raw_ids)))
