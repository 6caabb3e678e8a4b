"""`flowdeck daemon`: the headless engine, with the websocket feed and HTTP API it serves.

`run_daemon` is also the engine of `flowdeck demo --headless`. Nothing here imports the
console's app, screens or widgets (nor Textual): a daemon runs without them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from datetime import UTC, datetime

from flowdeck.console.cli import common
from flowdeck.console.cli.common import EXIT_ERROR, EXIT_OK, EXIT_USAGE, CliError
from flowdeck.pipeline.config import Config
from flowdeck.pipeline.core import logs


def add_parsers(sub) -> None:
    p = sub.add_parser("daemon", help="headless engine")
    common.add_common(p)
    common.add_sim(p)
    p.add_argument("--once", action="store_true", help="run every flow once and exit")
    p.add_argument("--json", action="store_true", help="print JSON (a summary per flow)")
    p.add_argument("--bind", metavar="HOST:PORT",
                   help="serve the websocket feed and HTTP API here (default: the config's "
                        "feed.bind, 127.0.0.1:8765; port 0 picks a free one)")
    p.add_argument("--token", metavar="T",
                   help="token viewers must present (default: the variable named by the "
                        "config's feed.token_env, FLOWDECK_TOKEN); required off loopback")
    p.add_argument("--redis", metavar="URL",
                   help="Redis shared by the daemons of a deployment: L2 cache, invalidations "
                        "and event fan-out (sets the config's cache.redis_url)")
    p.add_argument("--log-events", action="store_true", help=argparse.SUPPRESS)  # console's
    p.add_argument("--node", metavar="NAME",
                   help="this daemon's name in a cluster (PostgreSQL only: each flow runs on "
                        "the one node holding its lease; default: HOSTNAME-PID)")
    p.set_defaults(fn=cmd_daemon)


log = logging.getLogger("flowdeck.daemon")


def cmd_daemon(args) -> int:
    """Exit codes: 0 stopped by SIGTERM/SIGINT (or --once with no flow failed), 1 an
    error (the store unreachable or refused, the feed's port taken, a --once run failed),
    2 a usage or config error. SIGHUP re-reads the config: a bad one is refused (each
    problem logged as file:line: field: problem) and the running one goes on; a good one
    is applied by re-executing the daemon in place (same PID, as systemd expects of
    a reload), after a graceful stop."""
    config = with_redis(common.config(args), getattr(args, "redis", None))
    common.check_scenario(args.scenario)
    args.serve_feed = True
    args.reexec = False
    rc = asyncio.run(run_daemon(args, config, live_log=False))
    if args.reexec:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, [sys.executable, "-m", "flowdeck.console.cli", *sys.argv[1:]])
    return rc


def config_path(args) -> str:
    from flowdeck.pipeline.config import BUNDLED_CONFIG

    return str(getattr(args, "config", None) or os.environ.get("FLOWDECK_CONFIG")
               or BUNDLED_CONFIG)


async def reload_config(args, stop: asyncio.Event) -> bool:
    """SIGHUP: validate the config file again; True (and ``stop`` set, ``args.reexec``)
    if it is good, False with every problem logged if not."""
    from flowdeck.pipeline.config import ConfigError, load_config
    from flowdeck.pipeline.core import sdnotify

    path = config_path(args)
    try:
        await asyncio.to_thread(load_config, path)
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("config reload refused: %s", problem)
        log.error("config reload refused: %d problem(s) in %s; the running config stays",
                  len(exc.problems), path)
        sdnotify.notify(STATUS=f"reload refused: {len(exc.problems)} problem(s) in {path}")
        return False
    log.warning("config %s is valid: restarting in place to apply it", path)
    sdnotify.notify(RELOADING=1, STATUS="reloading the config")
    args.reexec = True
    stop.set()
    return True


async def _watchdog(interval: float) -> None:
    """WATCHDOG=1 while the event loop turns (a hung loop stops the pings)."""
    from flowdeck.pipeline.core import sdnotify

    while True:
        sdnotify.notify(WATCHDOG=1)
        await asyncio.sleep(interval)


def format_run(s: dict) -> str:
    """One line for a run summary: flow, run, status, duration, the stage chain, extras."""
    st = s["stages"]
    chain = " > ".join(f"{k} {v['out']}" for k, v in st.items())
    extra = []
    if s["quarantined"]:
        extra.append(f"{s['quarantined']} quarantined")
    if s["conflicts"]:
        extra.append(f"{s['conflicts']} conflicts")
    if s["anomalies"]:
        extra.append(f"{s['anomalies']} anomalies")
    if s.get("buffered"):
        extra.append(f"{s['buffered']} buffered (store unavailable)")
    errs = [f"{n}: {i['error']}" for n, i in s["sources"].items() if "error" in i]
    if errs:
        extra.append("errors: " + "; ".join(errs))
    return (f"{s['flow']:<10} run {s['run_id']} {s['status']:<7} {s['duration_ms']:>5} ms  "
            f"{chain}" + (f"  [{', '.join(extra)}]" if extra else ""))


def with_redis(config: Config, url: str | None) -> Config:
    """The config with cache.redis_url set to --redis, if given."""
    if not url:
        return config
    return config.model_copy(update={"cache": config.cache.model_copy(
        update={"redis_url": url})})


def fanout(args, config: Config):
    """Event fan-out through the config's Redis (cache.redis_url), or None without one."""
    from flowdeck.pipeline.serve.fanout import Fanout
    from flowdeck.pipeline.serve.feed import FeedLimits

    url = config.cache.redis_url
    if not url:
        return None
    import socket

    node = (getattr(args, "node", None) or os.environ.get("FLOWDECK_NODE")
            or f"{socket.gethostname()}-{os.getpid()}")
    limits = FeedLimits()
    return Fanout(url, f"{config.cache.namespace}:feed:", node=str(node),
                  maxlen=limits.replay_messages, max_bytes=limits.replay_bytes)


def feed_server(args, config: Config, engine):
    """The feed and HTTP API for `flowdeck daemon` (FeedError if the bind needs a token)."""
    from flowdeck.pipeline.serve.access import FeedError, parse_bind
    from flowdeck.pipeline.serve.control import LocalControl
    from flowdeck.pipeline.serve.feed import FeedServer

    token = common.feed_token(args, config)
    try:
        host, port = parse_bind(args.bind or config.feed.bind)
        return FeedServer(LocalControl(engine, actor=os.environ.get("USER") or "operator"),
                          host=host, port=port, token=token, origins=config.feed.origins,
                          caches=engine.caches, fanout=fanout(args, config))
    except FeedError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


async def run_daemon(args, config: Config, *, live_log: bool) -> int:
    """The engine until SIGTERM/SIGINT (or one run of every flow with --once), printing
    runs (and with `live_log` issues and quarantines) as they happen; the feed too when
    `args.serve_feed`."""
    from flowdeck.pipeline.core import sdnotify
    from flowdeck.pipeline.engine.engine import Engine
    from flowdeck.pipeline.serve.access import FeedError

    store = common.store(args, config)
    engine = Engine(config, store, **common.engine_kwargs(args))
    if store.dialect == "postgresql" and hasattr(args, "node"):  # flowdeck daemon: a node
        from flowdeck.pipeline.engine.cluster import join_cluster

        join_cluster(engine, args.node)
    if getattr(args, "log_events", False):  # a console's engine: warnings reach its Events
        logging.getLogger().addHandler(logs.protect(HubLogHandler(engine)))
    feed = None
    if getattr(args, "serve_feed", False) and not args.once:
        try:
            feed = feed_server(args, config, engine)
        except CliError:
            store.close()
            raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task] = set()
    if not args.once and hasattr(args, "reexec"):  # flowdeck daemon (not demo --headless)
        def on_hup() -> None:
            task = loop.create_task(reload_config(args, stop))
            reloads.add(task)
            task.add_done_callback(reloads.discard)
        loop.add_signal_handler(signal.SIGHUP, on_hup)
    sub = engine.hub.subscribe(types={"run_finished", "issue", "quarantine", "log", "fetch"})
    try:
        if feed is not None:  # before the engine starts, so the feed sees every event
            try:
                await feed.start()
            except FeedError as exc:
                feed = None
                raise CliError(str(exc)) from None
            print(f"flowdeck: feed on {feed.feed_url}, HTTP API and viewer on {feed.url}/",
                  file=sys.stderr, flush=True)
            if engine.cluster is not None:  # the other nodes' status shows where it is
                engine.cluster.info["url"] = feed.url
        await engine.start(schedule=not args.once)
        if args.once:
            summaries = await engine.run_all_once()
            if args.json:
                common.print_json({"flows": {s.flow: s.as_dict() for s in summaries}})
            else:
                for s in summaries:
                    print(format_run(s.as_dict()))
            failed = any(s.status == "failed" for s in summaries)
            return EXIT_ERROR if failed else EXIT_OK
        printer = asyncio.create_task(_print_events(sub, args.json, live_log))
        sdnotify.notify(READY=1, STATUS=f"running {len(config.flows)} flow(s)"
                        + (f", feed on {feed.url}" if feed is not None else ""))
        interval = sdnotify.watchdog_interval()
        dog = asyncio.create_task(_watchdog(interval)) if interval else None
        await stop.wait()
        sdnotify.notify(STOPPING=1, STATUS="stopping")
        printer.cancel()
        if dog is not None:
            dog.cancel()
        return EXIT_OK
    finally:
        if feed is not None:
            await feed.stop()
        await engine.stop()
        store.close()


