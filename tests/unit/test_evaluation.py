"""Tests for flowdeck.pipeline.evaluation: the windowed score on hand-computed cases."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from flowdeck.pipeline.detectors import DetectorSettings
from flowdeck.pipeline.evaluation import (
    FP_WEIGHT,
    Report,
    detector_scorer,
    evaluate,
    format_timestamp,
    load_labels,
    parse_timestamp,
    read_series,
    scaled_sigmoid,
    score_file,
    write_scores,
)

TS = [float(i) for i in range(100)]  # one row per second; probation = rows 0..14
WINDOW = [(50.0, 59.0)]  # rows 50..59, ten rows
PERFECT = scaled_sigmoid(-1.0)


def flags_at(*rows: int, n: int = 100) -> list[bool]:
    return [i in rows for i in range(n)]


def score(*rows: int, windows=WINDOW) -> float:
    return score_file("f", TS, flags_at(*rows), windows).score


def test_scaled_sigmoid_values() -> None:
    assert scaled_sigmoid(-1.0) == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    assert PERFECT == pytest.approx(0.98661, abs=1e-5)
    assert scaled_sigmoid(0.0) == 0.0
    assert scaled_sigmoid(3.0) == pytest.approx(2 / (1 + math.exp(15)) - 1)
    assert scaled_sigmoid(3.01) == -1.0


def test_never_firing_scores_zero_and_perfect_scores_hundred() -> None:
    none = score_file("f", TS, flags_at(), WINDOW)
    assert none.raw == -1.0 and none.null == -1.0 and none.perfect == PERFECT
    assert none.score == 0.0
    assert none.false_negatives == 1 and none.recall == 0.0
    assert score(50) == pytest.approx(100.0)


def test_early_detection_beats_late_detection() -> None:
    early, late = score(51), score(58)
    assert 0 < late < early < 100
    # The earliest flag counts; later ones in the same window add nothing, cost nothing.
    assert score(51, 53, 58) == early
    result = score_file("f", TS, flags_at(51), WINDOW)
    expected_raw = scaled_sigmoid(-(59 - 51 + 1) / 10)
    assert result.raw == pytest.approx(expected_raw)
    assert result.score == pytest.approx(100 * (expected_raw + 1) / (PERFECT + 1))


def test_a_false_positive_costs() -> None:
    # Before any window: the full FP weight.
    result = score_file("f", TS, flags_at(30, 50), WINDOW)
    assert result.raw == pytest.approx(PERFECT - FP_WEIGHT)
    assert result.score == pytest.approx(100 * (PERFECT - FP_WEIGHT + 1) / (PERFECT + 1))
    assert result.false_positives == 1 and result.precision == 0.5
    # Just after a window it costs little; far after it, the full weight again.
    near = score_file("f", TS, flags_at(50, 60), WINDOW)
    far = score_file("f", TS, flags_at(50, 95), WINDOW)
    assert near.raw == pytest.approx(PERFECT + FP_WEIGHT * scaled_sigmoid(1 / 9))
    assert far.raw == pytest.approx(PERFECT - FP_WEIGHT)
    assert far.score < near.score < 100
    # A false positive alone scores below never firing.
    assert score(30) < 0


def test_probation_counts_nothing() -> None:
    assert score(5) == 0.0  # a flag in probation is neither a TP nor an FP
    early_window = [(3.0, 10.0)]  # ends inside probation: dropped
    result = score_file("f", TS, flags_at(), early_window)
    assert result.windows == 0 and result.false_negatives == 0
    assert score_file("f", TS, flags_at(5), [(3.0, 10.0)]).false_positives == 0


def test_file_without_windows() -> None:
    assert score(windows=[]) == 100.0
    assert score(40, windows=[]) == pytest.approx(100 - 100 * FP_WEIGHT)


def test_rows_out_of_order_are_scored_in_time_order() -> None:
    ts = list(reversed(TS))
    flags = [t == 50.0 for t in ts]
    assert score_file("f", ts, flags, WINDOW).score == pytest.approx(100.0)


def test_overall_score_normalises_the_sums() -> None:
    a = score_file("a", TS, flags_at(50), WINDOW)  # perfect
    b = score_file("b", TS, flags_at(), WINDOW)  # missed
    c = score_file("c", TS, flags_at(40), [])  # one false positive, no window
    report = Report([a, b, c])
    raw = PERFECT - 1.0 - FP_WEIGHT
    assert report.score == pytest.approx(100 * (raw + 2) / (2 * PERFECT + 2))
    assert (report.true_positives, report.false_positives, report.false_negatives) == (1, 1, 1)
    assert report.precision == 0.5 and report.recall == 0.5 and report.f1 == 0.5
    assert report.as_dict()["overall"]["files"] == 3
    assert "overall" in report.table()


def test_timestamps_parse_naive_utc_with_or_without_fraction() -> None:
    assert parse_timestamp("2014-07-01 00:30:00") == 1404174600.0
    assert parse_timestamp("2014-07-01 00:30:00.000000") == 1404174600.0
    assert parse_timestamp("1404174600") == 1404174600.0
    assert format_timestamp(1404174600.0) == "2014-07-01 00:30:00"


def write_csv(path: Path, rows: list[tuple[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("timestamp,value\n" + "".join(f"{t},{v}\n" for t, v in rows))


def test_scores_csv_has_one_row_per_input_row_in_order(tmp_path: Path) -> None:
    rows = [("2014-07-01 00:00:00", "1"), ("2014-07-01 00:05:00", "2"),
            ("2014-07-01 00:05:00", "2"),  # duplicate
            ("2014-07-01 00:01:00", "7.5"),  # out of order
            ("2014-07-01 00:10:00", "nan"), ("2014-07-01 00:15:00", "3")]
    write_csv(tmp_path / "data" / "sub" / "a.csv", rows)
    series = read_series(tmp_path / "data" / "sub" / "a.csv", "sub/a.csv")
    assert len(series.values) == len(rows) and math.isnan(series.values[4])
    out = tmp_path / "scores" / "sub" / "a.csv"
    write_scores(out, series, [(0.1 * i, i == 3) for i in range(len(rows))])
    with open(out) as handle:
        written = list(csv.reader(handle))
    assert written[0] == ["timestamp", "value", "anomaly_score", "anomaly_flag"]
    assert [tuple(r[:2]) for r in written[1:]] == rows
    assert [r[3] for r in written[1:]] == ["0", "0", "0", "1", "0", "0"]
    with pytest.raises(ValueError):
        write_scores(out, series, [(0.0, False)])


def test_evaluate_a_directory(tmp_path: Path) -> None:
    data = tmp_path / "data"
    stamps = [format_timestamp(1404172800.0 + 60 * i) for i in range(400)]
    write_csv(data / "g" / "spike.csv",
              [(t, "100" if i == 300 else str(10 + (i % 3))) for i, t in enumerate(stamps)])
    write_csv(data / "clean.csv", [(t, str(10 + (i % 3))) for i, t in enumerate(stamps)])
    labels = {"g/spike.csv": [[stamps[290] + ".000000", stamps[310] + ".000000"]],
              "clean.csv": []}
    (data / "labels.json").write_text(json.dumps(labels))
    loaded = load_labels(data / "labels.json")
    assert loaded["g/spike.csv"] == [(1404172800.0 + 60 * 290, 1404172800.0 + 60 * 310)]

    seen: list[str] = []

    def oracle(name, timestamps, values):
        seen.append(name)
        return [(1.0 if v == 100 else 0.0, v == 100) for v in values]

    report = evaluate(data, loaded, oracle, scores_dir=tmp_path / "scores")
    assert seen == ["clean.csv", "g/spike.csv"]
    assert [f.name for f in report.files] == seen
    assert report.recall == 1.0 and report.precision == 1.0
    assert report.score == pytest.approx(100 * (scaled_sigmoid(-11 / 21) + 1) / (PERFECT + 1))
    assert (tmp_path / "scores" / "g" / "spike.csv").read_text().count("\n") == 401

    settings = DetectorSettings(warmup=50, min_history=10)
    real = evaluate(data, loaded, detector_scorer(settings))
    assert real.files[1].true_positives == 1
    assert real.false_positives == 0

    with pytest.raises(ValueError):
        evaluate(data, loaded, lambda name, ts, vs: [(0.0, False)])
