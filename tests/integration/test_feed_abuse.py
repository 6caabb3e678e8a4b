"""Feed and API abuse (issue 15, item 4): who gets in, floods, trickled headers.

A real engine and feed on loopback, real websocket clients (``websockets``) and real HTTP
(``httpx``). The Origin x token x Host matrix lists every case with what must happen:
each wrong one is refused, each right one accepted, on the feed and on the HTTP API.
The stalled-viewer (conflation then 1008) and oversize (1009) cases live in
test_feed_security.py and test_feed_protocol.py; this file adds what they do not cover.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import pytest
from support.feed import Client, rows_for, start_rig
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from flowdeck.pipeline.serve.feed import FeedLimits

TOKEN = "matrix-token-0123456789"
ALLOWED = "https://dash.example"


async def ws_outcome(
    port: int,
    *,
    host: str | None = None,
    origin: str | None = None,
    bearer: str | None = None,
    query: str = "",
) -> str:
    """What a websocket client gets: 'hello', 'http <status>' or 'close <code>'.

    ``host`` names the server in the URL (so in the Host header) while the socket still
    goes to 127.0.0.1: the way a DNS-rebinding page or a spoofing client reaches it.
    """
    name = host or f"127.0.0.1:{port}"
    sock = socket.create_connection(("127.0.0.1", port))
    headers = {"Authorization": f"Bearer {bearer}".strip()} if bearer is not None else None
    try:
        async with connect(
            f"ws://{name}/feed{query}",
            sock=sock,
            origin=origin,
            additional_headers=headers,
            open_timeout=5,
        ) as ws:
            try:
                m = json.loads(await asyncio.wait_for(ws.recv(), 5))
            except ConnectionClosed:
                return f"close {ws.close_code}"
            return m["type"]
    except InvalidStatus as exc:
        return f"http {exc.response.status_code}"


async def http_outcome(
    port: int,
    path: str = "/api/flows",
    *,
    host: str | None = None,
    origin: str | None = None,
    bearer: str | None = None,
    query: str = "",
) -> int:
    headers = {}
    if host is not None:
        headers["Host"] = host
    if origin is not None:
        headers["Origin"] = origin
    if bearer is not None:
        headers["Authorization"] = f"Bearer {bearer}".strip()
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.get(f"http://127.0.0.1:{port}{path}{query}", headers=headers)
    if r.status_code in (401, 403, 400):
        assert r.json()["error"], r.text  # every refusal says why, in JSON
    return r.status_code


# (case, kwargs, feed outcome, HTTP status): a token configured, one allowed Origin.
TOKEN_MATRIX = [
    ("no token", {}, "close 4401", 401),
    ("wrong token in header", {"bearer": "wrong"}, "close 4401", 401),
    ("token prefix", {"bearer": TOKEN[:-1]}, "close 4401", 401),
    ("token plus a byte", {"bearer": TOKEN + "x"}, "close 4401", 401),
    ("empty bearer", {"bearer": ""}, "close 4401", 401),
    ("wrong token in query", {"query": "?token=wrong"}, "close 4401", 401),
    ("empty token in query", {"query": "?token="}, "close 4401", 401),
    # The header wins over the query string: a wrong header is not rescued by a URL.
    ("wrong header, right query", {"bearer": "wrong", "query": f"?token={TOKEN}"},
     "close 4401", 401),
    ("right token in header", {"bearer": TOKEN}, "hello", 200),
    ("right token in query", {"query": f"?token={TOKEN}"}, "hello", 200),
    ("right token, allowed Origin", {"bearer": TOKEN, "origin": ALLOWED}, "hello", 200),
    ("right token, foreign Origin", {"bearer": TOKEN, "origin": "https://evil.example"},
     "http 403", 403),
    ("right token, Origin null", {"bearer": TOKEN, "origin": "null"}, "http 403", 403),
    ("right token, look-alike Origin",
     {"bearer": TOKEN, "origin": "https://dash.example.evil.com"}, "http 403", 403),
    ("right token, look-alike localhost Origin",
     {"bearer": TOKEN, "origin": "http://localhost.evil.com"}, "http 403", 403),
    ("right token, allowed host over another scheme",
     {"bearer": TOKEN, "origin": "http://dash.example"}, "http 403", 403),
    ("no token, allowed Origin", {"origin": ALLOWED}, "close 4401", 401),
]

# A loopback feed without a token: Host must be a loopback name, Origin the page's own.
LOOPBACK_MATRIX = [
    ("loopback, no Origin", {}, "hello", 200),
    ("Host localhost", {"host": "localhost:{port}"}, "hello", 200),
    ("Host [::1]", {"host": "[::1]:{port}"}, "hello", 200),
    ("same-origin page", {"origin": "http://127.0.0.1:{port}"}, "hello", 200),
    ("Host localhost.evil.com", {"host": "localhost.evil.com:{port}"}, "http 403", 403),
    ("Host 127.0.0.1.nip.io", {"host": "127.0.0.1.nip.io:{port}"}, "http 403", 403),
    ("Host attacker.example", {"host": "attacker.example"}, "http 403", 403),
    ("rebinding: Host and Origin agree on a foreign name",
     {"host": "evil.example:{port}", "origin": "http://evil.example:{port}"}, "http 403", 403),
    ("Origin null", {"origin": "null"}, "http 403", 403),
    ("another local site's Origin", {"origin": "http://localhost:1"}, "http 403", 403),
    ("look-alike Origin", {"origin": "http://localhost.evil.com"}, "http 403", 403),
    # Same host and port behind a TLS-terminating proxy: still this server's own page.
    ("same-origin page over https", {"origin": "https://127.0.0.1:{port}"}, "hello", 200),
]


def _fill(kw: dict, port: int) -> dict:
    return {k: (v.format(port=port) if isinstance(v, str) else v) for k, v in kw.items()}


async def _run_matrix(port: int, matrix) -> None:
    wrong = []
    for case, kw, feed_expected, http_expected in matrix:
        kw = _fill(kw, port)
        feed_got = await ws_outcome(port, **kw)
        http_got = await http_outcome(port, **kw)
        if feed_got != feed_expected or http_got != http_expected:
            wrong.append((case, feed_got, http_got, feed_expected, http_expected))
    assert not wrong, "\n".join(
        f"{c}: feed {fg} (want {fe}), http {hg} (want {he})" for c, fg, hg, fe, he in wrong
    )
    refused = sum(1 for _, _, f, h in matrix if f != "hello")
    print(f"matrix: {len(matrix)} cases, {refused} refused on feed and API, "
          f"{len(matrix) - refused} accepted")


async def test_origin_token_matrix_with_a_token(tmp_path):
    rig = await start_rig(tmp_path, token=TOKEN, origins=[ALLOWED])
    try:
        await _run_matrix(rig.feed.port, TOKEN_MATRIX)
        # The probes stay open to anyone who passes the Origin check, token or not.
        assert await http_outcome(rig.feed.port, "/healthz") == 200
        assert await http_outcome(rig.feed.port, "/healthz", origin="null") == 403
    finally:
        await rig.close()


async def test_origin_host_matrix_on_loopback_without_a_token(tmp_path):
    rig = await start_rig(tmp_path)
    try:
        await _run_matrix(rig.feed.port, LOOPBACK_MATRIX)
    finally:
        await rig.close()


async def test_repeated_host_or_origin_headers_are_refused(tmp_path):
    rig = await start_rig(tmp_path)
    port = rig.feed.port
    try:
        for extra in (b"Host: evil.example\r\n", b"Origin: null\r\nOrigin: null\r\n"):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /api/flows HTTP/1.1\r\nHost: 127.0.0.1\r\n" + extra + b"\r\n")
            await writer.drain()
            head = await asyncio.wait_for(reader.read(4096), 5)
            writer.close()
            assert head.startswith(b"HTTP/1.1 400"), head[:80]
    finally:
        await rig.close()


async def test_a_flood_from_one_client_is_rate_limited_and_others_keep_their_order(tmp_path):
    limits = FeedLimits(inbound_rate=20, inbound_burst=40)
    rig = await start_rig(tmp_path, limits=limits)
    try:
        calm = await Client.open(rig.ws_url)
        _, snap = await calm.subscribe("records:bench")
        flooder = await Client.open(rig.ws_url)

        async def flood() -> int:
            sent = 0
            try:
                for _ in range(5000):
                    await flooder.ws.send('{"type":"ping"}')
                    sent += 1
            except ConnectionClosed:
                pass
            return sent

        flooding = asyncio.create_task(flood())
        keys = [f"K{i:03d}" for i in range(20)]
        t0 = int(time.time() * 1000) // 60_000 * 60_000 - 100 * 60_000
        for i in range(5):
            await rig.ingest("bench", rows_for(keys, t0_ms=t0 + i * 60_000))
        sent = await flooding
        # The calm viewer got every delta, in seq order, and still gets answers.
        seqs = []
        while len(seqs) < 5:
            seqs.append((await calm.expect("delta", "records:bench", timeout=10))["seq"])
        assert seqs == list(range(snap["seq"] + 1, snap["seq"] + 6))
        pid = await calm.send(type="ping")
        assert (await calm.expect("pong", where=lambda m: m["data"]["id"] == pid))
        # The flooder was told, then closed with 1008 and the reason.
        types = []
        with pytest.raises(ConnectionClosed):
            while True:
                types.append((await flooder.recv(timeout=10))["type"])
        errors = [m for m in flooder.seen if m["type"] == "error"]
        assert errors and {m["data"]["code"] for m in errors} == {"rate_limited"}
        assert types.count("pong") <= limits.inbound_burst + 5  # burst plus what refilled
        assert flooder.ws.close_code == 1008
        assert flooder.ws.close_reason.startswith("flooding")
        assert rig.feed.metrics.dropped["rate_limited"] >= limits.inbound_burst
        print(f"flood: {sent} sent, {types.count('pong')} answered, "
              f"{len(errors)} rate_limited errors, closed 1008")
        await calm.close()
    finally:
        await rig.close()


async def test_a_short_burst_is_answered_without_a_close(tmp_path):
    """A burst within the bucket is served in full: the limit is for floods, not bursts."""
    rig = await start_rig(tmp_path, limits=FeedLimits(inbound_rate=10, inbound_burst=30))
    try:
        c = await Client.open(rig.ws_url)
        for _ in range(30):
            await c.ws.send('{"type":"ping"}')
        for _ in range(30):
            await c.expect("pong")
        assert not [m for m in c.seen if m["type"] == "error"]
        await c.close()
    finally:
        await rig.close()


async def test_slowloris_headers_are_cut_off_while_others_are_served(tmp_path):
    rig = await start_rig(tmp_path, limits=FeedLimits(open_timeout_s=1.0))
    port = rig.feed.port
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        request = b"GET /api/flows HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200
        sent, answered = 0, 0
        cut = False
        async with httpx.AsyncClient(timeout=5) as client:
            for byte in request:  # one byte every 50 ms: 10 s for the request, never finished
                try:
                    writer.write(bytes([byte]))
                    await writer.drain()
                except (ConnectionError, OSError):
                    cut = True
                    break
                sent += 1
                if reader.at_eof():
                    cut = True
                    break
                if sent % 10 == 0:  # meanwhile, the server serves everyone else
                    r = await client.get(f"http://127.0.0.1:{port}/healthz")
                    assert r.status_code == 200
                    answered += 1
                await asyncio.sleep(0.05)
            if not cut:
                cut = await asyncio.wait_for(reader.read(1), 5) == b""
        writer.close()
        assert cut, "a client trickling its headers was never cut off"
        assert sent < len(request), "the whole trickled request was read"
        assert answered >= 1
        print(f"slowloris: cut after {sent} of {len(request)} bytes; "
              f"{answered} other requests served meanwhile")
    finally:
        await rig.close()


async def test_oversized_messages_close_1009_and_leave_other_viewers_alone(tmp_path):
    """Text, binary and fragmented messages past the limit (test_feed_protocol.py has the
    plain case); each closes only its own connection."""
    rig = await start_rig(tmp_path, limits=FeedLimits(max_inbound_bytes=4096))
    try:
        calm = await Client.open(rig.ws_url)
        _, snap = await calm.subscribe("records:bench")
        for message in ("x" * 5000, b"\x00" * 5000, iter(["x" * 3000, "y" * 3000])):
            c = await Client.open(rig.ws_url)
            await c.ws.send(message)
            with pytest.raises(ConnectionClosed):
                while True:
                    await c.recv()
            assert c.ws.close_code == 1009
        # Just under the limit is fine (answered with an error: not JSON), and the calm
        # viewer kept its subscription through all of it.
        c = await Client.open(rig.ws_url)
        await c.ws.send("x" * 4000)
        assert (await c.expect("error"))["data"]["code"] == "bad_json"
        await c.close()
        await rig.ingest("bench", rows_for(["K001"]))
        delta = await calm.expect("delta", "records:bench")
        assert delta["seq"] == snap["seq"] + 1
        await calm.close()
    finally:
        await rig.close()
