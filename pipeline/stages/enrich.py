"""Enrich: join records against reference tables (CSV), e.g. station -> name, lat, lon."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from flowdeck.pipeline.config import Config, FlowConfig
from flowdeck.pipeline.model import Batch
from flowdeck.pipeline.stages.base import register

VERSION = "enrich/1"


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


def load_table(path: Path, key: str, columns: list[str]) -> dict[str, dict[str, Any]]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        return {row[key]: {c: _typed(row.get(c) or "") for c in columns}
                for row in csv.DictReader(fh) if row.get(key)}


@register("enrich", needs_config=True)
class Enricher:
    name = "enrich"
    version = VERSION

    def __init__(self, flow_name: str, flow: FlowConfig, config: Config) -> None:
        self.joins = []
        for spec in flow.enrich:
            path = config.resolve_path(spec.table)
            table = load_table(path, spec.key or spec.on, spec.add)
            self.joins.append((spec.on, table, {c: None for c in spec.add}, path.name))

    def run(self, batch: Batch, now_ms: int) -> None:
        for on, table, empty, _name in self.joins:
            get = table.get
            for rec in batch.records:
                data = rec.data
                v = data.get(on)
                row = get(v if v.__class__ is str else str(v))
                if row is None:
                    data.update(empty)
                    if "unenriched" not in rec.flags:
                        rec.flags.append("unenriched")
                else:
                    data.update(row)