async def _print_events(sub, as_json: bool, verbose: bool) -> None:
    while True:
        ev = await sub.get()
        if as_json:
            print(json.dumps(ev.as_dict(), default=str), flush=True)
            continue
        t = datetime.fromtimestamp(ev.ts, tz=UTC).strftime("%H:%M:%S")
        if ev.type == "run_finished":
            print(f"{t} {format_run(ev.data)}", flush=True)
        elif ev.type == "issue" and verbose:
            print(f"{t} {ev.flow:<10} issue [{ev.data['severity']}] {ev.data['title']}",
                  flush=True)
        elif ev.type == "quarantine" and verbose:
            print(f"{t} {ev.flow:<10} quarantine {ev.data['source']} {ev.data['reason']}: "
                  f"{ev.data['message'][:100]}", flush=True)
        elif ev.type == "fetch" and not ev.data.get("ok"):
            print(f"{t} {ev.flow:<10} fetch {ev.data['source']} failed: {ev.data['error']}",
                  flush=True)
        elif ev.type == "log":
            print(f"{t} {ev.data['message']}", flush=True)


class HubLogHandler(logging.Handler):
    """Log records become `log` events on the engine's hub (shown on the Events screen)."""

    def __init__(self, engine) -> None:
        super().__init__(logging.WARNING)
        self.engine = engine

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.engine.emit("log", None, message=f"{record.levelname.lower()}: "
                                                  f"{record.getMessage()}"[:500])
        except Exception:  # logging must never break the caller
            self.handleError(record)
