"""`flowdeck demo` and `flowdeck console`: the operator console on its own engine (a child
daemon by default, or in this process), attached to a running daemon (--connect), or
served to browsers (--web).

The only command module that opens a console, so the only one that imports Textual and
flowdeck.console.app, and only inside the functions that open one: importing this module,
or running `flowdeck demo --headless`, loads neither.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from flowdeck.console.cli import common
from flowdeck.console.cli.common import EXIT_OK, EXIT_USAGE, CliError
from flowdeck.console.cli.daemon import HubLogHandler, run_daemon
from flowdeck.pipeline.config import Config


def _add_ui(p) -> None:
    p.add_argument("--theme", choices=("dark", "light", "high-contrast"),
                   help="colour theme (default: the config's console.theme, else dark)")
    p.add_argument("--refresh", type=float, metavar="S",
                   help="seconds between screen refreshes (default 1; + and - change it)")


def _add_in_process(p) -> None:
    p.add_argument("--in-process", action="store_true",
                   help="run the engine in the console's own process (default: a child "
                        "process the console attaches to over the feed, so neither slows "
                        "the other)")


def add_parsers(sub) -> None:
    p = sub.add_parser("demo", help="simulator + engine + console on the bundled flows")
    common.add_common(p)
    common.add_sim(p)
    _add_ui(p)
    p.add_argument("--headless", action="store_true",
                   help="no console: print a live log instead")
    _add_in_process(p)
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("console", help="the operator console on an engine in this process")
    common.add_common(p)
    common.add_sim(p)
    _add_ui(p)
    p.add_argument("--connect", metavar="ws://HOST:PORT",
                   help="attach to a running daemon's feed instead of running an engine here")
    p.add_argument("--token", metavar="T",
                   help="with --connect: the feed token (default: the variable named by the "
                        "config's feed.token_env, FLOWDECK_TOKEN)")
    _add_in_process(p)
    p.add_argument("--web", nargs="?", const="127.0.0.1:8000", metavar="HOST:PORT",
                   help="serve the console in a browser instead (textual-serve; default "
                        "127.0.0.1:8000, loopback only): every tab attaches to one engine")
    p.set_defaults(fn=cmd_console)


def cmd_demo(args) -> int:
    config = common.config(args)
    common.check_scenario(args.scenario)
    if args.headless:
        args.once = False
        args.json = False
        print("flowdeck demo: simulator + engine on the bundled flows (Ctrl-C to stop)",
              flush=True)
        return asyncio.run(run_daemon(args, config, live_log=True))
    return _run_console(args, config)


def cmd_console(args) -> int:
    config = common.config(args)
    if args.web:
        return _serve_web(args, config)
    if args.connect:
        return _run_remote_console(args, config)
    common.check_scenario(args.scenario)
    return _run_console(args, config)


def _run_remote_console(args, config: Config) -> int:
    """The operator console attached to a daemon's feed: the same screens, over the network."""
    from flowdeck.console.app import FlowdeckApp
    from flowdeck.console.client.remote import RemoteControl, RemoteError

    token = common.feed_token(args, config)
    try:
        probe = RemoteControl(args.connect, token)
    except RemoteError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    try:  # fail fast with one line when the daemon is not there, before the screen opens
        asyncio.run(_probe_feed(probe))
    except RemoteError as exc:
        raise CliError(str(exc)) from None
    control = RemoteControl(args.connect, token)
    app = FlowdeckApp(control, theme=args.theme or config.console.theme,
                      refresh=args.refresh or config.console.refresh,
                      keymap=config.console.keys)
    app.run()
    return app.return_code or EXIT_OK


async def _probe_feed(control) -> None:
    try:
        await control.connect()
    finally:
        await control.close()


