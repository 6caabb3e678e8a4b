"""The HTTP side of the feed's port: probes, /metrics (checked by promtool), the read API.

Real HTTP requests on loopback against a real engine and feed server.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess

import pytest
from support.feed import BROKEN_FLOW, Client, aget, need_tool, rows_for, start_rig

METRICS = (
    "records_total",
    "stage_seconds",
    "source_up",
    "source_latency_seconds",
    "breaker_state",
    "quality_issues_open",
    "quarantine_total",
    "cache_requests_total",
    "cache_invalidations_total",
    "feed_clients",
    "feed_messages_total",
    "feed_dropped_total",
    "run_duration_seconds",
    "last_success_timestamp_seconds",
)


@pytest.fixture
async def rig(tmp_path):
    r = await start_rig(tmp_path)
    yield r
    await r.close()


async def get_json(url: str, headers: dict | None = None) -> tuple[int, dict, dict]:
    status, h, body = await aget(url, headers)
    return status, h, json.loads(body) if body else {}


async def test_healthz_and_readyz(tmp_path):
    rig = await start_rig(tmp_path, schedule=True)
    try:
        status, _, body = await get_json(rig.http_url + "/healthz")
        assert status == 200 and body["status"] == "ok"
        status, h, body = await get_json(rig.http_url + "/readyz")
        assert status == 200 and h["Cache-Control"] == "no-store"
        assert body["ready"] and body["store"] == "ok" and body["scheduler"] == "running"
        assert set(body["flows"]) == {"bench", "other"}
        # Paused, a flow is not scheduled; all paused is still ready (nothing to schedule).
        rig.engine.pause("bench")
        rig.engine.pause("other")
        status, _, body = await get_json(rig.http_url + "/readyz")
        assert status == 200 and body["flows"] == {"bench": "paused", "other": "paused"}
    finally:
        await rig.close()


async def test_readyz_is_503_without_a_scheduler(rig):
    status, _, body = await get_json(rig.http_url + "/readyz")
    assert status == 503 and body["ready"] is False
    assert body["problems"] == ["scheduler is not running"] and body["store"] == "ok"


async def test_metrics_pass_promtool_and_follow_the_engine(rig):
    await rig.ingest("bench", rows_for(["KAAA", "KBBB", "KCCC"]))
    bad = rows_for(["KDDD"])
    bad[0]["temp"] = 999
    await rig.ingest("bench", bad)
    status, headers, body = await aget(rig.http_url + "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=")
    text = body.decode()
    for name in METRICS:
        assert f"# TYPE flowdeck_{name.removesuffix('_total')}" in text, name
    assert 'flowdeck_records_total{flow="bench",outcome="out",stage="store"} 3.0' in text
    assert 'flowdeck_records_total{flow="bench",outcome="rejected",stage="validate"} 1.0' in text
    assert 'flowdeck_quarantine_total{flow="bench",reason="invalid"} 1.0' in text
    assert 'flowdeck_source_up{flow="bench",source="drop"} 1.0' in text
    assert 'flowdeck_breaker_state{flow="bench",source="drop"} 0.0' in text  # closed
    assert 'flowdeck_quality_issues_open{flow="bench",severity="warning"} 1.0' in text
    assert 'flowdeck_stage_seconds_count{flow="bench",stage="validate"} 2.0' in text
    assert 'flowdeck_last_success_timestamp_seconds{flow="bench"}' in text
    promtool = need_tool("promtool", "prometheus")
    res = await asyncio.to_thread(
        subprocess.run, [promtool, "check", "metrics"], input=body, capture_output=True, timeout=30
    )
    assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()


def metric_value(text: str, name: str) -> float:
    (line,) = [ln for ln in text.splitlines() if ln.startswith(name + " ")]
    return float(line.split()[1])


async def test_metrics_show_series_that_cannot_be_written(tmp_path):
    """While the store refuses roll-ups, the stored runs' points wait to be rolled up, and
    /metrics says so (an operator can alert on it); once it accepts them they are written."""
    rig = await start_rig(tmp_path, extra="store: {derived_delay: 50ms, retry: 100ms}")
    con = sqlite3.connect(tmp_path / "feed.db")
    try:
        con.execute("CREATE TRIGGER refuse_series BEFORE INSERT ON series_1m "
                    "BEGIN SELECT RAISE(ABORT, 'series refused'); END")
        con.commit()
        await rig.ingest("bench", rows_for(["KAAA", "KBBB"]))
        await asyncio.sleep(0.3)  # the timed write has been tried, and failed
        _, _, body = await aget(rig.http_url + "/metrics")
        text = body.decode()
        assert metric_value(text, "flowdeck_series_owed_rows") == 5  # 2 x 2 points, 1 mark
        assert metric_value(text, "flowdeck_series_owed_age_seconds") >= 0.25
        con.execute("DROP TRIGGER refuse_series")
        con.commit()
        for _ in range(100):
            _, _, body = await aget(rig.http_url + "/metrics")
            if metric_value(body.decode(), "flowdeck_series_owed_rows") == 0:
                break
            await asyncio.sleep(0.05)
        assert metric_value(body.decode(), "flowdeck_series_owed_age_seconds") == 0
        assert len(rig.store.history("bench", "KAAA", "temperature")) == 1
        assert len(rig.store.history("bench", "KAAA", "temperature", step_ms=60_000)) == 1
    finally:
        con.close()
        await rig.close()


async def test_read_api_answers_304_to_a_repeated_request(rig):
    await rig.ingest("bench", rows_for(["KAAA", "KBBB"]))
    url = rig.http_url + "/api/flows/bench/latest"
    status, h1, body = await get_json(url)
    assert status == 200 and [r["key"] for r in body["records"]] == ["KAAA", "KBBB"]
    assert h1["ETag"].startswith('"') and "max-age=1" in h1["Cache-Control"]
    assert "stale-while-revalidate" in h1["Cache-Control"]
    status, h2, raw = await aget(url, {"If-None-Match": h1["ETag"]})
    assert status == 304 and raw == b"" and h2["ETag"] == h1["ETag"]
    status, _, _ = await aget(url, {"If-None-Match": f'W/{h1["ETag"]}, "other"'})
    assert status == 304
    await rig.ingest("bench", rows_for(["KCCC"]))
    status, h3, body = await get_json(url, {"If-None-Match": h1["ETag"]})
    assert status == 200 and h3["ETag"] != h1["ETag"] and len(body["records"]) == 3
    status, _, body = await get_json(url + "?key=KCCC")
    assert [r["key"] for r in body["records"]] == ["KCCC"]
    for path in ("/api/flows", "/api/issues", "/api/actions?flow=bench"):
        status, h, _ = await aget(rig.http_url + path)
        assert status == 200, path
        assert (await aget(rig.http_url + path, {"If-None-Match": h["ETag"]}))[0] == 304


async def test_history_and_its_parameters(rig):
    await rig.ingest("bench", rows_for(["KAAA"], n_per_key=5))
    base = rig.http_url + "/api/flows/bench/history"
    status, _, body = await get_json(base + "?key=KAAA&metric=temperature&since=1h")
    assert status == 200 and body["step"] == "raw" and len(body["points"]) == 5
    assert body["points"] == sorted(body["points"])
    status, _, body = await get_json(base + "?key=KAAA&metric=temperature&step=1m")
    assert status == 200 and len(body["points"]) == 5
    status, _, body = await get_json(base + "?key=KAAA&metric=temperature&limit=2")
    assert [p[0] for p in body["points"]] == [p[0] for p in body["points"]][-2:]
    assert len(body["points"]) == 2
    for query, code, words in (
        ("", 400, "history needs"),
        ("?key=KAAA&metric=humidity", 404, "no metric 'humidity'"),
        ("?key=KAAA&metric=temperature&step=5m", 400, "step must be"),
        ("?key=KAAA&metric=temperature&since=yesterday", 400, "cannot read time"),
        ("?key=KAAA&metric=temperature&limit=0", 400, "between"),
    ):
        status, _, body = await get_json(base + query)
        assert status == code and words in body["error"], (query, body)


async def test_errors_are_json_with_the_right_status(rig):
    for path, code in (
        ("/api/flows/nosuch/latest", 404),
        ("/api/nothing", 404),
        ("/api/issues?state=sleeping", 400),
        ("/api/actions?flow=nosuch", 404),
        ("/api/issues?limit=abc", 400),
    ):
        status, h, body = await get_json(rig.http_url + path)
        assert status == code, path
        assert h["Content-Type"] == "application/json" and body["error"]
    status, h, body = await aget(rig.http_url + "/api/flows", None, "DELETE")
    assert status == 405 and h["Allow"] == "GET, HEAD" and b"read-only" in body
    status, h, body = await aget(rig.http_url + "/api/flows", None, "HEAD")
    assert status == 200 and body == b"" and int(h["Content-Length"]) > 0


async def test_viewer_page_is_served_with_a_strict_policy(rig):
    status, h, body = await aget(rig.http_url + "/")
    assert status == 200 and h["Content-Type"].startswith("text/html")
    assert b"/feed" in body and b"new WebSocket" in body
    csp = h["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'sha256-" in csp
    assert f"ws://127.0.0.1:{rig.feed.port}" in csp
    assert (await aget(rig.http_url + "/", {"If-None-Match": h["ETag"]}))[0] == 304


async def test_breaker_state_follows_the_engine(tmp_path):
    rig = await start_rig(tmp_path, extra=BROKEN_FLOW.format(tmp=tmp_path))
    try:
        c = await Client.open(rig.ws_url)
        await c.subscribe("recovery", filters={"flow": "broken"})
        summary = (await rig.engine.run_flow("broken", "manual")).as_dict()
        assert summary["status"] == "failed"
        ev = await c.expect("delta", "recovery", where=lambda m: m["data"]["type"] == "breaker")
        assert ev["data"]["data"]["source"] == "gone" and ev["data"]["data"]["state"] == "open"
        _, _, body = await aget(rig.http_url + "/metrics")
        assert b'flowdeck_breaker_state{flow="broken",source="gone"} 2.0' in body
        assert b'flowdeck_source_up{flow="broken",source="gone"} 0.0' in body
        rid = await c.send(
            type="action", name="reset_breaker", params={"flow": "broken", "source": "gone"}
        )
        res = await c.expect("result", where=lambda m: m["data"]["id"] == rid)
        assert res["data"]["result"]["message"].startswith("breaker of broken/gone reset")
        act = await c.expect(
            "delta", "recovery", where=lambda m: m["data"]["data"].get("action") == "reset_breaker"
        )
        assert act["data"]["data"]["actor"] == "tester"
        auto = [m for m in c.backlog if m["data"]["data"].get("action") == "breaker_open"]
        assert auto and auto[0]["data"]["data"]["actor"] == "auto"  # the engine's own action
        _, _, body = await aget(rig.http_url + "/metrics")
        assert b'flowdeck_breaker_state{flow="broken",source="gone"} 0.0' in body
        await c.close()
    finally:
        await rig.close()
