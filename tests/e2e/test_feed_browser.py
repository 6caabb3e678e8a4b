"""The browser viewer page in headless Chromium, live from a real `flowdeck daemon`.

The daemon polls a folder of JSON-lines files every second. Once the page has
connected, the test drops a file with a station that exists nowhere yet: it can
only reach the page as a live delta over the websocket, so seeing it proves the
page updates without a reload.
"""

from __future__ import annotations

import json
import time

import pytest
from support.feed import Chromium, Daemon, http_get, need_tool, rows_for, write_config

pytestmark = pytest.mark.slow


@pytest.fixture
def daemon(tmp_path):
    cfg = write_config(tmp_path)
    cfg.write_text(cfg.read_text().replace("schedule: {every: 1h}", "schedule: {every: 1s}"))
    (tmp_path / "bench" / "00001.jsonl").write_text(
        "\n".join(json.dumps(r) for r in rows_for(["KAAA", "KBBB"]))
    )
    d = Daemon(["--config", str(cfg), "--db", f"sqlite:///{tmp_path / 'd.db'}"])
    d.wait_ready()
    yield d
    assert "Traceback" not in d.stop()


def feed_clients(url: str) -> float:
    body = http_get(url + "/metrics")[2].decode()
    line = next(ln for ln in body.splitlines() if ln.startswith("flowdeck_feed_clients "))
    return float(line.split()[1])


async def test_viewer_page_shows_flows_and_live_records(daemon, tmp_path):
    chromium = Chromium(need_tool("chromium", "chromium"), tmp_path / "profile")
    try:
        await chromium.open(daemon.url + "/")
        assert await chromium.wait_for(
            "document.getElementById('status').textContent === 'connected'"
        )
        flows = await chromium.wait_for(
            "[...document.querySelectorAll('#flows tbody tr')].map(r => r.dataset.flow)"
            ".sort().join(',')"
        )
        assert flows == "bench,other"
        # The first run's records, from the snapshot or a delta, whichever came first.
        await chromium.wait_for("!!document.querySelector('#records-bench tr[data-key=KBBB]')")
        await chromium.evaluate("window.__loadedOnce = true")
        deadline = time.time() + 10
        while feed_clients(daemon.url) < 1 and time.time() < deadline:
            time.sleep(0.1)
        (tmp_path / "bench" / "00002.jsonl").write_text(
            "\n".join(json.dumps(r) for r in rows_for(["LIVE"]))
        )
        cells = await chromium.wait_for(
            "(() => { const r = document.querySelector('#records-bench tr[data-key=LIVE]');"
            " return r && [...r.children].map(c => c.textContent); })()"
        )
        head = await chromium.evaluate(
            "[...document.querySelectorAll('#records-bench th')].map(c => c.textContent)"
        )
        row = dict(zip(head, cells, strict=True))
        assert row["key"] == "LIVE" and row["temperature"] == "10" and row["pressure"] == "1000"
        assert await chromium.evaluate("window.__loadedOnce === true")  # no reload happened
        assert int(await chromium.evaluate("document.getElementById('updates').textContent")) >= 1
        stored = await chromium.wait_for(
            "document.querySelector('#flows tr[data-flow=bench]').children[4].textContent"
            " === '3' && 'three stored'"
        )
        assert stored == "three stored"  # the flow row follows the runs live too
    finally:
        await chromium.close()
