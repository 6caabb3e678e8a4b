"""docs/ops: the alert rules pass promtool (check and their unit tests), and the alert
rules and the Grafana dashboard name only metrics flowdeck serves."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml
from support.feed import need_tool

from flowdeck.pipeline.serve.metrics import FeedMetrics

OPS = Path(__file__).resolve().parents[2] / "docs" / "ops"
NAME = re.compile(r"\bflowdeck_[a-z0-9_]+")


def served_names() -> set[str]:
    """Every sample name /metrics can carry (counters' _total, histograms' _bucket ...)."""
    out = set()
    for metric in FeedMetrics().registry.collect():
        out.add(metric.name)
        suffixes = {"counter": ("_total", "_created"),
                    "histogram": ("_bucket", "_count", "_sum", "_created")}.get(metric.type, ())
        out.update(metric.name + s for s in suffixes)
    return out


def test_promtool_checks_the_rules_and_runs_their_unit_tests():
    promtool = need_tool("promtool", "prometheus")
    check = subprocess.run([promtool, "check", "rules", str(OPS / "alerts.yml")],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run([promtool, "test", "rules", str(OPS / "alerts_test.yml")],
                          capture_output=True, text=True, timeout=60, cwd=OPS)
    assert test.returncode == 0, test.stdout + test.stderr
    assert "SUCCESS" in test.stdout + test.stderr


def test_every_failure_mode_has_a_rule_with_a_unit_test():
    rules = yaml.safe_load((OPS / "alerts.yml").read_text())["groups"][0]["rules"]
    names = {r["alert"] for r in rules}
    assert {"FlowdeckFlowFailing", "FlowdeckSourceDown", "FlowdeckBreakerOpen",
            "FlowdeckStaleData", "FlowdeckQuarantineSurge", "FlowdeckStoreUnavailable",
            "FlowdeckSpoolFilling", "FlowdeckFeedDroppingViewers"} <= names
    tests = yaml.safe_load((OPS / "alerts_test.yml").read_text())["tests"]
    tested = {t["alertname"] for block in tests for t in block["alert_rule_test"]
              if t.get("exp_alerts")}
    assert names == tested  # each rule is seen firing in a test
    served = served_names()
    for r in rules:
        for name in NAME.findall(r["expr"]):
            assert name in served, (r["alert"], name)


def test_the_dashboard_is_grafana_json_over_served_metrics():
    dash = json.loads((OPS / "grafana-dashboard.json").read_text())
    assert dash["title"] == "flowdeck" and dash["uid"]
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["query"] for v in dash["templating"]["list"] if v["type"] == "query"]
    assert len(exprs) > 20
    served = served_names()
    seen = set()
    for e in exprs:
        names = NAME.findall(e)
        assert names, e
        for name in names:
            assert name in served, (name, e)
            seen.add(name)
    # the storage, store and spool metrics are on it
    assert {"flowdeck_db_size_bytes", "flowdeck_db_rows", "flowdeck_store_up",
            "flowdeck_spool_bytes", "flowdeck_runs_total"} <= seen
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
