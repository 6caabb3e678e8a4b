"""`flowdeck issues`, `actions` and `act`: quality issues and recovery actions in the
store, and an operator action sent to a running daemon over its feed."""

from __future__ import annotations

import asyncio
import json
import os
import sys

from flowdeck.console.cli import common
from flowdeck.console.cli.common import EXIT_ERROR, EXIT_OK, EXIT_USAGE, CliError
from flowdeck.pipeline.config import Config

# Actions that change nothing an operator would want to undo: no confirmation asked.
SAFE_ACTIONS = {"run_now", "resume", "ack_issue", "prewarm"}


def add_parsers(sub) -> None:
    p = sub.add_parser("issues", help="quality issues: list, ack, resolve, mute")
    common.add_common(p)
    p.add_argument("action", nargs="?", choices=("list", "ack", "resolve", "mute"),
                   default="list")
    p.add_argument("id", nargs="?", type=int, metavar="ID")
    p.add_argument("--flow")
    p.add_argument("--state", choices=("open", "acknowledged", "resolved", "muted"))
    p.add_argument("--for", dest="duration", default="1h", help="with mute: how long (1h)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_issues)

    p = sub.add_parser("actions", help="recovery actions (automatic and operator)")
    common.add_common(p)
    p.add_argument("--flow")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_actions)

    p = sub.add_parser(
        "act", help="an operator action on a running daemon (over its feed)",
        description="Send an operator action to a running daemon and print its result. "
                    "Actions: run_now, pause, resume, reset_breaker, force_failover (no "
                    "--source releases the pin), replay_quarantine, replay_raw, ack_issue, "
                    "resolve_issue, mute_issue, purge_cache (--flow, --key, --layer: a key, a "
                    "flow or everything; one layer or all), prewarm, and any other the daemon "
                    "offers (pass its "
                    "parameters with --param). Each is recorded as a recovery action by "
                    "operator:<actor>. All but run_now, resume, ack_issue and prewarm ask "
                    "for confirmation unless --yes.")
    p.add_argument("action", metavar="ACTION", help="the action's name, e.g. pause")
    p.add_argument("--flow", metavar="F")
    p.add_argument("--source", metavar="S", help="reset_breaker, force_failover")
    p.add_argument("--issue", type=int, metavar="N", help="ack_issue, resolve_issue, mute_issue")
    p.add_argument("--since", metavar="TS",
                   help="replay_raw: ISO-8601 time, a duration ago (2h), or epoch ms")
    p.add_argument("--key", metavar="K", help="purge_cache: one series key of --flow")
    p.add_argument("--layer", choices=("l1", "l2", "l3", "l4"),
                   help="purge_cache: only this layer (l1 memory, l2 redis, l3 database, "
                        "l4 http)")
    p.add_argument("--param", action="append", metavar="KEY=VALUE",
                   help="another parameter, repeatable (VALUE is read as JSON if it can be)")
    p.add_argument("--connect", metavar="ws://HOST:PORT",
                   help="the daemon's feed (default: the config's feed.bind)")
    p.add_argument("--token", metavar="T",
                   help="the feed token (default: the variable named by feed.token_env)")
    p.add_argument("--actor", metavar="NAME",
                   help="who is acting, recorded as operator:NAME (default: $USER)")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--json", action="store_true", help="print the whole result as JSON")
    p.add_argument("--config", metavar="F", help="config file (for feed.bind, feed.token_env)")
    p.set_defaults(fn=cmd_act)


def cmd_issues(args) -> int:
    from flowdeck.pipeline.serve.queries import iso

    config = common.config(args, from_store=True)
    store = common.store(args, config, create=False)
    try:
        if args.action in ("ack", "resolve", "mute"):
            if args.id is None:
                raise CliError(f"flowdeck issues {args.action} needs an issue ID", EXIT_USAGE)
            state = {"ack": "acknowledged", "resolve": "resolved", "mute": "muted"}[args.action]
            now = common.now_ms()
            until = None
            if args.action == "mute":
                from flowdeck.pipeline.core.durations import parse_duration

                until = now + int(parse_duration(args.duration) * 1000)
            row = store.set_issue_state(args.id, state, os.environ.get("USER", "operator"), now,
                                        until)
            if row is None:
                raise CliError(f"no issue with id {args.id}")
            print(f"issue {args.id}: {state}")
            return EXIT_OK
        rows = store.issues(flow=args.flow, state=args.state)
    finally:
        store.close()
    if args.json:
        common.print_json(rows)
        return EXIT_OK
    for r in rows:
        print(f"{r['id']:>5} {r['state']:<12} {r['severity']:<8} {r['flow']:<10} "
              f"x{r['count']:<4} {iso(r['last_ms'])}  {r['title']}")
    return EXIT_OK


