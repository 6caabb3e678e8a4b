"""Every payload shape of tests/corpus/real_shapes/ through the real engine into SQLite, once
read by its `file` source(s) and once fetched over loopback HTTP (each file source turned
into an `http` source serving the same bytes): the stored records must be exactly the
ones `expected.yaml` lists (written by hand from the payload), with the counts it gives,
and no false flags (out_of_order, clock_skew) or stale source.

A shape's folder: `config.yaml` (one flow; `file` sources whose `path` is relative to the
folder), its payload file(s), and `expected.yaml`: `stored: N`, `quarantined: M`,
optionally `now:` (ISO, the clock of the run; default a minute after the newest expected
record), and `records:` a list of `{key, ts (ISO UTC), data}` sorted by (key, ts). Floats
compare to 12 significant digits (unit conversions are affine maps in binary floating point).
"""

from __future__ import annotations

import math
import threading
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from flowdeck.pipeline.config import load_config, parse_config
from flowdeck.pipeline.core.clock import ManualClock
from flowdeck.pipeline.engine.engine import Engine
from flowdeck.storage.store import Store

ROOT = Path(__file__).resolve().parents[1] / "corpus" / "real_shapes"
SHAPES = sorted(p.name for p in ROOT.iterdir() if (p / "config.yaml").is_file()) \
    if ROOT.is_dir() else []
FALSE_FLAGS = {"out_of_order", "clock_skew"}
TYPES = {".json": "application/json", ".geojson": "application/geo+json", ".csv": "text/csv",
         ".xml": "application/xml", ".jsonl": "application/x-ndjson"}


def parse_iso(text: str) -> int:
    return int(datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp() * 1000)


def same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return (isinstance(a, int | float) and isinstance(b, int | float)
                and not isinstance(a, bool) and math.isclose(a, b, rel_tol=1e-12))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


class Files(ThreadingHTTPServer):
    """Loopback HTTP serving fixed bytes by path."""

    def __init__(self, files: dict[str, tuple[bytes, str]]) -> None:
        self.files = files

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                body, ctype = files.get(self.path.split("?")[0], (b"", ""))
                self.send_response(200 if ctype else 404)
                self.send_header("Content-Type", ctype or "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)


def http_config(shape: Path, server_port: int) -> tuple[str, dict[str, tuple[bytes, str]]]:
    """The shape's config with every file source turned into an http source."""
    data = yaml.safe_load((shape / "config.yaml").read_text())
    files = {}
    for flow in data["flows"].values():
        for src in flow["sources"]:
            if src["kind"] != "file":
                continue
            path = shape / src.pop("path")
            url_path = f"/{src['name']}/{path.name}"
            files[url_path] = (path.read_bytes(), TYPES.get(path.suffix, "application/json"))
            src["kind"] = "http"
            src["url"] = f"http://127.0.0.1:{server_port}{url_path}"
            src["retries"] = 0
    return yaml.safe_dump(data, sort_keys=False), files


async def run_shape(config, url: str, now_ms: int) -> tuple[dict, list[dict], list[dict]]:
    store = Store(url)
    engine = Engine(config, store, clock=ManualClock(now_ms / 1000))
    await engine.start(schedule=False)
    try:
        (summary,) = await engine.run_all_once()
        snap = engine.snapshot()
    finally:
        await engine.stop()
    try:
        flow = summary.flow
        stored = sorted(store.records_since(flow), key=lambda r: (r["key"], r["ts_ms"]))
        issues = store.issues(flow=flow)
    finally:
        store.close()
    return {"summary": summary.as_dict(), "snap": snap["flows"][flow]}, stored, issues


def check(expected: dict, run: dict, stored: list[dict], issues: list[dict]) -> None:
    summary = run["summary"]
    want = expected.get("records") or []
    # Keys starting with "_" are flowdeck's own annotations (the anomaly reason), not values.
    got = [{"key": r["key"], "ts": r["ts_ms"],
            "data": {k: v for k, v in r["data"].items() if not k.startswith("_")}}
           for r in stored]
    want = [{"key": str(r["key"]), "ts": parse_iso(r["ts"]), "data": r["data"]} for r in want]
    assert len(stored) == expected["stored"] == len(want)
    for g, w in zip(got, want, strict=True):
        assert same(g, w), f"stored {g}\nexpected {w}"
    assert summary["quarantined"] == expected["quarantined"]
    assert summary["status"] in ("ok", "partial") or expected["stored"] == 0
    flags = sorted({f for r in stored for f in r["flags"]} & FALSE_FLAGS)
    assert flags == []
    assert not any(s["stale"] for s in run["snap"]["sources"].values())
    assert [i["title"] for i in issues if i["kind"] == "stale_source"] == []


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("via", ["file", "http"])
async def test_shape_loads_by_config_alone(shape: str, via: str, tmp_path):
    folder = ROOT / shape
    expected = yaml.safe_load((folder / "expected.yaml").read_text())
    records = expected.get("records") or []
    now_ms = (parse_iso(expected["now"]) if expected.get("now")
              else max((parse_iso(r["ts"]) for r in records), default=0) + 60_000)
    url = f"sqlite:///{tmp_path / 'shape.db'}"
    if via == "file":
        run, stored, issues = await run_shape(load_config(folder / "config.yaml"), url, now_ms)
    else:
        server = Files({})
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            text, files = http_config(folder, server.server_address[1])
            server.files.update(files)
            config = parse_config(text, str(tmp_path / "config.yaml"), base_dir=folder)
            run, stored, issues = await run_shape(config, url, now_ms)
        finally:
            server.shutdown()
            server.server_close()
    check(expected, run, stored, issues)
