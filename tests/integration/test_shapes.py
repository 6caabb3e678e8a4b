"""The typed shapes (flowdeck.pipeline.core.shapes) are what a real engine sends.

A run of the bundled flows into SQLite; then its snapshot, its viewers' snapshot (in
this process and as JSON, as the feed sends it), its hub events and its run summaries
must have every required key of their TypedDict, no key it does not declare, and
values of the declared types, all the way down.
"""

from __future__ import annotations

import json
import types
import typing
from typing import Any, Union, get_args, get_origin, get_type_hints, is_typeddict

from flowdeck.pipeline.core import shapes
from flowdeck.pipeline.engine.engine import Engine
from flowdeck.pipeline.serve.control import LocalControl
from flowdeck.pipeline.serve.protocol import dumps
from flowdeck.storage import schema as s


def mismatches(value: Any, tp: Any, path: str) -> list[str]:
    """Where ``value`` is not shaped as ``tp`` (keys and types), one line each."""
    if tp is Any:
        return []
    if is_typeddict(tp):
        if not isinstance(value, dict):
            return [f"{path}: {type(value).__name__}, not a {tp.__name__}"]
        hints = get_type_hints(tp)
        out = [f"{path}.{k}: missing ({tp.__name__})"
               for k in sorted(tp.__required_keys__ - value.keys())]
        out += [f"{path}.{k}: not declared in {tp.__name__}"
                for k in sorted(value.keys() - hints.keys())]
        for k in sorted(value.keys() & hints.keys()):
            out += mismatches(value[k], hints[k], f"{path}.{k}")
        return out
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return []
        tries = [mismatches(value, a, path) for a in args if a is not type(None)]
        return [] if any(not t for t in tries) else min(tries, key=len)
    if origin is dict:
        if not isinstance(value, dict):
            return [f"{path}: {type(value).__name__}, not a dict"]
        return [m for k, v in value.items() for m in mismatches(v, args[1], f"{path}[{k!r}]")]
    if origin in (list, tuple):  # a tuple arrives over JSON as a list
        if not isinstance(value, list | tuple):
            return [f"{path}: {type(value).__name__}, not a list"]
        items = args if origin is tuple else [args[0]] * len(value)
        if len(items) != len(value):
            return [f"{path}: {len(value)} items, not {len(items)}"]
        return [m for i, (v, t) in enumerate(zip(value, items, strict=True))
                for m in mismatches(v, t, f"{path}[{i}]")]
    if tp is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, tp)
    return [] if ok else [f"{path}: {value!r} is not {getattr(tp, '__name__', tp)}"]


def check(value: Any, tp: Any, path: str) -> None:
    problems = mismatches(value, tp, path)
    assert not problems, "\n".join(problems)


async def test_a_real_engine_sends_exactly_the_declared_shapes(demo_config, sqlite_store, clock):
    # Malformed payloads: quarantined items and issues too, so their rows are checked.
    engine = Engine(demo_config, sqlite_store, clock=clock, scenario="malformed", seed=7)
    await engine.start(schedule=False)
    try:
        sub = engine.hub.subscribe()
        summaries = await engine.run_all_once()
        control = LocalControl(engine)
        first = await control.snapshot()
        assert first["issues"] and first["quarantine"]
        # actions, an issue_state and a flow_state event
        await control.act("ack_issue", issue_id=first["issues"][0]["id"])
        await control.act("pause", flow="fx")
        viewer = await control.snapshot()
        snap = engine.snapshot()
        events = [e.as_dict() for e in sub.drain()]
    finally:
        await engine.stop()

    check(snap, shapes.EngineSnapshot, "engine")
    assert set(snap["flows"]) == {"weather", "fx"}
    assert all(f["last_run"] is not None for f in snap["flows"].values())
    check(first, shapes.ViewerSnapshot, "first")
    check(viewer, shapes.ViewerSnapshot, "viewer")
    check(json.loads(dumps(viewer)), shapes.ViewerSnapshot, "viewer-json")
    assert viewer["latest"]["weather"] and viewer["runs"]  # rows were checked, not []
    for summary in summaries:
        check(summary.as_dict(), shapes.RunSummaryDict, f"summary[{summary.flow}]")

    seen = set()
    for i, ev in enumerate(events):
        check(ev, shapes.HubEvent, f"event[{i}]")
        assert ev["type"] in shapes.EVENT_DATA, f"event type {ev['type']!r} is not declared"
        check(ev["data"], shapes.EVENT_DATA[ev["type"]], f"event[{i}]({ev['type']}).data")
        seen.add(ev["type"])
    assert {"run_started", "run_finished", "fetch", "records", "quarantine", "issue",
            "issue_state", "action", "flow_state", "cache_invalidate"} <= seen


def test_the_row_shapes_have_one_key_per_column():
    rows = {shapes.LatestRow: s.latest, shapes.IssueRow: s.issues, shapes.ActionRow: s.actions,
            shapes.QuarantinedRow: s.quarantine, shapes.RunRow: s.runs}
    for shape, table in rows.items():
        assert set(shape.__annotations__) == set(table.c.keys()), shape.__name__


def test_every_shape_resolves():
    # A forward reference the checker above never reached would only fail when used.
    for name, value in vars(shapes).items():
        if is_typeddict(value):
            assert get_type_hints(value), name
    assert all(is_typeddict(t) for t in shapes.EVENT_DATA.values())
    assert typing.get_type_hints(shapes.ViewerFlow).keys() > \
        typing.get_type_hints(shapes.FlowSnapshot).keys()


def test_the_check_sees_missing_undeclared_and_mistyped_keys():
    owed = {"rows": 1, "age_s": None}
    assert mismatches(owed, shapes.SeriesOwed, "o") == []
    assert mismatches({**owed, "x": 1}, shapes.SeriesOwed, "o") == ["o.x: not declared in SeriesOwed"]
    assert mismatches({"rows": 1}, shapes.SeriesOwed, "o") == ["o.age_s: missing (SeriesOwed)"]
    assert mismatches({"rows": "1", "age_s": 0.5}, shapes.SeriesOwed, "o") == \
        ["o.rows: '1' is not int"]
    state = {"state": "paused"}
    assert mismatches(state, shapes.FlowStateData, "f") == []  # stale is NotRequired
    assert mismatches({"layers": {"l1": {}}, "point": None}, shapes.CacheStatsData, "c")
