"""Pipeline versions (the configuration and stages that shaped records) and runs."""

from __future__ import annotations

import hashlib
import json

from sqlalchemy import insert, select, update

from flowdeck.storage import schema as s
from flowdeck.storage.repository import Repository


class Runs(Repository):
    """``pipeline_versions`` and ``runs``."""

    def pipeline_version(self, flow: str, config: dict, stages: dict, now_ms: int) -> int:
        digest = hashlib.sha256(json.dumps([config, stages], sort_keys=True, default=str)
                                .encode()).hexdigest()
        with self.engine.begin() as conn:
            row = conn.execute(select(s.pipeline_versions.c.id).where(
                s.pipeline_versions.c.flow == flow, s.pipeline_versions.c.digest == digest)).first()
            if row:
                return row[0]
            stmt = self._insert(s.pipeline_versions).values(
                flow=flow, digest=digest, config=config, stages=stages, created_ms=now_ms
            ).on_conflict_do_nothing()
            conn.execute(stmt)
            return conn.execute(select(s.pipeline_versions.c.id).where(
                s.pipeline_versions.c.flow == flow,
                s.pipeline_versions.c.digest == digest)).scalar_one()

    def get_version(self, version_id: int) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(s.pipeline_versions).where(
                s.pipeline_versions.c.id == version_id)).mappings().first()
        return dict(row) if row else None

    def flow_configs(self) -> dict[str, dict]:
        """Each flow's newest stored configuration (what a store-reading command uses when
        no config file is given), by flow name."""
        pv = s.pipeline_versions
        with self.engine.connect() as conn:
            rows = conn.execute(select(pv.c.flow, pv.c.config).order_by(pv.c.id)).all()
        return {flow: config for flow, config in rows}

    def start_run(self, flow: str, trigger: str, now_ms: int) -> int:
        with self.engine.begin() as conn:
            res = conn.execute(insert(s.runs).values(flow=flow, trigger=trigger,
                                                     started_ms=now_ms, status="running"))
            return res.inserted_primary_key[0]

    def finish_run(self, run_id: int, status: str, stats: dict, now_ms: int,
                   error: str | None = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(s.runs).where(s.runs.c.id == run_id).values(
                status=status, stats=stats, finished_ms=now_ms, error=error))

    def recent_runs(self, flow: str | None = None, limit: int = 50) -> list[dict]:
        q = select(s.runs).order_by(s.runs.c.id.desc()).limit(limit)
        if flow:
            q = q.where(s.runs.c.flow == flow)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]
