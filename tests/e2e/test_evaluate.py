"""`flowdeck evaluate`, run for real: a small generated corpus, the bundled one, a config's
detect section; the score table, the JSON report and one scores row per input row."""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
from pathlib import Path

from flowdeck.pipeline.config import BUNDLED_DIR
from flowdeck.pipeline.demo.corpus import Spec, _stamp, generate

FLOWDECK = [sys.executable, "-m", "flowdeck.console.cli"]
DETECTION = BUNDLED_DIR / "detection"


CONFIG = """\
flows:
  plain:
    key: station
    sources:
      - {name: a, kind: file, path: a.json, fields: {station: s, ts: t}}
    fields: {station: {type: str}, temperature: {}}
  weather:
    key: station
    sources:
      - {name: a, kind: file, path: a.json, fields: {station: s, ts: t}}
    fields: {station: {type: str}, temperature: {}, pressure: {}}
    detect:
      - {metric: temperature}
      - {metric: pressure, methods: [robust_z], warmup: 20}
"""


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("FLOWDECK_CONFIG", "FLOWDECK_DB")}
    return subprocess.run([*FLOWDECK, *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env=env)


def small_corpus(root: Path) -> dict[str, int]:
    """Three generated series (a spike, a level shift, nothing) and their labels; the
    shift file also gets a duplicate and an out-of-order row. Returns rows per file."""
    rng = random.Random(5)
    specs = {"a/spike.csv": Spec("spike", 1200, 300.0, 50.0, 0.02, anomalies=["spike"]),
             "a/shift.csv": Spec("shift", 1200, 300.0, 1e4, 0.05, anomalies=["shift_up"]),
             "clean.csv": Spec("clean", 800, 60.0, 3.0, 0.1)}
    labels, rows = {}, {}
    for rel, spec in specs.items():
        points, windows = generate(spec, rng)
        lines = [f"{_stamp(ts)},{v:.6g}" for ts, v in points]
        if rel == "a/shift.csv":
            lines.insert(600, lines[599])  # a duplicate
            lines.insert(700, lines[650])  # out of order
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("timestamp,value\n" + "\n".join(lines) + "\n")
        labels[rel] = [[_stamp(a) + ".000000", _stamp(b)] for a, b in windows]
        rows[rel] = len(lines)
    (root / "labels.json").write_text(json.dumps(labels))
    return rows


def scores_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def input_rows(path: Path) -> list[tuple[str, str]]:
    with open(path, newline="") as handle:
        return [(r["timestamp"], r["value"]) for r in csv.DictReader(handle)]


def test_evaluate_a_small_corpus_prints_scores_and_writes_every_row(tmp_path):
    data = tmp_path / "corpus"
    rows = small_corpus(data)
    out = tmp_path / "scores"
    res = run(["evaluate", "--data", str(data), "--labels", str(data / "labels.json"),
               "--scores", str(out)], tmp_path)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split()[:2] == ["file", "rows"] and "score" in lines[0]
    assert [ln.split()[0] for ln in lines[1:4]] == ["a/shift.csv", "a/spike.csv", "clean.csv"]
    assert lines[4].startswith("overall")
    assert any(ln.startswith("overall: score ") and "precision" in ln and "recall" in ln
               and "F1" in ln and "settings: defaults" in ln for ln in lines)
    for rel, n in rows.items():
        got = scores_rows(out / rel)
        assert len(got) == n  # one row per input row, duplicates and late rows too
        assert [(r["timestamp"], r["value"]) for r in got] == input_rows(data / rel)
        assert all(0.0 <= float(r["anomaly_score"]) <= 1.0 for r in got)
        assert {r["anomaly_flag"] for r in got} <= {"0", "1"}
    assert list(scores_rows(out / "a/spike.csv")[0]) == [
        "timestamp", "value", "anomaly_score", "anomaly_flag"]


def test_evaluate_json_with_a_config_uses_its_detect_section(tmp_path):
    data = tmp_path / "corpus"
    small_corpus(data)
    config = tmp_path / "flows.yaml"
    config.write_text(CONFIG)
    labels = str(data / "labels.json")
    res = run(["evaluate", "--data", str(data), "--labels", labels, "--config", str(config),
               "--flow", "weather", "--metric", "pressure", "--json"], tmp_path)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["settings"] == "weather.pressure"
    assert report["overall"]["files"] == 3 and "score" in report["overall"]
    assert {f["name"] for f in report["files"]} == {"a/shift.csv", "a/spike.csv", "clean.csv"}
    assert set(report["overall"]) >= {"precision", "recall", "f1", "tp", "fp", "fn"}
    first = run(["evaluate", "--data", str(data / "clean.csv"), "--labels", labels,
                 "--config", str(config), "--json"], tmp_path)
    assert first.returncode == 0, first.stderr
    first_report = json.loads(first.stdout)
    assert first_report["settings"] == "weather.temperature"  # the first flow with detect
    assert [f["name"] for f in first_report["files"]] == ["clean.csv"]
    bad = run(["evaluate", "--data", str(data), "--labels", labels, "--config", str(config),
               "--flow", "weather", "--metric", "wind"], tmp_path)
    assert bad.returncode == 2 and "detects no metric 'wind'" in bad.stderr
    assert "Traceback" not in bad.stderr
    missing = run(["evaluate", "--data", str(tmp_path / "nope"), "--labels", labels], tmp_path)
    assert missing.returncode == 2 and "no such file or directory" in missing.stderr


def test_evaluate_the_bundled_corpus(tmp_path):
    out = tmp_path / "scores"
    res = run(["evaluate", "--data", str(DETECTION), "--labels", str(DETECTION / "labels.json"),
               "--scores", str(out)], tmp_path)
    assert res.returncode == 0, res.stderr
    assert any(ln.startswith("overall: score ") for ln in res.stdout.splitlines())
    labels = json.loads((DETECTION / "labels.json").read_text())
    assert len(labels) >= 30
    for rel in labels:
        assert len(scores_rows(out / rel)) == len(input_rows(DETECTION / rel)), rel


def test_evaluate_resolve_prints_each_strategys_error_and_the_drifting_source(tmp_path):
    out = run(["evaluate", "--resolve", "--scenario", "drift", "--minutes", "120"], tmp_path)
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0] for line in out.stdout.splitlines()[2:9]}
    assert rows == {"priority", "median", "mean", "most_recent", "weighted"}
    assert "source_drift: ecbx drifts from the other sources on GBPUSD rate" in out.stdout
    out = run(["evaluate", "--resolve", "--scenario", "normal", "--minutes", "60", "--json"],
              tmp_path)
    report = json.loads(out.stdout)
    assert set(report["errors"]) == {"priority", "median", "mean", "most_recent", "weighted",
                                     "median (no agreement)", "weighted (no agreement)"}
    assert report["errors"]["median"]["fx.rate"]["n"] > 0
    assert all(not issues for issues in report["source_drift"].values())
    out = run(["evaluate"], tmp_path)
    assert out.returncode == 2 and "--data and --labels are required" in out.stderr
