"""Alert webhooks: a real HTTP receiver on loopback; retried, recorded, never blocking a run."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from flowdeck.pipeline.config import BUNDLED_CONFIG, parse_config
from flowdeck.pipeline.engine.engine import Engine


class Receiver:
    """A webhook endpoint: answers the first `fail_first` requests with 500, waits `delay`."""

    def __init__(self, fail_first: int = 0, delay: float = 0.0) -> None:
        self.received: list[dict] = []
        self.requests = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests += 1
                time.sleep(delay)
                if receiver.requests <= fail_first:
                    self.send_response(500)
                    self.end_headers()
                    return
                receiver.received.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def config_with_hooks(url: str):
    text = BUNDLED_CONFIG.read_text() + (
        f"\nalerts:\n  webhooks: {{warning: \"{url}\", error: \"{url}\"}}\n"
        "  backoff: 10ms\n  retries: 2\n  timeout: 2s\n")
    return parse_config(text, str(BUNDLED_CONFIG))


@pytest.fixture
def receiver():
    r = Receiver(fail_first=1, delay=0.3)
    yield r
    r.close()


async def test_new_issues_are_posted_retried_and_recorded(sqlite_store, clock, receiver):
    engine = Engine(config_with_hooks(receiver.url), sqlite_store, clock=clock, seed=7)
    await engine.start(schedule=False)
    try:
        summary = await engine.run_flow("weather")
        # The run does not wait for the webhook (it answers slowly and fails once first).
        assert summary.issues_opened >= 1
        assert receiver.received == []
        await engine.alerter.drain()
        await engine.run_flow("weather")  # the same conflict recurs: no second alert for it
        await engine.alerter.drain()
    finally:
        await engine.stop()
    kinds = [a["kind"] for a in receiver.received]
    assert "conflict" in kinds
    conflict = next(a for a in receiver.received if a["kind"] == "conflict")
    assert conflict["flow"] == "weather" and "KDEN" in conflict["title"]
    assert kinds.count("conflict") == len({a["fingerprint"] for a in receiver.received
                                           if a["kind"] == "conflict"})
    alerts = [a for a in sqlite_store.actions("weather") if a["action"] == "alert"]
    assert alerts and all(a["actor"] == "auto" for a in alerts)
    assert any(a["outcome"] == "ok" and "2 attempt(s)" in a["reason"] for a in alerts)


async def test_an_unreachable_webhook_is_recorded_as_failed(sqlite_store, clock):
    dead = Receiver()
    url = dead.url
    dead.close()  # nothing listens there any more
    engine = Engine(config_with_hooks(url), sqlite_store, clock=clock, seed=7)
    await engine.start(schedule=False)
    try:
        summary = await engine.run_flow("weather")
        assert summary.status == "ok"
        await engine.alerter.drain()
    finally:
        await engine.stop()
    alerts = [a for a in sqlite_store.actions("weather") if a["action"] == "alert"]
    assert alerts and all(a["outcome"] == "failed" for a in alerts)
    assert "3 attempt(s)" in alerts[0]["reason"]
