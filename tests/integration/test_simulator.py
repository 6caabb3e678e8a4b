"""Loopback simulator: endpoint shapes, determinism, caching and every fault kind."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hashlib
import io
import json
import math
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from flowdeck.pipeline.core.clock import ManualClock
from flowdeck.pipeline.core.durations import parse_duration
from flowdeck.pipeline.demo.catalogue import (
    ECBX_SYMBOLS,
    HUGE_BYTES,
    NETWORKS,
    PAIRS,
    STATIONS,
    STATIONS_CSV,
)
from flowdeck.pipeline.demo.scenarios import Fault, Scenario, available_scenarios
from flowdeck.pipeline.demo.simulator import Simulator, serve

T0 = datetime(2026, 11, 24, 21, 5, 30, tzinfo=UTC)
M = {  # the five whole minutes visible from T0
    datetime(2026, 11, 24, 21, m, tzinfo=UTC) for m in range(1, 6)
}
PATHS = {
    "metnet": "/weather/metnet/obs",
    "airnet": "/weather/airnet/latest",
    "skyobs": "/weather/skyobs/obs.csv",
    "fxquote": "/fx/fxquote/rates",
    "ecbx": "/fx/ecbx/rates.csv",
    "slowfx": "/fx/slowfx/rates",
}


@contextlib.asynccontextmanager
async def running(scenario=None, *, seed=7, faults=None, clock=None, timeout=5.0):
    if faults is not None:
        scenario = Scenario.parse({"name": "test", "faults": faults})
    elif isinstance(scenario, str):
        scenario = Scenario.load(scenario)
    clock = clock or ManualClock(T0)
    sim = Simulator(seed=seed, scenario=scenario, clock=clock)
    await sim.start()
    try:
        async with httpx.AsyncClient(base_url=sim.base_url, timeout=timeout) as client:
            yield sim, client, clock
    finally:
        await sim.stop()


def rows_csv(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def ts(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-standard JSON constant {name}")


def f_to_c(f: float) -> float:
    return (f - 32) * 5 / 9


# --------------------------------------------------------------------------- reference data


def test_stations_csv_matches_simulator():
    rows = rows_csv(STATIONS_CSV.read_text())
    assert list(rows[0]) == ["station", "name", "lat", "lon", "elevation_m", "country"]
    assert [r["station"] for r in rows] == list(STATIONS)
    assert len(rows) == 12
    for r in rows:
        st = STATIONS[r["station"]]
        assert len(r["station"]) == 4
        assert (r["name"], float(r["lat"]), float(r["lon"])) == (st.name, st.lat, st.lon)
        assert (int(r["elevation_m"]), r["country"]) == (st.elevation_m, st.country)
    for net in NETWORKS.values():
        assert len(net) == 8
    for station in STATIONS:
        assert sum(station in net for net in NETWORKS.values()) >= 2


# --------------------------------------------------------------------------- shapes


async def test_endpoint_shapes():
    async with running() as (sim, c, _):
        r = await c.get(PATHS["metnet"])
        assert r.status_code == 200 and r.headers["content-type"] == "application/geo+json"
        doc = r.json()
        assert doc["type"] == "FeatureCollection" and len(doc["features"]) == 40
        f = doc["features"][0]
        assert f["type"] == "Feature" and f["geometry"]["type"] == "Point"
        lon, lat = f["geometry"]["coordinates"]
        p = f["properties"]
        assert (lon, lat) == (STATIONS[p["stationId"]].lon, STATIONS[p["stationId"]].lat)
        assert set(p) == {
            "stationId",
            "timestamp",
            "temperature",
            "barometricPressure",
            "windSpeed",
        }
        assert p["temperature"]["unitCode"] == "wmoUnit:degF"
        assert p["barometricPressure"]["unitCode"] == "inHg"
        assert p["windSpeed"]["unitCode"] == "mph"
        assert p["timestamp"].endswith("+00:00")
        assert {ts(x["properties"]["timestamp"]) for x in doc["features"]} == M
        assert {x["properties"]["stationId"] for x in doc["features"]} == set(NETWORKS["metnet"])
        assert 25 < p["barometricPressure"]["value"] < 35

        r = await c.get(PATHS["airnet"])
        assert r.headers["content-type"] == "application/json"
        doc = r.json()
        assert doc["columns"] == ["site", "epoch", "t_c", "p_hpa", "wind_ms"]
        assert len(doc["rows"]) == 40
        assert {datetime.fromtimestamp(row[1], UTC) for row in doc["rows"]} == M
        assert all(isinstance(row[1], int) and 0 <= row[4] <= 15 for row in doc["rows"])
        assert all(980 < row[3] < 1050 for row in doc["rows"])

        r = await c.get(PATHS["skyobs"])
        assert r.headers["content-type"] == "text/csv; charset=utf-8"
        assert r.text.splitlines()[0] == "station,observed_at,temp_c,pressure_hpa,wind_kmh"
        rows = rows_csv(r.text)
        assert len(rows) == 40
        assert rows[0]["observed_at"] == "2026-11-24 21:01:00"
        assert {r_["station"] for r_ in rows} == set(NETWORKS["skyobs"])

        r = await c.get(PATHS["fxquote"])
        doc = r.json()
        assert doc["provider"] == "fxquote" and len(doc["quotes"]) == 25
        q = doc["quotes"][0]
        assert set(q) == {"pair", "rate", "time"} and q["time"].endswith("Z")
        assert {ts(x["time"]) for x in doc["quotes"]} == M

        r = await c.get(PATHS["ecbx"])
        assert r.headers["content-type"] == "text/csv; charset=utf-8"
        rows = rows_csv(r.text)
        assert list(rows[0]) == ["symbol", "price", "timestamp"]
        assert {x["symbol"] for x in rows} == set(ECBX_SYMBOLS.values())
        assert {datetime.fromtimestamp(int(x["timestamp"]) / 1000, UTC) for x in rows} == M

        r = await c.get(PATHS["slowfx"])
        doc = r.json()["data"]
        assert doc["columns"] == ["sym", "px", "t"] and len(doc["rows"]) == 25
        newest = max(ts(row[2]) for row in doc["rows"])
        assert newest == datetime(2026, 11, 24, 21, 3, tzinfo=UTC)  # 2 minutes behind

        r = await c.get("/healthz")
        assert (r.status_code, r.text) == (200, "ok")
        r = await c.get("/nope")
        assert r.status_code == 404 and r.json()["error"] == "not found"
        r = await c.get("/stream/fx")
        assert r.status_code == 426
        r = await c.head(PATHS["airnet"])
        assert r.status_code == 200 and r.content == b"" and int(r.headers["content-length"]) > 0
        assert sim.request_counts["metnet"] == 1 and sim.request_counts["airnet"] == 2


async def test_sources_agree_with_units_and_baseline_quirk():
    async with running() as (_, c, _):
        met = (await c.get(PATHS["metnet"])).json()["features"]
        air = (await c.get(PATHS["airnet"])).json()["rows"]
        sky = rows_csv((await c.get(PATHS["skyobs"])).text)
        fxq = (await c.get(PATHS["fxquote"])).json()["quotes"]
        ecb = rows_csv((await c.get(PATHS["ecbx"])).text)
        slow = (await c.get(PATHS["slowfx"])).json()["data"]["rows"]

    obs: dict[tuple[str, datetime], list[tuple[str, float, float, float]]] = {}
    for f in met:
        p = f["properties"]
        obs.setdefault((p["stationId"], ts(p["timestamp"])), []).append(
            (
                "metnet",
                f_to_c(p["temperature"]["value"]),
                p["barometricPressure"]["value"] / 0.0295299830714,
                p["windSpeed"]["value"] / 2.2369362920544,
            )
        )
    for site, epoch, t, p, w in air:
        obs.setdefault((site, datetime.fromtimestamp(epoch, UTC)), []).append(("airnet", t, p, w))
    for r in sky:
        when = datetime.fromisoformat(r["observed_at"]).replace(tzinfo=UTC)
        obs.setdefault((r["station"], when), []).append(
            ("skyobs", float(r["temp_c"]), float(r["pressure_hpa"]), float(r["wind_kmh"]) / 3.6)
        )
    assert len(obs) == 12 * 5
    for (station, _), values in obs.items():
        assert len(values) == 2
        (_, t1, p1, w1), (src2, t2, p2, w2) = values
        if station == "KDEN":
            assert src2 == "skyobs" and 2.3 < t2 - t1 < 3.7  # mis-calibrated sensor
        else:
            assert abs(t1 - t2) <= 0.6
        assert abs(p1 - p2) <= 0.9 and abs(w1 - w2) <= 0.7

    fx: dict[tuple[str, str], list[float]] = {}
    for q in fxq:
        fx.setdefault((q["pair"], q["time"]), []).append(q["rate"])
    inverse = {v: k for k, v in ECBX_SYMBOLS.items()}
    for r in ecb:
        when = datetime.fromtimestamp(int(r["timestamp"]) / 1000, UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
        fx.setdefault((inverse[r["symbol"]], when), []).append(1 / float(r["price"]))
    for pair, px, t in slow:
        fx.setdefault((pair, t), []).append(px)
    for (pair, _), rates in fx.items():
        assert 0.5 * PAIRS[pair] < rates[0] < 1.5 * PAIRS[pair]
        assert (max(rates) - min(rates)) / min(rates) < 0.0003
    assert sum(len(v) == 3 for v in fx.values()) == 15  # slowfx overlaps 3 minutes


async def test_polls_overlap_by_four_minutes():
    async with running() as (_, c, clock):
        first = {tuple(r[:2]): r for r in (await c.get(PATHS["airnet"])).json()["rows"]}
        clock.advance(60)
        second = {tuple(r[:2]): r for r in (await c.get(PATHS["airnet"])).json()["rows"]}
    common = set(first) & set(second)
    assert len(common) == 32 and len(second) == 40
    assert all(first[k] == second[k] for k in common)


# --------------------------------------------------------------------------- determinism


async def fetch_all(seed: int) -> dict[str, bytes]:
    async with running(seed=seed) as (_, c, _):
        return {name: (await c.get(path)).content for name, path in PATHS.items()}


async def test_same_seed_same_bytes_different_seed_different():
    a, b, other = await fetch_all(7), await fetch_all(7), await fetch_all(8)
    assert a == b
    for name in PATHS:
        assert a[name] != other[name], name


_SUBPROCESS = """
import asyncio, hashlib, httpx
from datetime import datetime, UTC
from flowdeck.pipeline.core.clock import ManualClock
from flowdeck.pipeline.demo.simulator import Simulator
async def main():
    sim = Simulator(seed=7, clock=ManualClock(datetime(2026, 11, 24, 21, 5, 30, tzinfo=UTC)))
    await sim.start()
    async with httpx.AsyncClient(base_url=sim.base_url) as c:
        body = (await c.get("/weather/metnet/obs")).content + (await c.get("/fx/ecbx/rates.csv")).content
    await sim.stop()
    print(hashlib.sha256(body).hexdigest())
