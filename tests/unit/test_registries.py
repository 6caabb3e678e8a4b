"""The source and stage registries, and the stage chain built from them."""

from __future__ import annotations

import json
import subprocess
import sys
import typing

from flowdeck.pipeline.config import SourceConfig, parse_config
from flowdeck.pipeline.model import RUN_STAGES, SOURCE_STAGES, STAGES, StageStats
from flowdeck.pipeline.sources import SOURCES
from flowdeck.pipeline.stages.base import STAGE_FACTORIES
from flowdeck.pipeline.stages.chain import StageChain
from flowdeck.storage.model import RawDraft

NOW = 1_795_521_600_000

FLOW = """
flows:
  w:
    key: station
    sources:
      - {name: a, kind: file, path: a.jsonl, format: jsonl,
         fields: {station: s, ts: t, temp: v}, timestamp: {format: epoch_ms}}
    fields:
      station: {type: str, required: true}
      temp: {type: float, range: [-50, 60]}
"""


def test_every_configurable_source_kind_is_registered():
    kinds = typing.get_args(SourceConfig.model_fields["kind"].annotation)
    assert sorted(SOURCES) == sorted(kinds)


def test_every_stage_of_the_order_is_registered_once():
    assert sorted(STAGE_FACTORIES) == sorted((*SOURCE_STAGES, *RUN_STAGES))
    assert STAGES == (*SOURCE_STAGES, *RUN_STAGES, "store")


def test_the_chain_runs_the_stages_in_order_over_whole_batches(tmp_path):
    config = parse_config(FLOW, str(tmp_path / "f.yaml"))
    chain = StageChain("w", config.flows["w"], config)
    assert list(chain.versions()) == [*SOURCE_STAGES, *RUN_STAGES]
    body = "\n".join(json.dumps({"s": s, "t": NOW - 1000, "v": v})
                     for s, v in [("A", 1.5), ("B", 99.0), ("C", 2.0)]).encode()
    stats = {s: StageStats() for s in STAGES}
    seen = []
    batch, n_items = chain.collect(RawDraft("a", body, NOW, raw_id=1), NOW, stats=stats)
    chain.refine(batch, NOW, stats=stats, after=lambda st, b: seen.append(st.name))
    assert seen == list(SOURCE_STAGES[1:])
    assert n_items == 3 and stats["collect"].records_out == 3
    assert stats["validate"].rejected == 1 and [r.key for r in batch.records] == ["A", "C"]
    chain.merge(batch, NOW, lambda keys: {}, stats=stats)
    assert stats["resolve"].records_in == 2 and stats["detect"].records_out == 2
    truncated, _ = chain.collect(RawDraft("a", body, NOW, truncated=True, raw_id=2), NOW)
    assert [q.reason for q in truncated.quarantine] == ["too_large"]


def test_the_engine_loads_no_simulator_for_a_flow_without_simulated_sources():
    """Only the ``simulated`` source kind reaches the demo simulator."""
    code = ("import sys, flowdeck.pipeline.engine.engine, flowdeck.pipeline.sources; "
            "print('flowdeck.pipeline.demo.simulator' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
