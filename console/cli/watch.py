"""`flowdeck watch`: a daemon's feed printed as JSON lines, one envelope per line."""

from __future__ import annotations

import asyncio
import json
import os
import signal

from flowdeck.console.cli import common
from flowdeck.console.cli.common import EXIT_OK, EXIT_USAGE, CliError


def add_parsers(sub) -> None:
    p = sub.add_parser("watch", help="print a daemon's feed as JSON lines")
    p.add_argument("url", metavar="ws://HOST:PORT")
    p.add_argument("--channel", action="append", metavar="C",
                   help="channel to subscribe to, repeatable (default: events); flows, "
                        "flow:<flow>, records:<flow>, quality, recovery, caches, metrics, "
                        "events")
    p.add_argument("--token", metavar="T",
                   help="the feed token (default: the variable named by feed.token_env)")
    p.add_argument("--resume-from", type=int, metavar="SEQ",
                   help="resume every channel after this seq (replayed if still buffered)")
    p.add_argument("--count", type=int, metavar="N",
                   help="exit after N snapshots and deltas")
    p.add_argument("--heartbeats", action="store_true", help="print heartbeats too")
    p.add_argument("--config", metavar="F", help="config file (for feed.token_env)")
    p.set_defaults(fn=cmd_watch)


def cmd_watch(args) -> int:
    """Print the feed as JSON lines, one envelope per line, until interrupted."""
    from flowdeck.console.client.remote import RemoteError

    # The config is read only when it is needed for feed.token_env.
    token = args.token or os.environ.get(common.config(args).feed.token_env) or None
    try:
        return asyncio.run(_watch(args, token))
    except RemoteError as exc:
        raise CliError(str(exc)) from None


async def _watch(args, token: str | None) -> int:
    from websockets.exceptions import ConnectionClosed

    from flowdeck.console.client.remote import RemoteError, describe_close, feed_url, open_feed

    url = feed_url(args.url)
    channels = args.channel or ["events"]
    ws = await open_feed(url, token)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ids = {}
    printed = 0

    async def read() -> int:
        nonlocal printed
        async for raw in ws:
            msg = json.loads(raw)
            data = msg.get("data") or {}
            if msg.get("type") == "hello":
                for i, ch in enumerate(channels, 1):
                    ids[i] = ch
                    req = {"type": "subscribe", "id": i, "channel": ch}
                    if args.resume_from is not None:
                        req.update(resume_from=args.resume_from)
                    await ws.send(json.dumps(req))
            if msg.get("type") == "error" and data.get("id") in ids:
                raise CliError(f"cannot watch {ids[data['id']]!r}: {data.get('message')}",
                               EXIT_USAGE)
            if msg.get("type") == "heartbeat" and not args.heartbeats:
                continue
            print(raw if isinstance(raw, str) else raw.decode(), flush=True)
            printed += msg.get("type") in ("snapshot", "delta")
            if args.count and printed >= args.count:
                return EXIT_OK
        if ws.close_code in (1000, 1001):
            return EXIT_OK
        raise RemoteError(f"{url}: {describe_close(ws.close_code, ws.close_reason)}")

    reader = asyncio.create_task(read())
    stopper = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if reader in done:
            try:
                return reader.result()
            except ConnectionClosed:
                raise RemoteError(f"{url}: {describe_close(ws.close_code, ws.close_reason)}"
                                  ) from None
        return EXIT_OK
    finally:
        reader.cancel()
        stopper.cancel()
        await ws.close()