def _run_console(args, config: Config) -> int:
    """The operator console on its own engine: in a child process (default) or this one."""
    if not getattr(args, "in_process", False):
        return _run_console_with_engine_process(args, config)
    from flowdeck.console.app import FlowdeckApp
    from flowdeck.pipeline.engine.engine import Engine
    from flowdeck.pipeline.serve.control import LocalControl

    store = common.store(args, config)
    engine = Engine(config, store, **common.engine_kwargs(args))
    control = LocalControl(engine, actor=os.environ.get("USER") or "operator")
    # The terminal belongs to the console: engine warnings go to its Events screen.
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(HubLogHandler(engine))
    theme = args.theme or config.console.theme
    app = FlowdeckApp(control, engine=engine, theme=theme,
                      refresh=args.refresh or config.console.refresh,
                      keymap=config.console.keys)
    try:
        app.run()
    finally:
        store.close()
    return app.return_code or EXIT_OK


def _run_console_with_engine_process(args, config: Config) -> int:
    """The engine as `flowdeck daemon` in a child process, the console attached to its feed.

    The engine and the console then have an interpreter each, so neither waits for the
    other's GIL (see console/client/launcher.py and bench/bench_console.py)."""
    from flowdeck.console.app import FlowdeckApp
    from flowdeck.console.client.launcher import EngineProcess

    common.store(args, config).close()  # a bad --db is one line here, before the screen opens
    engine = EngineProcess(_daemon_args(args), token_env=config.feed.token_env)
    app = FlowdeckApp(engine.control, engine=engine,
                      theme=args.theme or config.console.theme,
                      refresh=args.refresh or config.console.refresh,
                      keymap=config.console.keys)
    app.run()
    return app.return_code or EXIT_OK


def _serve_web(args, config: Config) -> int:
    """The console in a browser (textual-serve): one engine, each browser tab a console on it.

    textual-serve runs a command per browser connection; here that command is
    `flowdeck console --connect` to one engine (a child daemon, or the --connect one),
    so every tab shows the same engine and none starts its own. textual-serve has no
    authentication, so it only serves on loopback (reach it over SSH or a proxy)."""
    import shlex

    from flowdeck.pipeline.serve.access import FeedError, is_loopback, parse_bind

    try:
        host, port = parse_bind(args.web)
    except FeedError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    if not is_loopback(host):
        raise CliError(f"--web {args.web}: the web console has no login of its own, so it "
                       "serves on loopback only (e.g. 127.0.0.1:8000); reach it through an "
                       "SSH tunnel or an authenticating reverse proxy", EXIT_USAGE)
    from textual_serve.server import Server

    from flowdeck.console.client.launcher import EngineProcess

    engine = None
    token = common.feed_token(args, config)
    if args.connect:
        target = args.connect
    else:
        common.store(args, config).close()
        engine = EngineProcess(_daemon_args(args), token_env=config.feed.token_env)
        from flowdeck.console.client.remote import RemoteError

        try:
            asyncio.run(engine.start())
        except RemoteError as exc:
            raise CliError(str(exc)) from None
        target, token = engine.control.url, engine.token
    if token:  # to the consoles through the environment, never on a command line
        os.environ[config.feed.token_env] = token
    cmd = [sys.executable, "-m", "flowdeck.console.cli", "console", "--connect", target]
    for flag in ("config", "theme", "refresh"):
        if getattr(args, flag, None):
            cmd += [f"--{flag}", str(getattr(args, flag))]
    server = Server(shlex.join(cmd), host=host, port=port, title="flowdeck")
    try:
        server.serve()
    finally:
        if engine is not None:
            asyncio.run(engine.stop())
    return EXIT_OK


def _daemon_args(args) -> list[str]:
    """The `flowdeck daemon` arguments for a console's own engine, from the console's."""
    daemon = ["--log-level", str(args.log_level), "daemon"]
    for flag in ("config", "db", "simulator", "scenario"):
        if getattr(args, flag, None):
            daemon += [f"--{flag}", str(getattr(args, flag))]
    return daemon + ["--seed", str(args.seed)]
