"""What the cluster and fan-out tests (and ``bench/cluster.py``) share: the Redis they
use, a Redis key namespace of a test's own, the file-drop flow they ingest through, and
the demo's flows copied into a cluster config."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

from tests.support.services import need_service

REDIS = "redis://127.0.0.1:6379/0"

# One flow fed by JSON Lines files dropped into {dir}; format with name= and dir=.
DROP_FLOW = """
  {name}:
    schedule: {{every: 1h}}
    key: station
    sources:
      - {{name: drop, kind: file, path: "{dir}/*.jsonl", format: jsonl,
          fields: {{station: s, ts: t, temperature: temp}},
          timestamp: {{format: epoch_ms}}}}
    fields:
      station: {{type: str, required: true}}
      temperature: {{type: float, range: [-90, 60]}}
"""


def redis_namespace(suffix: str = ":") -> Iterator[str]:
    """A fixture body: yields ``fdtest-<random>``; afterwards every key matching
    ``<namespace><suffix>*`` is deleted (skips, or fails in CI, without Redis)."""
    need_service("Redis", "127.0.0.1", 6379)
    ns = f"fdtest-{uuid.uuid4().hex[:10]}"
    yield ns
    import redis

    r = redis.Redis.from_url(REDIS)
    keys = list(r.scan_iter(match=f"{ns}{suffix}*", count=1000))
    if keys:
        r.delete(*keys)
    r.close()


def demo_cluster_config(folder: Path, copies: int, *, every: float, lease_ttl: float,
                        name: str = "{name}{i}", extra: dict[str, Any] | None = None) -> Path:
    """The demo's two flows ``copies`` times each (named by ``name``), each run every
    ``every`` seconds, leases of ``lease_ttl`` seconds, written to ``folder/cluster.yaml``;
    ``extra`` adds top-level sections."""
    import yaml

    data = files("flowdeck.sample_data")
    cfg = yaml.safe_load((data / "flows" / "demo.yaml").read_text())
    flows = {}
    for i in range(copies):
        for base, flow in cfg["flows"].items():
            flow = json.loads(json.dumps(flow, default=str))
            flow["schedule"] = {"every": f"{every:g}s"}
            for e in flow.get("enrich", []):
                e["table"] = str(data / "reference" / "stations.csv")
                if "true" in e:  # YAML 1.1 read `on:` as true
                    e["on"] = e.pop("true")
            flows[name.format(name=base, i=i)] = flow
    cfg["flows"] = flows
    cfg["cluster"] = {"lease_ttl": f"{lease_ttl:g}s"}
    cfg.update(extra or {})
    path = folder / "cluster.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path
