"""`flowdeck console --web`: the console in a browser (textual-serve), for real.

The command runs as a user would start it, on a free loopback port, with its own
engine (the bundled demo flows on the in-process simulator). The page is fetched
over HTTP, then opened in headless Chromium: the console's frames reach the page
and its terminal draws them, and a key pressed in the page switches the screen.
textual-serve draws on a canvas, so the test reads the text from the frames the
page receives (a small wrapper around the page's WebSocket, installed before the
page's own script runs) and keeps a screenshot in tmp_path to look at.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from support.feed import Chromium, free_port, http_get, need_tool

pytestmark = pytest.mark.slow

FLOWDECK = [sys.executable, "-m", "flowdeck.console.cli"]

# Keeps what the page's websocket receives, as text, in window.__frames.
CAPTURE = """(() => {
  const Real = window.WebSocket, dec = new TextDecoder();
  window.__frames = [];
  function Capturing(...args) {
    const ws = new Real(...args);
    ws.addEventListener('message', (e) => {
      const d = e.data;
      if (typeof d === 'string') window.__frames.push(d);
      else if (d instanceof ArrayBuffer) window.__frames.push(dec.decode(d));
      else if (d && d.arrayBuffer) d.arrayBuffer().then((b) => window.__frames.push(dec.decode(b)));
    });
    return ws;
  }
  Capturing.prototype = Real.prototype;
  for (const k of ['CONNECTING', 'OPEN', 'CLOSING', 'CLOSED']) Capturing[k] = Real[k];
  window.WebSocket = Capturing;
})()"""


@pytest.fixture
def web_console(tmp_path):
    port = free_port()
    log = open(tmp_path / "web.log", "w")  # noqa: SIM115 - the server's output, kept for failures
    proc = subprocess.Popen(
        FLOWDECK + ["console", "--web", f"127.0.0.1:{port}",
                    "--db", f"sqlite:///{tmp_path / 'web.db'}"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            if http_get(url + "/")[0] == 200:
                break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail("the web console did not start:\n" + (tmp_path / "web.log").read_text())
        time.sleep(0.2)
    yield url
    running = (tmp_path / "web.log").read_text()
    assert "Traceback" not in running, running  # nothing went wrong while it served
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    finally:
        log.close()
    out = (tmp_path / "web.log").read_text()[len(running):]
    # At exit, asyncio may report a subprocess transport collected after textual-serve
    # closed its loop ("Exception ignored in ...: Event loop is closed"): third-party
    # shutdown noise, not an error of the console. Anything else fails the test.
    noise = re.compile(r"Exception ignored in: .*?RuntimeError: Event loop is closed\n?", re.S)
    assert "Traceback" not in noise.sub("", out), out


def test_web_console_serves_its_page(web_console):
    status, headers, body = http_get(web_console + "/")
    page = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    ws = web_console.replace("http://", "ws://") + "/ws"
    assert ws in page  # the page drives the console over this websocket
    assert "textual.js" in page
    assert http_get(web_console + "/static/js/textual.js")[0] == 200


async def test_web_console_shows_the_console_in_chromium(web_console, tmp_path):
    chromium = Chromium(need_tool("chromium", "chromium"), tmp_path / "profile")
    try:
        await chromium.open("about:blank")
        await chromium.call("Page.enable")
        await chromium.call("Page.addScriptToEvaluateOnNewDocument", source=CAPTURE)
        await chromium.call("Page.navigate", url=web_console + "/?fontsize=12")
        frames = "window.__frames.join('')"
        # The console's first screen, and live flows from its engine once they ran.
        await chromium.wait_for(f"{frames}.includes('▸ Overview')", timeout=60)
        await chromium.wait_for(f"{frames}.includes('weather') && {frames}.includes('healthy')",
                                timeout=60)
        # The terminal in the page drew them (textual-serve marks its first bytes).
        assert await chromium.evaluate("document.body.classList.contains('-first-byte')")
        # A key typed into the page reaches the console: 4 is the Caches screen.
        seen = await chromium.evaluate(f"{frames}.length")
        await chromium.evaluate("document.querySelector('.xterm-helper-textarea').focus()")
        await chromium.call("Input.insertText", text="4")
        await chromium.wait_for(f"{frames}.slice({seen}).includes('▸ Caches')", timeout=30)
        await asyncio.sleep(1.0)
        shot = await chromium.call("Page.captureScreenshot", format="png")
        (tmp_path / "web-console.png").write_bytes(base64.b64decode(shot["data"]))
    finally:
        await chromium.close()


def test_web_console_refuses_a_public_address(tmp_path):
    res = subprocess.run(FLOWDECK + ["console", "--web", "0.0.0.0:8000",
                                     "--db", f"sqlite:///{tmp_path / 'x.db'}"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert res.stderr.strip().startswith("flowdeck: --web 0.0.0.0:8000: the web console has "
                                         "no login of its own")
    assert len(res.stderr.strip().splitlines()) == 1