def cmd_actions(args) -> int:
    from flowdeck.pipeline.serve.queries import iso

    config = common.config(args, from_store=True)
    store = common.store(args, config, create=False)
    try:
        rows = store.actions(flow=args.flow, limit=args.limit)
    finally:
        store.close()
    if args.json:
        common.print_json(rows)
        return EXIT_OK
    for r in rows:
        print(f"{iso(r['ts_ms'])} {r['flow'] or '-':<10} {r['source'] or '-':<10} "
              f"{r['action']:<16} {r['actor']:<10} {r['outcome']:<8} {r['reason']}")
    return EXIT_OK


def _action_params(args) -> dict:
    from flowdeck.pipeline.serve.queries import parse_since

    params: dict = {}
    if args.flow:
        params["flow"] = args.flow
    if args.source:
        params["source"] = args.source
    if args.issue is not None:
        params["issue_id"] = args.issue
    if args.key is not None:
        params["key"] = args.key
    if args.layer is not None:
        params["layer"] = args.layer
    if args.since:
        try:
            params["since_ms"] = parse_since(args.since, common.now_ms())
        except ValueError as exc:
            raise CliError(str(exc), EXIT_USAGE) from None
    for kv in args.param or []:
        key, sep, value = kv.partition("=")
        if not sep or not key:
            raise CliError(f"--param takes KEY=VALUE, got {kv!r}", EXIT_USAGE)
        try:
            params[key] = json.loads(value)
        except ValueError:
            params[key] = value
    return params


def _default_feed(config: Config) -> str:
    from flowdeck.pipeline.serve.access import FeedError, parse_bind

    try:
        host, port = parse_bind(config.feed.bind)
    except FeedError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"ws://{'[' + host + ']' if ':' in host else host}:{port}"


def cmd_act(args) -> int:
    """An operator action on a running daemon, over its feed; printed result, exit 0/1."""
    import re

    from flowdeck.console.client.remote import RemoteError

    config = common.config(args)
    params = _action_params(args)
    what = " ".join([args.action] + [f"{k}={v}" for k, v in params.items()])
    if args.action not in SAFE_ACTIONS and not args.yes:
        if not sys.stdin.isatty():
            raise CliError(f"{what}: confirm with --yes (no terminal to ask on)", EXIT_USAGE)
        if input(f"{what}? [y/N] ").strip().lower() not in ("y", "yes"):
            print("flowdeck: cancelled", file=sys.stderr)
            return EXIT_ERROR
    url = args.connect or _default_feed(config)
    token = common.feed_token(args, config)
    actor = args.actor or os.environ.get("USER") or "cli"
    actor = re.sub(r"[^A-Za-z0-9_.@-]", "_", actor)[:64]
    try:
        result = asyncio.run(_act_remote(url, token, args.action, params, actor))
    except RemoteError as exc:
        raise CliError(str(exc)) from None
    if args.json:
        common.print_json(result)
    else:
        print(result.get("message") or json.dumps(result, default=str))
    return EXIT_OK if result.get("ok", True) else EXIT_ERROR


async def _act_remote(url: str, token: str | None, name: str, params: dict, actor: str) -> dict:
    from flowdeck.console.client.remote import REQUEST_TIMEOUT, RemoteError, feed_url, open_feed

    url = feed_url(url)
    ws = await open_feed(url, token)
    try:
        async def answer() -> dict:
            async for raw in ws:
                msg = json.loads(raw)
                data = msg.get("data") or {}
                if msg.get("type") == "hello":
                    await ws.send(json.dumps({"type": "action", "id": 1, "name": name,
                                              "params": params, "actor": actor}, default=str))
                elif msg.get("type") == "result" and data.get("id") == 1:
                    return data.get("result") or {}
                elif msg.get("type") == "error" and data.get("id") in (1, None):
                    raise CliError(data.get("message") or "the daemon refused the action")
            raise RemoteError(f"{url}: the daemon closed the connection before answering")

        try:
            return await asyncio.wait_for(answer(), REQUEST_TIMEOUT["action"])
        except TimeoutError:
            raise RemoteError(f"{url}: no answer to {name!r}") from None
    finally:
        await ws.close()
