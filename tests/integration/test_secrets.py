"""Issue 15 item 6: a source's credentials (read from the environment and a file, never
inline) appear in no log line, run error, action, issue, feed message, /metrics, export
or lineage output, even when the upstream echoes them back in its error."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from support.feed import Client, http_get

from flowdeck.console.cli import main
from flowdeck.pipeline.config import ConfigError, parse_config
from flowdeck.pipeline.core import logs
from flowdeck.pipeline.engine.engine import Engine
from flowdeck.pipeline.serve.control import LocalControl
from flowdeck.pipeline.serve.feed import FeedServer
from flowdeck.storage.store import Store

TOKEN = "tok-9f3Kq2ZxW7"  # in $UPSTREAM_TOKEN: the Authorization header
API_KEY = "key-Hh61LpQ0aa"  # in $UPSTREAM_KEY: the api_key query parameter
FILE_SECRET = "filesecret-88Aa"  # in a file: the X-Api-Key header
SECRETS = (TOKEN, API_KEY, FILE_SECRET)


class Upstream(BaseHTTPRequestHandler):
    """The first request gets one good record; later ones a 401 that echoes everything."""

    calls = 0

    def do_GET(self):  # noqa: N802 (http.server's name)
        type(self).calls += 1
        if type(self).calls == 1:
            body = json.dumps([{"id": "A1", "t": int(time.time() * 1000), "v": 1.5}]).encode()
            self.send_response(200)
        else:
            body = (f"denied {self.path} auth={self.headers.get('Authorization')} "
                    f"x={self.headers.get('X-Api-Key')}").encode()
            self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


CONFIG = """
flows:
  guarded:
    schedule: {{every: 1h}}
    key: id
    sources:
      - name: api
        kind: http
        url: "{url}/data"
        retries: 0
        headers_from_env: {{Authorization: UPSTREAM_TOKEN}}
        headers_from_file: {{X-Api-Key: {file}}}
        params_from_env: {{api_key: UPSTREAM_KEY}}
        fields: {{id: id, ts: t, value: v}}
        timestamp: {{format: epoch_ms}}
    fields:
      id: {{type: str, required: true}}
      value: {{type: float}}
"""


@pytest.fixture
def upstream():
    Upstream.calls = 0
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()
    srv.server_close()


def assert_clean(where: str, text: str) -> None:
    for s in SECRETS:
        assert s not in text, f"{where} carries a secret: {text[:2000]}"


async def test_a_configured_secret_never_leaves_the_process(tmp_path, upstream, monkeypatch,
                                                              capsys):
    monkeypatch.setenv("UPSTREAM_TOKEN", f"Bearer {TOKEN}")
    monkeypatch.setenv("UPSTREAM_KEY", API_KEY)
    (tmp_path / "xkey").write_text(FILE_SECRET + "\n")
    cfg_path = tmp_path / "flows.yaml"
    cfg_path.write_text(CONFIG.format(url=upstream, file=tmp_path / "xkey"))
    config = parse_config(cfg_path.read_text(), str(cfg_path))
    db = tmp_path / "s.db"
    out = io.StringIO()
    root = logging.getLogger()
    handler = logs.make_handler("json", out)
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.DEBUG)  # httpx logs each request's URL (with its query) at INFO
    store = Store(f"sqlite:///{db}")
    engine = Engine(config, store)
    feed = FeedServer(LocalControl(engine, actor="t"), host="127.0.0.1", port=0, token=None,
                      origins=[])
    try:
        await feed.start()
        await engine.start(schedule=False)
        c = await Client.open(feed.feed_url)
        await c.subscribe("events")
        first = await engine.run_flow("guarded", "manual")
        assert first.status == "ok" and Upstream.calls == 1
        second = await engine.run_flow("guarded", "manual")
        assert second.status == "failed" and "HTTP 401" in second.error
        assert "***" in second.error  # the echoed credentials were there, masked
        await asyncio.sleep(0.3)
        while True:  # every feed message so far
            try:
                await c.recv(timeout=0.3)
            except TimeoutError:
                break
        await c.close()
        _, _, metrics = await asyncio.to_thread(http_get, feed.url + "/metrics")
        st_a, _, actions = await asyncio.to_thread(http_get, feed.url + "/api/actions")
        st_f, _, flows = await asyncio.to_thread(http_get, feed.url + "/api/flows")
        assert st_a == st_f == 200
    finally:
        await feed.stop()
        await engine.stop()
        store.close()
        root.removeHandler(handler)
        root.setLevel(old_level)
    lines = out.getvalue().splitlines()
    assert any("HTTP Request" in json.loads(ln)["message"] for ln in lines)  # httpx's, parsed
    assert_clean("the log", out.getvalue())
    assert "HTTP 401" in json.dumps(c.seen)  # the failed fetch reached viewers, masked
    assert_clean("the feed", json.dumps(c.seen))
    assert_clean("/metrics", metrics.decode())
    assert_clean("the actions API", actions.decode())
    assert_clean("the flows API", flows.decode())
    assert_clean("the run error", json.dumps(second.as_dict()))
    capsys.readouterr()
    for argv in (["export", "guarded", "--format", "jsonl"], ["lineage", "1", "--json"],
                 ["actions", "--json"], ["issues", "list", "--json"], ["status", "--json"]):
        rc = main([*argv, "--config", str(cfg_path), "--db", f"sqlite:///{db}"])
        got = capsys.readouterr()
        assert rc in (0, 1, 2) and got.out.strip(), (argv, rc, got.err)
        assert_clean(" ".join(argv), got.out + got.err)


def test_credentials_written_inline_are_refused_with_their_line():
    text = """flows:
  f:
    key: id
    sources:
      - name: a
        kind: http
        url: "https://bob:hunter2@example.org/x?api_key=abc"
        headers: {Authorization: "Bearer abc"}
        params: {token: abc}
        fields: {id: id, ts: t}
    fields:
      id: {type: str}
"""
    with pytest.raises(ConfigError) as exc:
        parse_config(text, "flows.yaml")
    problems = [str(p) for p in exc.value.problems]
    assert any(p.startswith("flows.yaml:7: flows.f.sources[0].url: a password inline")
               for p in problems), problems
    assert any("flows.f.sources[0].headers.Authorization: a credential inline" in p
               for p in problems), problems
    assert any("flows.f.sources[0].params.token: a credential inline" in p for p in problems)
    assert sum("url" in p for p in problems) == 2
