"""Detect: streaming, causal anomaly scores per key and metric; anomalies are flagged, never dropped.

Every record gets ``anomaly`` (the highest calibrated score of its metrics, 0..1). A point
scoring 0.5 or more carries the flag ``anomaly:{metric}`` and, in its data, the reserved
key ``anomaly_reason`` (the detector that fired, what it expected, the observed value, how
unusual; the highest-scoring metric's when several fire). Only the first point of an
episode (``Score.anomalous``) makes the record ``anomalous`` and raises an issue: one issue
per episode, fingerprinted by the episode's first timestamp, so the repeated high scores
of one episode never reopen it and the next episode is a new issue.
"""

from __future__ import annotations

import math
from operator import attrgetter
from typing import Any

from flowdeck.pipeline.config import RESERVED_FIELD, DetectSpec, FlowConfig
from flowdeck.pipeline.detectors import Detector, DetectorSettings, Score
from flowdeck.pipeline.model import Batch, Rec
from flowdeck.pipeline.stages.base import register
from flowdeck.storage.model import IssueDraft

VERSION = "detect/2"
_TS = attrgetter("ts")

REASON_KEY = RESERVED_FIELD
"""The key of a flagged record's data that holds why it was flagged (docs/detection.md)."""

FLAG_SCORE = 0.5
"""Scores at or above this are flagged (the calibrated score's flag threshold)."""


def detector_settings(spec: DetectSpec) -> DetectorSettings:
    """The detector settings of one ``detect`` entry of a flow (docs/configuration.md)."""
    return DetectorSettings(
        methods=tuple(spec.methods), window=spec.window, z_threshold=spec.threshold,
        min_history=spec.min_history, season=spec.season, calibrate=spec.calibrate,
        flag_probability=spec.flag_probability, calibration_window=spec.calibration_window,
        warmup=spec.warmup, refractory=spec.refractory, cusum_k=spec.cusum_k,
        cusum_h=spec.cusum_h, ewma_alpha=spec.ewma_alpha, rate_threshold=spec.rate_threshold)


def history_points(spec: DetectSpec) -> int:
    """Stored points per series that :meth:`AnomalyDetector.warm` needs to replay so a
    restarted detector is calibrated again: the unscored start, a full calibration history
    and the value window it is measured against."""
    return spec.min_history + spec.calibration_window + spec.window


def _rounded(reason: dict[str, Any]) -> dict[str, Any]:
    """The baseline, range and probability to 6 significant digits (the observed value
    stays the record's own); a non-finite one as None (JSON has no NaN)."""
    out: dict[str, Any] = {}
    for k, v in reason.items():
        if isinstance(v, float) and k != "observed":
            v = float(f"{v:.6g}") if math.isfinite(v) else None
        out[k] = v
    return out


