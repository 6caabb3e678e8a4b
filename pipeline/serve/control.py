"""The one interface viewers use to see and steer an engine.

The console (and later the websocket feed) talks to an engine only through
``snapshot()``, ``subscribe()``, ``act()`` and ``query()``, all of which take
and return plain JSON-able values. ``LocalControl`` serves an engine in this
process; a remote implementation speaks the same names over the feed, so the
console shows the same screens whichever it is given.

Every operator action is recorded as a recovery action (who, what, when,
outcome, how long) and announced on the hub.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import time
from typing import Any, Protocol, cast

from flowdeck.pipeline.core.durations import format_duration
from flowdeck.pipeline.core.hub import Subscription
from flowdeck.pipeline.core.shapes import ActionResult, LatestRow, ViewerSnapshot
from flowdeck.pipeline.engine.engine import Engine
from flowdeck.pipeline.serve.protocol import latest_summary, trim_snapshot
from flowdeck.pipeline.serve.queries import lineage
from flowdeck.storage.db import UNAVAILABLE

ISSUE_STATES = {"ack": "acknowledged", "resolve": "resolved", "mute": "muted", "reopen": "open"}
# Who the action in progress is for: a remote operator named by the feed, else the control's.
_ACTOR: contextvars.ContextVar[str | None] = contextvars.ContextVar("flowdeck_actor",
                                                                   default=None)


class ControlError(Exception):
    """An action or query that cannot be done (unknown flow, missing issue, bad argument)."""


class Control(Protocol):
    async def snapshot(self, latest: list[str] | None = None) -> ViewerSnapshot: ...
    def subscribe(self, types: set[str] | None = None) -> Subscription: ...
    async def act(self, name: str, **params: Any) -> ActionResult: ...
    async def query(self, name: str, **params: Any) -> Any: ...


class LocalControl:
    """An engine running in this process."""

    def __init__(self, engine: Engine, actor: str = "operator") -> None:
        self.engine = engine
        self.store = engine.store
        self.actor = actor
        self.description = "local"
        self._last: dict[str, Any] = {}  # the last snapshot parts read from the store
        self._store_error: str | None = None

    async def _db(self, fn, *args, **kw):
        """A write, on the engine's worker thread (the one writer)."""
        return await self.engine._db(functools.partial(fn, *args, **kw))

    async def _read(self, fn, *args, **kw):
        """A read, on the engine's reader threads: it never waits behind a batch."""
        return await asyncio.get_running_loop().run_in_executor(
            self.engine.reader, functools.partial(fn, *args, **kw))

    def _unavailable(self, exc: BaseException) -> None:
        self._store_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"

    async def _kept(self, part: str, fn, *args, **kw):
        """A snapshot part read from the store; while the store is unavailable, the last
        one read (the console keeps its picture, marked as not current)."""
        try:
            value = await self._read(fn, *args, **kw)
        except UNAVAILABLE as exc:
            self._unavailable(exc)
            return self._last.get(part, [])
        self._last[part] = value
        return value

    async def _kept_latest(self, flows) -> dict[str, list[LatestRow]]:
        """Every flow's latest values through the caches, the last ones when unavailable."""
        last = self._last.setdefault("latest", {})
        out = {}
        for name in flows:
            try:
                out[name] = last[name] = await self.engine.caches.latest(name)
            except UNAVAILABLE as exc:
                self._unavailable(exc)
                out[name] = last.get(name, [])
        return out

    # ------------------------------------------------------------ state

    async def snapshot(self, latest: list[str] | None = None) -> ViewerSnapshot:
        """The engine's state for viewers; ``latest`` names the flows whose latest values
        to include (None: every flow's; ``latest_summary`` always covers all)."""
        # the engine's snapshot, completed in place with the viewer's keys below
        snap = cast(ViewerSnapshot, self.engine.snapshot())
        cfg = self.engine.config
        for name, f in snap["flows"].items():
            fc = cfg.flows[name]
            f["description"] = fc.description
            f["freshness_s"] = fc.freshness
            f["availability_target"] = fc.availability
            f["metrics"] = fc.metrics()
            f["key_field"] = "/".join(fc.key_fields)
            f["schedule"] = (f"every {format_duration(fc.schedule.every)}"
                             if fc.schedule.every is not None else f"cron {fc.schedule.cron}")
        self._store_error = None
        snap["issues"] = await self._kept("issues", self.store.issues,
                                          state=("open", "acknowledged", "muted"), limit=300)
        snap["actions"] = await self._kept("actions", self.store.actions, limit=200)
        snap["quarantine"] = await self._kept("quarantine", self.store.quarantined, None,
                                              "open", 300)
        snap["latest"] = await self._kept_latest(cfg.flows)
        snap["latest_summary"] = latest_summary(snap["latest"])
        snap["runs"] = await self._kept("runs", self.store.recent_runs, None, 200)
        snap["store_error"] = self._store_error  # None: every part above is current
        snap["connection"] = self.description
        return _jsonable(trim_snapshot(snap, latest))

    def subscribe(self, types: set[str] | None = None) -> Subscription:
        return self.engine.hub.subscribe(types=types)

    # ------------------------------------------------------------ actions

    @property
    def current_actor(self) -> str:
        return _ACTOR.get() or self.actor

    async def act(self, name: str, *, actor: str | None = None, **params: Any) -> ActionResult:
        """Do an operator action; ``actor`` names who asked (default: this control's)."""
        token = _ACTOR.set(actor)
        try:
            return await self._act(name, **params)
        finally:
            _ACTOR.reset(token)

    async def _act(self, name: str, **params: Any) -> ActionResult:
        fn = getattr(self, f"_act_{name}", None)
        if fn is None:
            raise ControlError(f"unknown action {name!r}")
        t0 = time.perf_counter()
        flow = params.get("flow")
        if flow is not None and flow not in self.engine.flows:
            raise ControlError(f"no flow {flow!r}")
        try:
            result = await fn(**params)
            outcome = "ok"
        except ControlError as exc:
            result = {"ok": False, "message": str(exc)}
            outcome = "failed"
        duration = (time.perf_counter() - t0) * 1000
        result.setdefault("ok", outcome == "ok")
        flow = flow or (result.get("issue") or {}).get("flow")
        await self._record(name, flow, params.get("source"), result["message"], outcome,
                           duration, {k: v for k, v in params.items() if k != "flow"})
        return result

    async def _record(self, action: str, flow: str | None, source: str | None, reason: str,
                      outcome: str, duration_ms: float, detail: dict) -> None:
        now = self.engine.clock.now_ms()
        actor = self.current_actor
        await self._db(self.store.add_action, ts_ms=now, action=action, actor=actor,
                       reason=reason, outcome=outcome, flow=flow, source=source,
                       duration_ms=round(duration_ms, 2), detail=detail or None)
        self.engine.emit("action", flow, action=action, actor=actor, reason=reason,
                         outcome=outcome, source=source)

    async def _act_run_now(self, flow: str) -> dict:
        summary = await self.engine.run_flow(flow, "manual")
        stored = summary.stages["store"].records_out
        return {"message": f"ran {flow}: {summary.status}, {stored} records stored",
                "run": summary.as_dict()}

    async def _act_pause(self, flow: str) -> dict:
        changed = self.engine.pause(flow)
        return {"message": f"paused {flow}" if changed else f"{flow} was already paused"}

    async def _act_start_maintenance(self, flow: str, duration: float | str = 3600,
                                     mode: str = "pause") -> dict:
        """A maintenance window on ``flow`` from now (pause: no scheduled runs; mute:
        runs go on outside SLA figures, no alerts)."""
        from flowdeck.pipeline.core.durations import format_duration, parse_duration

        if mode not in ("pause", "mute"):
            raise ControlError(f"mode must be pause or mute, not {mode!r}")
        try:
            seconds = parse_duration(duration)
        except ValueError as exc:
            raise ControlError(f"duration: {exc}") from None
        if seconds <= 0:
            raise ControlError("duration must be more than 0")
        self.engine.maintenance.start_now(flow, seconds, mode, self.current_actor)
        await self.engine.maintenance.tick()
        return {"message": f"maintenance ({mode}) on {flow} for {format_duration(seconds)}"}

    async def _act_stop_maintenance(self, flow: str) -> dict:
        stopped = self.engine.maintenance.stop_now(flow)
        await self.engine.maintenance.tick()
        return {"message": f"maintenance on {flow} stopped" if stopped
                else f"{flow} had no maintenance started by an operator"}

    async def _act_resume(self, flow: str) -> dict:
        changed = self.engine.resume_flow(flow)
        return {"message": f"resumed {flow}" if changed else f"{flow} was not paused"}

    async def _act_reset_breaker(self, flow: str, source: str) -> dict:
        if source not in self.engine.flows[flow].breakers:
            raise ControlError(f"no source {source!r} in {flow}")
        before = await self._db(self.engine.reset_breaker, flow, source)
        return {"message": f"breaker of {flow}/{source} reset (was {before})"}

    async def _act_force_failover(self, flow: str, source: str | None = None) -> dict:
        """Pin the flow to one named source until released (source=None releases)."""
        rt = self.engine.flows[flow]
        if source is not None and source not in rt.breakers:
            raise ControlError(f"no source {source!r} in {flow}")
        before = rt.pinned
        rt.pinned = source
        if source is None:
            return {"message": f"{flow} released from {before}" if before else
                    f"{flow} was not pinned"}
        return {"message": f"{flow} now uses only {source} (force failover; "
                           "release with force_failover and no source)"}

    async def _act_move(self, flow: str, node: str) -> dict:
        """Hand ``flow`` to the cluster node ``node``: its owner releases it between two
        runs and only ``node`` may take it while it is live (pipeline/engine/cluster.py)."""
        cluster = self.engine.cluster
        if cluster is None:
            raise ControlError("this daemon is not a node of a cluster (PostgreSQL only)")
        try:
            moved = await cluster.move(flow, node)
        except ValueError as exc:
            raise ControlError(str(exc)) from None
        return {"message": f"{flow} moves from {moved['from'] or 'no node'} to {node} at its "
                           "owner's next slot boundary", "move": moved}

    async def _act_replay_quarantine(self, flow: str) -> dict:
        summary = await self.engine.replay(flow, quarantine=True)
        return {"message": f"replayed {summary.payloads} payload(s) of {flow}: "
                           f"{summary.stages['store'].records_out} records stored, "
                           f"{summary.quarantined} still quarantined",
                "run": summary.as_dict()}

    async def _act_replay_raw(self, flow: str, since_ms: int = 0) -> dict:
        summary = await self.engine.replay(flow, since_ms=since_ms)
        return {"message": f"replayed {summary.payloads} raw payload(s) of {flow}",
                "run": summary.as_dict()}

    async def _act_purge_cache(self, flow: str | None = None, key: str | None = None,
                               layer: str | None = None) -> dict:
        """Drop cached entries: one key of a flow, a flow, or everything; one layer or all."""
        try:
            counts = await self.engine.caches.purge(flow, key, layer)
        except ValueError as exc:
            raise ControlError(str(exc)) from None
        what = (f"{flow}/{key}" if key is not None else flow if flow is not None
                else "every flow")
        where = layer or "every layer"
        done = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "nothing cached"
        return {"message": f"purged {what} from {where} ({done})", "counts": counts}

    async def _act_prewarm(self, flow: str) -> dict:
        n = await self.engine.caches.prewarm(flow)
        return {"message": f"pre-warmed {flow}: its latest values and "
                           f"{max(0, n - 1)} hot key(s) loaded"}

    async def _issue_state(self, verb: str, issue_id: int, seconds: float | None = None) -> dict:
        now = self.engine.clock.now_ms()
        until = now + int(seconds * 1000) if seconds else None
        row = await self._db(self.store.set_issue_state, int(issue_id), ISSUE_STATES[verb],
                             self.current_actor, now, until)
        if row is None:
            raise ControlError(f"no issue {issue_id}")
        self.engine.emit("issue_state", row["flow"], id=row["id"], state=row["state"],
                         actor=self.current_actor, title=row["title"])
        return {"message": f"issue {issue_id} {row['state']}", "issue": _jsonable(row)}

    async def _act_ack_issue(self, issue_id: int) -> dict:
        return await self._issue_state("ack", issue_id)

    async def _act_resolve_issue(self, issue_id: int) -> dict:
        return await self._issue_state("resolve", issue_id)

    async def _act_mute_issue(self, issue_id: int, seconds: float = 3600) -> dict:
        return await self._issue_state("mute", issue_id, seconds)

    # ------------------------------------------------------------ queries

    async def query(self, name: str, **params: Any) -> Any:
        s = self.store
        if name == "issues":
            return _jsonable(await self._read(s.issues, flow=params.get("flow"),
                                            state=params.get("state"),
                                            limit=params.get("limit", 500)))
        if name == "issue":
            row = await self._read(s.get_issue, int(params["issue_id"]))
            if row is None:
                raise ControlError(f"no issue {params['issue_id']}")
            records = []
            for key, ts in row["record_ids"][-50:]:
                records.extend(await self._read(self._record_at, row["flow"], key, ts))
            raws = [await self._read(self._raw_summary, i) for i in row["raw_ids"][-20:]]
            return _jsonable({"issue": row, "records": records, "raw": [r for r in raws if r]})
        if name == "quarantine":
            return _jsonable(await self._read(s.quarantined, params.get("flow"),
                                            params.get("state", "open"),
                                            params.get("limit", 500)))
        if name == "actions":
            return _jsonable(await self._read(s.actions, flow=params.get("flow"),
                                            limit=params.get("limit", 200)))
        if name == "latest":
            if params.get("fresh"):  # from the store, not the caches (another node's flow)
                return _jsonable(await self._read(s.latest, params["flow"], params.get("key")))
            return await self.engine.caches.latest(params["flow"], params.get("key"))
        if name == "history":
            return await self.engine.caches.history(
                params["flow"], params["key"], params["metric"], params.get("since_ms", 0),
                params.get("step_ms"), params.get("limit", 2000))
        if name == "anomalies":
            return await self._read(self._anomalies, params["flow"], params["key"],
                                    params["metric"], int(params.get("since_ms", 0)),
                                    int(params.get("limit", 500)))
        if name == "caches":
            return self.engine.caches.snapshot()
        if name == "lineage":
            try:
                return _jsonable(await self._read(lineage, s, self.engine.config,
                                                int(params["record_id"])))
            except LookupError as exc:
                raise ControlError(str(exc)) from None
        if name == "record":
            rows = await self._read(self._record_at, params["flow"], params["key"],
                                  int(params["ts_ms"]))
            return _jsonable(rows[0]) if rows else None
        if name == "raw":
            row = await self._read(self._raw_summary, int(params["raw_id"]), full=True)
            if row is None:
                raise ControlError(f"no raw payload {params['raw_id']}")
            return row
        raise ControlError(f"unknown query {name!r}")

    def _anomalies(self, flow: str, key: str, metric: str, since_ms: int,
                   limit: int) -> list[list]:
        """``[ts_ms, value, anomaly_score]`` of a key's stored records flagged
        ``anomaly:{metric}`` since ``since_ms``, oldest first, the newest ``limit``."""
        flag = f"anomaly:{metric}"
        out = [[r["ts_ms"], r["data"].get(metric), r["anomaly_score"]]
               for r in self.store.records_since(flow, since_ms, key=key) if flag in r["flags"]]
        return _jsonable(out[-limit:])

    def _record_at(self, flow: str, key: str, ts_ms: int) -> list[dict]:
        return [r for r in self.store.records_since(flow, ts_ms, key=key, limit=1)
                if r["ts_ms"] == ts_ms]

    def _raw_summary(self, raw_id: int, full: bool = False) -> dict | None:
        raw = self.store.get_raw(raw_id)
        if raw is None:
            return None
        body = raw.pop("body")
        raw["text"] = body[: (200_000 if full else 600)].decode("utf-8", "replace")
        return _jsonable(raw)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, float) and value != value:
        return None
    return value
