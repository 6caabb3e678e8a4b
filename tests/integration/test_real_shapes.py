"""The real-shapes corpus (tests/corpus/real_shapes/<shape>/): each shape's config runs once
through the real engine into SQLite, from a `file` source and from a loopback `http`
source serving the same payload; the stored records must be exactly expected.yaml's
(floats to 1e-9), the counts must match, and no record may carry a false flag.

A shape dir holds config.yaml (one flow, one `file` source, path relative to the dir),
the payload, and expected.yaml: {stored, quarantined, records: [{key, ts, data}]} sorted by
(key, ts). An optional `xfail_flags: reason` marks flags known to be false until another
change lands (strict: once they are gone the marker must go).
"""

from __future__ import annotations

import threading
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from flowdeck.pipeline.config import parse_config
from flowdeck.pipeline.engine.engine import Engine
from flowdeck.storage.store import Store

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "real_shapes"
SHAPES = sorted(p.name for p in CORPUS.iterdir() if (p / "expected.yaml").is_file())
TYPES = {"xml": "application/xml", "csv": "text/csv", "jsonl": "application/x-ndjson",
         "geojson": "application/geo+json", "json": "application/json"}


def iso_ms(text: str) -> int:
    return round(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def same(got, want) -> bool:
    if isinstance(want, float) or isinstance(got, float):
        return (isinstance(got, int | float) and isinstance(want, int | float)
                and abs(got - want) <= 1e-9 * max(1.0, abs(want)))
    return got == want


class Served:
    """One payload on a loopback HTTP server."""

    def __init__(self, body: bytes, content_type: str) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_address[1]}/payload"

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("via", ["file", "http"])
@pytest.mark.parametrize("shape", SHAPES)
async def test_real_shape_loads_exactly(shape, via, tmp_path, clock):
    folder = CORPUS / shape
    raw = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
    expected = yaml.safe_load((folder / "expected.yaml").read_text(encoding="utf-8"))
    (flow_name, flow), = raw["flows"].items()
    (src,) = flow["sources"]
    body = (folder / src["path"]).read_bytes()
    served = Served(body, TYPES[src.get("format", "json")])
    with served as url:
        if via == "http":
            src.pop("path")
            src.update(kind="http", url=url)
        text = yaml.safe_dump(raw, allow_unicode=True, sort_keys=False)
        config = parse_config(text, str(folder / "config.yaml"), base_dir=folder)
        store = Store(f"sqlite:///{tmp_path / 'shapes.db'}")
        try:
            engine = Engine(config, store, clock=clock)
            await engine.start(schedule=False)
            try:
                (summary,) = await engine.run_all_once()
            finally:
                await engine.stop()
            rows = sorted(store.records_since(flow_name), key=lambda r: (r["key"], r["ts_ms"]))
            quarantined = store.count("quarantine", flow=flow_name)
        finally:
            store.close()
    assert summary.error is None, summary.error
    assert (len(rows), quarantined) == (expected["stored"], expected["quarantined"])
    want = expected["records"]
    assert [(r["key"], r["ts_ms"]) for r in rows] == [(str(w["key"]), iso_ms(w["ts"]))
                                                      for w in want]
    for row, w in zip(rows, want, strict=True):
        data = {k: v for k, v in row["data"].items() if not k.startswith("_")}
        assert data.keys() == w["data"].keys(), (row["key"], row["ts_ms"])
        wrong = {k: (data[k], v) for k, v in w["data"].items() if not same(data[k], v)}
        assert not wrong, f"{row['key']} @ {row['ts_ms']}: (stored, expected) {wrong}"
    flagged = {(r["key"], r["ts_ms"]): r["flags"] for r in rows if r["flags"]}
    if expected.get("xfail_flags"):
        if flagged:
            pytest.xfail(expected["xfail_flags"])
        pytest.fail(f"no false flags any more: remove xfail_flags from {shape}/expected.yaml")
    assert not flagged, f"false flags: {flagged}"