asyncio.run(main())
"""


async def test_same_bytes_in_another_process():
    local = await fetch_all(7)
    expected = hashlib.sha256(local["metnet"] + local["ecbx"]).hexdigest()
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _SUBPROCESS, env=env, stdout=subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    assert out.decode().strip() == expected


# --------------------------------------------------------------------------- caching


async def test_etag_and_304():
    async with running() as (_, c, clock):
        r = await c.get(PATHS["fxquote"])
        etag = r.headers["etag"]
        assert etag.startswith('"') and int(r.headers["content-length"]) == len(r.content)
        r2 = await c.get(PATHS["fxquote"], headers={"If-None-Match": etag})
        assert r2.status_code == 304 and r2.content == b"" and r2.headers["etag"] == etag
        r3 = await c.get(PATHS["fxquote"], headers={"If-None-Match": f'"x", W/{etag}'})
        assert r3.status_code == 304
        r4 = await c.get(PATHS["fxquote"], headers={"If-None-Match": '"other"'})
        assert r4.status_code == 200 and r4.content == r.content
        clock.advance(60)
        r5 = await c.get(PATHS["fxquote"], headers={"If-None-Match": etag})
        assert r5.status_code == 200 and r5.headers["etag"] != etag


# --------------------------------------------------------------------------- request faults


async def test_outage_window_primary_outage():
    async with running("primary-outage") as (_, c, clock):
        assert (await c.get(PATHS["metnet"])).status_code == 200
        clock.advance(90)
        r = await c.get(PATHS["metnet"])
        assert r.status_code == 503 and r.json()["error"] == "service unavailable"
        assert r.headers["content-type"] == "application/json"
        assert (await c.get(PATHS["airnet"])).status_code == 200
        clock.advance(180)  # 4m30s after t0
        assert (await c.get(PATHS["metnet"])).status_code == 200


async def test_all_down_and_flapping():
    async with running("all-down") as (_, c, clock):
        clock.advance(150)
        for name in ("metnet", "airnet", "skyobs"):
            assert (await c.get(PATHS[name])).status_code == 503
        assert (await c.get(PATHS["fxquote"])).status_code == 200
    async with running("flapping") as (_, c, clock):
        statuses = []
        for at in (10, 25, 45, 65, 85, 105):
            clock.set(T0 + timedelta(seconds=at))
            statuses.append((await c.get(PATHS["metnet"])).status_code)
        assert statuses == [200, 503, 200, 503, 200, 503]


async def test_error_burst_rate_is_deterministic():
    faults = [
        {"kind": "error_burst", "source": "metnet", "rate": 0.5},
        {"kind": "error_burst", "source": "ecbx", "status": 429},
    ]
    runs = []
    for _ in range(2):
        async with running(faults=faults) as (_, c, _):
            runs.append([(await c.get(PATHS["metnet"])).status_code for _ in range(30)])
            assert (await c.get(PATHS["ecbx"])).status_code == 429
    assert runs[0] == runs[1]
    assert set(runs[0]) == {200, 500} and 5 < runs[0].count(500) < 25


async def test_latency():
    async with running(faults=[{"kind": "latency", "source": "airnet", "delay": "300ms"}]) as (
        _,
        c,
        _,
    ):
        start = time.perf_counter()
        assert (await c.get(PATHS["airnet"])).status_code == 200
        assert time.perf_counter() - start >= 0.3
        start = time.perf_counter()
        await c.get(PATHS["metnet"])
        assert time.perf_counter() - start < 0.3
    assert Scenario.load("slow-source").faults[0].delay == 4.0


async def test_timeout_and_clean_stop():
    async with running(faults=[{"kind": "timeout", "source": "skyobs"}], timeout=0.3) as (
        sim,
        c,
        _,
    ):
        with pytest.raises(httpx.TimeoutException):
            await c.get(PATHS["skyobs"])
        assert (await c.get(PATHS["metnet"])).status_code == 200
        start = time.perf_counter()
    assert time.perf_counter() - start < 3.0  # stop() did not wait for the 60 s sleep
    assert sim.request_counts["skyobs"] == 1


# --------------------------------------------------------------------------- malformed


async def test_malformed_variants_cycle_and_are_really_malformed():
    variants = [
        "truncated_json",
        "html",
        "bad_utf8",
        "nan",
        "deep_nesting",
        "wrong_types",
        "missing_fields",
    ]
    faults = [{"kind": "malformed", "source": "metnet", "variants": variants}]
    async with running(faults=faults) as (_, c, _):
        got = {v: await c.get(PATHS["metnet"]) for v in variants}
    for v, r in got.items():
        assert r.status_code == 200
        expected = "text/html; charset=utf-8" if v == "html" else "application/geo+json"
        assert r.headers["content-type"] == expected, v
    with pytest.raises(json.JSONDecodeError):
        json.loads(got["truncated_json"].content)
    assert got["html"].text.startswith("<!DOCTYPE html>")
    with pytest.raises(UnicodeDecodeError):
        got["bad_utf8"].content.decode("utf-8")

    body = got["nan"].content
    assert b"NaN" in body or b"Infinity" in body
    with pytest.raises(ValueError):
        json.loads(body, parse_constant=_reject_constant)
    values = [f["properties"]["temperature"]["value"] for f in json.loads(body)["features"]]
    assert any(not math.isfinite(v) for v in values)

    body = got["deep_nesting"].content
    assert body.startswith(b"[" * 10_000) and body.count(b"[") == 10_000
    with pytest.raises(RecursionError):
        json.loads(body)

    temps = [f["properties"]["temperature"]["value"] for f in got["wrong_types"].json()["features"]]
    assert "warm" in temps and any(isinstance(t, float) for t in temps)
    props = [f["properties"] for f in got["missing_fields"].json()["features"]]
    assert any("stationId" not in p for p in props) and any("stationId" in p for p in props)


async def test_malformed_on_tabular_sources_and_rate():
    faults = [
        {
            "kind": "malformed",
            "source": "skyobs",
            "variants": ["wrong_types", "missing_fields", "nan"],
        },
        {"kind": "malformed", "source": "airnet", "variants": ["missing_fields"]},
    ]
    async with running(faults=faults) as (_, c, _):
        wrong, missing, nan = [rows_csv((await c.get(PATHS["skyobs"])).text) for _ in range(3)]
        air = (await c.get(PATHS["airnet"])).json()
    assert any(r["temp_c"] == "warm" for r in wrong)
    assert any(r["station"] == "" for r in missing)
    assert any(r["temp_c"] in ("NaN", "Infinity", "-Infinity") for r in nan)
    assert any(row[0] is None for row in air["rows"]) and len(air["rows"]) == 40

    async with running("malformed") as (_, c, _):
        bodies = [(await c.get(PATHS["metnet"])) for _ in range(20)]
    ok = 0
    for r in bodies:
        with contextlib.suppress(ValueError, RecursionError):
            doc = json.loads(r.content, parse_constant=_reject_constant)
            ok += all("stationId" in f["properties"] for f in doc["features"]) and all(
                isinstance(f["properties"]["temperature"]["value"], float) for f in doc["features"]
            )
    assert 3 < ok < 17  # rate 0.5


async def test_huge_variant_streamed_and_closed_early():
    faults = [{"kind": "malformed", "source": "airnet", "variants": ["huge"]}]
    async with running(faults=faults) as (_, c, _):
        async with c.stream("GET", PATHS["airnet"]) as r:
            assert r.status_code == 200 and r.headers["content-type"] == "application/json"
            assert int(r.headers["content-length"]) >= HUGE_BYTES >= 50 * 1024 * 1024
            async for chunk in r.aiter_bytes():
                assert chunk.startswith(b'{"columns"')
                break
        assert (await c.get("/healthz")).status_code == 200


# --------------------------------------------------------------------------- data faults


async def test_schema_drift_renames_from_start():
    async with running("schema-drift") as (_, c, clock):
        props = (await c.get(PATHS["metnet"])).json()["features"][0]["properties"]
        assert "temperature" in props
        clock.advance(125)
        props = (await c.get(PATHS["metnet"])).json()["features"][0]["properties"]
        assert "temp" in props and "temperature" not in props
        assert props["temp"]["unitCode"] == "wmoUnit:degF"
        assert "price" in (await c.get(PATHS["fxquote"])).json()["quotes"][0]
        assert "t_c" in (await c.get(PATHS["airnet"])).json()["columns"]
        clock.advance(60)
        assert (await c.get(PATHS["airnet"])).json()["columns"][2] == "temp_c"


async def test_duplicates_and_out_of_order():
    async with running("duplicates") as (_, c, _):
        rows = (await c.get(PATHS["airnet"])).json()["rows"]
        keys = [(r[0], r[1]) for r in rows]
        assert len(rows) > 40 and len(set(keys)) == 40
    async with running("out-of-order") as (_, c, _):
        rows = rows_csv((await c.get(PATHS["skyobs"])).text)
        times = [r["observed_at"] for r in rows]
        assert len(rows) == 43 and times != sorted(times)
        assert sum(t < "2026-11-24 21:01:00" for t in times) == 3
        slow = (await c.get(PATHS["slowfx"])).json()["data"]["rows"]
        assert len(slow) == 27


async def test_clock_skew_shifts_timestamps():
    async with running("clock-skew") as (_, c, clock):
        ecb = rows_csv((await c.get(PATHS["ecbx"])).text)
        newest = max(int(r["timestamp"]) for r in ecb) / 1000
        assert datetime.fromtimestamp(newest, UTC) == datetime(2026, 11, 24, 21, 2, tzinfo=UTC)
        base = max(r[1] for r in (await c.get(PATHS["airnet"])).json()["rows"])
        clock.advance(60)
        skewed = max(r[1] for r in (await c.get(PATHS["airnet"])).json()["rows"])
        assert skewed - base == 60 + 600 and skewed > clock.now() + 500


async def test_the_first_answer_carries_the_scenarios_backlog():
    """`backlog: 3h` (the anomalies scenario): a source's first answer also carries the
    three healthy hours before t0; every later one the last 5 minutes, as always."""
    scenario = Scenario.load("anomalies")
    assert scenario.backlog == 3 * 3600
    async with running(scenario) as (sim, c, clock):
        first = rows_csv((await c.get(PATHS["skyobs"])).text)
        stations = len({r["station"] for r in first})
        minutes = sorted({r["observed_at"] for r in first})
        assert len(minutes) == 180 + 5 and len(first) == stations * 185
        span = datetime.fromisoformat(minutes[-1]) - datetime.fromisoformat(minutes[0])
        assert span == timedelta(minutes=184)
        assert datetime.fromisoformat(minutes[-1]).replace(tzinfo=UTC).timestamp() <= sim.t0
        clock.advance(60)
        later = rows_csv((await c.get(PATHS["skyobs"])).text)
        assert len({r["observed_at"] for r in later}) == 5
    with pytest.raises(ValueError, match="backlog"):
        Scenario.parse({"name": "x", "backlog": "-1h"})


async def test_spike_and_level_shift_visible_and_labelled(tmp_path):
    anomalies = Scenario.load("anomalies")
    anomalies.backlog = 0.0  # minute-by-minute against a plain simulator's answers
    async with running(anomalies) as (sim, c, clock), running() as (_, plain, pclock):
        labels = sim.labels()
        assert len(labels) == 6
        kord = next(x for x in labels if x["key"] == "KORD")
        assert kord == {
            "flow": "weather",
            "key": "KORD",
            "metric": "temperature",
            "kind": "spike",
            "start": "2026-11-24T21:09:00+00:00",
            "end": "2026-11-24T21:10:00+00:00",
        }
        shift = next(x for x in labels if x["key"] == "KATL")
        assert shift["kind"] == "level_shift" and shift["end"] is None
        sim.write_labels(tmp_path / "labels.json")
        assert json.loads((tmp_path / "labels.json").read_text()) == labels

        for ck in (clock, pclock):
            ck.set(datetime(2026, 11, 24, 21, 10, 10, tzinfo=UTC))

        def by_station(features, minute):
            return {
                f["properties"]["stationId"]: f["properties"]["temperature"]["value"]
                for f in features
                if f["properties"]["timestamp"] == f"2026-11-24T21:{minute:02d}:00+00:00"
            }

        a = (await c.get(PATHS["metnet"])).json()["features"]
        b = (await plain.get(PATHS["metnet"])).json()["features"]
        assert by_station(a, 9)["KORD"] - by_station(b, 9)["KORD"] == pytest.approx(14.4, abs=0.11)
        assert by_station(a, 8) == by_station(b, 8) and by_station(a, 10) == by_station(b, 10)
        sky_a = rows_csv((await c.get(PATHS["skyobs"])).text)
        sky_b = rows_csv((await plain.get(PATHS["skyobs"])).text)
        diffs = {
            (x["station"], x["observed_at"]): float(x["temp_c"]) - float(y["temp_c"])
            for x, y in zip(sky_a, sky_b, strict=True)
        }
        assert diffs[("KORD", "2026-11-24 21:09:00")] == pytest.approx(8.0, abs=0.11)
        assert sum(abs(d) > 0.01 for d in diffs.values()) == 1

        # fx spike +1.5% on EURUSD at 21:10 (t0 + 4m = 21:09:30, rounded up)
        qa = {
            (q["pair"], q["time"]): q["rate"]
            for q in (await c.get(PATHS["fxquote"])).json()["quotes"]
        }
        qb = {
            (q["pair"], q["time"]): q["rate"]
            for q in (await plain.get(PATHS["fxquote"])).json()["quotes"]
        }
        key = ("EURUSD", "2026-11-24T21:10:00Z")
        assert qa[key] / qb[key] == pytest.approx(1.015, abs=2e-5)
        assert sum(qa[k] != qb[k] for k in qa) == 1

        for ck in (clock, pclock):
            ck.set(datetime(2026, 11, 24, 21, 30, tzinfo=UTC))
        air_a = rows_csv((await c.get(PATHS["skyobs"])).text)
        air_b = rows_csv((await plain.get(PATHS["skyobs"])).text)
        katl = [
            float(x["temp_c"]) - float(y["temp_c"])
            for x, y in zip(air_a, air_b, strict=True)
            if x["station"] == "KATL"
        ]
        assert katl == pytest.approx([5.0] * 5, abs=0.11)


# --------------------------------------------------------------------------- websocket


async def test_stream_sends_quotes_per_minute():
    async with running() as (sim, _, clock), connect(sim.ws_url) as ws:
        first = [json.loads(await asyncio.wait_for(ws.recv(), 2)) for _ in range(5)]
        assert {m["pair"] for m in first} == set(PAIRS)
        assert {m["time"] for m in first} == {"2026-11-24T21:05:00Z"}
        assert all(set(m) == {"pair", "rate", "time"} for m in first)
        clock.advance(60)
        nxt = [json.loads(await asyncio.wait_for(ws.recv(), 2)) for _ in range(5)]
        assert {m["time"] for m in nxt} == {"2026-11-24T21:06:00Z"}
        assert sim.request_counts["fxstream"] == 1


async def test_stream_outage_rejects_handshake():
    async with running(faults=[{"kind": "outage", "source": "fxstream"}]) as (sim, _, _):
        with pytest.raises(InvalidStatus) as err:
            async with connect(sim.ws_url):
                pass
        assert err.value.response.status_code == 503


# --------------------------------------------------------------------------- scenarios


def test_every_scenario_file_loads():
    names = available_scenarios()
    assert set(names) >= {
        "normal",
        "primary-outage",
        "all-down",
        "flapping",
        "slow-source",
        "timeouts",
        "error-burst",
        "malformed",
        "schema-drift",
        "duplicates",
        "out-of-order",
        "clock-skew",
        "anomalies",
        "huge-payload",
        "chaos",
    }
    kinds = set()
    for name in names:
        scenario = Scenario.load(name)
        assert scenario.name == name and scenario.description
        kinds |= {f.kind for f in scenario.faults}
    assert kinds == set(Fault.model_fields["kind"].annotation.__args__)
    mal = Scenario.load("malformed").faults[0]
    assert mal.rate == 0.5 and set(mal.variants) == {
        "truncated_json",
        "html",
        "bad_utf8",
        "nan",
        "deep_nesting",
        "wrong_types",
        "missing_fields",
    }


def test_scenario_errors(tmp_path):
    with pytest.raises(ValueError, match="primary-outage"):
        Scenario.load("no-such-scenario")
    bad = [
        {"name": "x", "faults": [{"kind": "outage", "source": "metnet", "colour": "red"}]},
        {"name": "x", "faults": [{"kind": "outage", "source": "metnet", "delay": 3}]},
        {"name": "x", "faults": [{"kind": "outage", "source": "nosuch"}]},
        {"name": "x", "faults": [{"kind": "outage"}]},
        {"name": "x", "faults": [{"kind": "latency", "source": "airnet"}]},
        {
            "name": "x",
            "faults": [
                {
                    "kind": "spike",
                    "flow": "weather",
                    "key": "KXXX",
                    "metric": "temperature",
                    "at": 1,
                    "magnitude": 2,
                }
            ],
        },
        {
            "name": "x",
            "faults": [
                {"kind": "schema_drift", "source": "airnet", "rename": {"temperature": "t"}}
            ],
        },
        {"name": "x", "faults": [{"kind": "malformed", "source": "airnet", "variants": ["bogus"]}]},
        {"name": "x", "faults": [], "extra": 1},
    ]
    for data in bad:
        with pytest.raises(ValueError):
            Scenario.parse(data)
    path = tmp_path / "mine.yaml"
    path.write_text(
        "name: mine\ndescription: d\nfaults:\n  - {kind: outage, source: ecbx, start: 90}\n"
    )
    assert Scenario.load(path).faults[0].start == 90
    # Scenario times read the one duration grammar, signed (a clock skew's offset: -3m).
    assert [parse_duration(x, signed=True)
            for x in ("30s", "5m", "1h", "1m30s", "-10m", 12, "500ms")] == [
        30,
        300,
        3600,
        90,
        -600,
        12,
        0.5,
    ]


async def test_serve_prints_and_writes_labels(tmp_path, capsys):
    labels = tmp_path / "labels.json"
    task = asyncio.create_task(serve(port=0, scenario="anomalies", seed=3, labels_path=labels))
    line = ""
    for _ in range(100):
        await asyncio.sleep(0.02)
        line += capsys.readouterr().out
        if "\n" in line:
            break
    assert (
        line.startswith("simulator on http://127.0.0.1:") and "(scenario anomalies, seed 3)" in line
    )
    url = line.split()[2]
    async with httpx.AsyncClient() as c:
        assert (await c.get(url + "/healthz")).text == "ok"
    assert len(json.loads(labels.read_text())) == 6
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