@register("detect")
class AnomalyDetector:
    name = "detect"
    version = VERSION

    def __init__(self, flow_name: str, flow: FlowConfig) -> None:
        self.flow_name = flow_name
        # Detector state per series: the record key, or the field named by ``series`` (an
        # event feed keyed by event id has one record per key, so per-key state learns nothing).
        self.series_field = flow.series
        self.specs: dict[str, DetectSpec] = {}
        self.detectors: list[tuple[str, Detector]] = []
        for spec in flow.detect:
            self.specs[spec.metric] = spec
            self.detectors.append((spec.metric, Detector(detector_settings(spec))))

    def history_points(self, metric: str) -> int:
        """How many stored points per series :meth:`warm` wants for ``metric``."""
        spec = self.specs.get(metric)
        return 0 if spec is None else history_points(spec)

    def warm(self, metric: str, history: dict[str, list[tuple[int, float]]]) -> None:
        """Feed stored history (oldest first) so scores after a restart match a warm engine.

        Give it :meth:`history_points` points per series: fewer leave the calibration short
        and its methods in warm-up again (quiet, never noisy)."""
        if self.series_field is not None:
            return  # stored history is per record key, not per series: start cold
        for m, det in self.detectors:
            if m != metric:
                continue
            for key, points in history.items():
                det.series_detector((key, m)).score_many(
                    [ts / 1000 for ts, _ in points], [value for _, value in points])

    def run(self, batch: Batch, now_ms: int) -> None:
        if not self.detectors:
            return
        recs = sorted(batch.records, key=_TS)
        best: dict[int, float] = {}  # id(rec) -> score of the reason it carries
        isfinite = math.isfinite
        series_field = self.series_field
        # The batch as columns, for every metric: each record's series (its position in
        # order of first appearance) and time; per metric its values (Detector.
        # score_columns scores them all at once, each series' points in time order).
        if series_field is None:
            keys = [rec.key for rec in recs]
        else:
            keys = [str(rec.data.get(series_field)) for rec in recs]
        position: dict[str, int] = {}
        index = [position.setdefault(key, len(position)) for key in keys]
        names = list(position)
        times = [rec.ts / 1000 for rec in recs]
        for metric, det in self.detectors:
            values: list[Any] = [rec.data.get(metric) for rec in recs]
            if set(map(type, values)) == {float} and all(map(isfinite, values)):
                rows = None  # every record has a value: the batch's columns as they are
                series = [(key, metric) for key in names]
                idx, ts = index, times
            else:  # only the finite numbers; bool, str, None: not a value
                rows = []
                kept: list[float] = []
                for i, v in enumerate(values):
                    t = type(v)
                    if t is not float:
                        if t is not int or not isfinite(v):
                            continue
                        v = float(v)
                    elif not isfinite(v):
                        continue
                    rows.append(i)
                    kept.append(v)
                values = kept
                used: dict[int, int] = {}  # batch position -> this metric's position
                idx = [used.setdefault(index[i], len(used)) for i in rows]
                series = [(names[p], metric) for p in used]
                ts = [times[i] for i in rows]
            low, full = det.score_columns(series, idx, ts, values)
            for i, s in low:  # below the flag: only the record's score
                rec = recs[i if rows is None else rows[i]]
                score = round(s, 4)
                if score > rec.anomaly:
                    rec.anomaly = score
            issues: list[IssueDraft] = []  # in the batch's (time) order
            for i in sorted(full):
                self._apply(recs[i if rows is None else rows[i]], values[i], full[i],
                            metric, best, issues)
            batch.issues.extend(issues)

    def _apply(self, rec: Rec, v: float, sc: Score, metric: str, best: dict[int, float],
               issues: list[IssueDraft]) -> None:
        """Put one nonzero verdict on its record: the score, and from the flag on the
        flag, the reason and (first point of an episode) the issue."""
        score = round(sc.score, 4)
        if score > rec.anomaly:
            rec.anomaly = score
        if sc.score < FLAG_SCORE:
            return
        rec.flags.append(f"anomaly:{metric}")
        reason = _rounded({"metric": metric, **(sc.reason() or {})})
        if sc.score > best.get(id(rec), -1.0):
            best[id(rec)] = sc.score
            # A new dict: the resolved data may be shared with a contribution.
            rec.data = {**rec.data, REASON_KEY: reason}
        if not sc.anomalous:
            return
        rec.anomalous = True
        if sc.again:  # a late source merged into the onset: its issue is raised
            return
        issues.append(IssueDraft(
            flow=self.flow_name, kind="anomaly",
            severity="error" if sc.score >= 0.9 else "warning",
            title=f"{rec.key}: {metric}={v:.4g} is anomalous "
                  f"({sc.method}, expected {_expected(reason)}, score {sc.score:.2f})",
            fingerprint=f"anomaly:{self.flow_name}:{rec.key}:{metric}:{rec.ts}",
            key=rec.key,
            detail={"metric": metric, "value": v, "score": score,
                    "method": sc.method, "ts": rec.ts, "episode": sc.episode,
                    "reason": reason,
                    "details": {k: round(x, 3) for k, x in sc.details.items()}},
            record_keys=[(rec.key, rec.ts)], raw_ids=list(rec.raw_ids)))


def _expected(reason: dict[str, Any]) -> str:
    """``low..high`` of a reason, else its expected value, else ``-``."""
    low, high = reason.get("low"), reason.get("high")
    if low is not None and high is not None:
        return f"{low:.4g}..{high:.4g}"
    exp = reason.get("expected")
    return "-" if exp is None else f"{exp:.4g}"
