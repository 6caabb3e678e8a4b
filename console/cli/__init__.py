"""The `flowdeck` command line. Errors are one clear line and a non-zero exit, never a traceback."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from datetime import UTC, datetime

from flowdeck.pipeline.config import Config, ConfigError, load_config
from flowdeck.pipeline.serve.queries import iso, parse_since

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
# Open issues of these kinds make `flowdeck status` say degraded (exit 1).
DEGRADING_ISSUES = {"stale_source", "error_rate", "store_unavailable"}


class CliError(Exception):
    """A user-facing failure: printed as one line, exit code attached."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------- helpers


def _config(args) -> Config:
    return load_config(getattr(args, "config", None))


def _store(args, config: Config | None = None, *, create: bool = True):
    from flowdeck.storage.db import StoreError, resolve_url
    from flowdeck.storage.store import Store

    url = resolve_url(getattr(args, "db", None), config.store.url if config else None)
    try:
        return Store(url, create_if_empty=create,
                     busy_timeout=config.store.busy_timeout if config else 30.0)
    except StoreError as exc:
        raise CliError(str(exc)) from None


def _flow(config: Config, name: str) -> str:
    if name not in config.flows:
        raise CliError(f"no flow {name!r} (flows: {', '.join(config.flows)})", EXIT_USAGE)
    return name


def _now_ms() -> int:
    return int(datetime.now(tz=UTC).timestamp() * 1000)


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


# ---------------------------------------------------------------- commands


def cmd_check(args) -> int:
    try:
        cfg = load_config(args.file)
    except ConfigError as exc:
        for p in exc.problems:
            print(p, file=sys.stderr)
        return EXIT_USAGE
    sources = sum(len(f.sources) for f in cfg.flows.values())
    print(f"{args.file}: ok ({len(cfg.flows)} flows, {sources} sources)")
    return EXIT_OK


def cmd_db_upgrade(args) -> int:
    from flowdeck.storage.db import StoreError, make_engine, resolve_url, upgrade

    url = resolve_url(args.db)
    try:
        engine = make_engine(url)
        before, after = upgrade(engine)
    except StoreError as exc:
        raise CliError(str(exc)) from None
    print(f"schema {before or 'empty'} -> {after}" if before != after else f"schema at {after}")
    engine.dispose()
    return EXIT_OK


def _engine_kwargs(args) -> dict:
    return {"simulator_url": args.simulator, "scenario": args.scenario, "seed": args.seed}


def _check_scenario(name: str | None) -> None:
    if name is None:
        return
    from flowdeck.pipeline.demo.simulator import Scenario

    try:
        Scenario.load(name)
    except (ValueError, OSError) as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


def _format_run(s: dict) -> str:
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


def _feed_server(args, config: Config, engine):
    """The feed and HTTP API for `flowdeck daemon` (FeedError if the bind needs a token)."""
    from flowdeck.pipeline.serve.control import LocalControl
    from flowdeck.pipeline.serve.feed import FeedError, FeedServer, parse_bind

    token = args.token or os.environ.get(config.feed.token_env) or None
    try:
        host, port = parse_bind(args.bind or config.feed.bind)
        return FeedServer(LocalControl(engine, actor=os.environ.get("USER") or "operator"),
                          host=host, port=port, token=token, origins=config.feed.origins,
                          caches=engine.caches)
    except FeedError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


async def _daemon(args, config: Config, *, live_log: bool) -> int:
    from flowdeck.pipeline.engine.engine import Engine
    from flowdeck.pipeline.serve.feed import FeedError

    store = _store(args, config)
    engine = Engine(config, store, **_engine_kwargs(args))
    if getattr(args, "log_events", False):  # a console's engine: warnings reach its Events
        logging.getLogger().addHandler(HubLogHandler(engine))
    feed = None
    if getattr(args, "serve_feed", False) and not args.once:
        try:
            feed = _feed_server(args, config, engine)
        except CliError:
            store.close()
            raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
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
        await engine.start(schedule=not args.once)
        if args.once:
            summaries = await engine.run_all_once()
            if args.json:
                _print_json({"flows": {s.flow: s.as_dict() for s in summaries}})
            else:
                for s in summaries:
                    print(_format_run(s.as_dict()))
            failed = any(s.status == "failed" for s in summaries)
            return EXIT_ERROR if failed else EXIT_OK
        printer = asyncio.create_task(_print_events(sub, args.json, live_log))
        await stop.wait()
        printer.cancel()
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
            print(f"{t} {_format_run(ev.data)}", flush=True)
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


def cmd_daemon(args) -> int:
    config = _config(args)
    _check_scenario(args.scenario)
    args.serve_feed = True
    return asyncio.run(_daemon(args, config, live_log=False))


def cmd_demo(args) -> int:
    config = _config(args)
    _check_scenario(args.scenario)
    if args.headless:
        args.once = False
        args.json = False
        print("flowdeck demo: simulator + engine on the bundled flows (Ctrl-C to stop)",
              flush=True)
        return asyncio.run(_daemon(args, config, live_log=True))
    return _run_console(args, config)


def cmd_console(args) -> int:
    config = _config(args)
    if args.web:
        return _serve_web(args, config)
    if args.connect:
        return _run_remote_console(args, config)
    _check_scenario(args.scenario)
    return _run_console(args, config)


def _run_remote_console(args, config: Config) -> int:
    """The operator console attached to a daemon's feed: the same screens, over the network."""
    from flowdeck.console.app import FlowdeckApp
    from flowdeck.console.client.remote import RemoteControl, RemoteError

    token = args.token or os.environ.get(config.feed.token_env) or None
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


def cmd_watch(args) -> int:
    """Print the feed as JSON lines, one envelope per line, until interrupted."""
    from flowdeck.console.client.remote import RemoteError

    token = args.token or os.environ.get(_config(args).feed.token_env) or None
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


def _run_console(args, config: Config) -> int:
    """The operator console on its own engine: in a child process (default) or this one."""
    if not getattr(args, "in_process", False):
        return _run_console_with_engine_process(args, config)
    from flowdeck.console.app import FlowdeckApp
    from flowdeck.pipeline.engine.engine import Engine
    from flowdeck.pipeline.serve.control import LocalControl

    store = _store(args, config)
    engine = Engine(config, store, **_engine_kwargs(args))
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
    other's GIL (see console/engine_process.py and bench/bench_console.py)."""
    from flowdeck.console.app import FlowdeckApp
    from flowdeck.console.client.launcher import EngineProcess

    _store(args, config).close()  # a bad --db is one line here, before the screen opens
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

    from flowdeck.pipeline.serve.feed import FeedError, is_loopback, parse_bind

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
    token = args.token or os.environ.get(config.feed.token_env) or None
    if args.connect:
        target = args.connect
    else:
        _store(args, config).close()
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


def cmd_simulate(args) -> int:
    from flowdeck.pipeline.demo import simulator

    _check_scenario(args.scenario)
    try:
        asyncio.run(simulator.serve(port=args.port, scenario=args.scenario, seed=args.seed,
                                    labels_path=args.labels))
    except OSError as exc:
        raise CliError(f"cannot serve on port {args.port}: {exc.strerror}") from None
    return EXIT_OK


def cmd_export(args) -> int:
    from flowdeck.pipeline.serve.queries import export_text

    config = _config(args)
    flow = _flow(config, args.flow)
    store = _store(args, config, create=False)
    try:
        since = parse_since(args.since, _now_ms())
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    out = open(args.output, "w", newline="") if args.output else sys.stdout
    try:
        n = export_text(store, flow, args.format, since, out)
    finally:
        if args.output:
            out.close()
        store.close()
    print(f"exported {n} records", file=sys.stderr)
    return EXIT_OK


def cmd_lineage(args) -> int:
    from flowdeck.pipeline.serve.queries import lineage, render_lineage

    config = _config(args)
    store = _store(args, config, create=False)
    try:
        info = lineage(store, config, args.record_id)
    except LookupError as exc:
        raise CliError(str(exc)) from None
    finally:
        store.close()
    if args.json:
        _print_json(info)
    else:
        print(render_lineage(info), end="")
    return EXIT_OK


def cmd_replay(args) -> int:
    from flowdeck.pipeline.engine.engine import Engine

    config = _config(args)
    flow = _flow(config, args.flow)
    if not args.quarantine and not args.raw:
        raise CliError("say what to replay: --quarantine, or --raw [--since TS]", EXIT_USAGE)
    try:
        since = parse_since(args.since, _now_ms()) if args.raw else None
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    store = _store(args, config, create=False)

    async def go():
        engine = Engine(config, store)
        await engine.start(schedule=False, resume=False)
        try:
            return await engine.replay(flow, quarantine=args.quarantine, since_ms=since)
        finally:
            await engine.stop()

    try:
        summary = asyncio.run(go()).as_dict()
    finally:
        store.close()
    if args.json:
        _print_json(summary)
    else:
        st = summary["stages"]
        print(f"replayed {summary['payloads']} payload(s) of {flow}: "
              f"{st['store']['out']} records stored, {summary['quarantined']} still quarantined")
    return EXIT_ERROR if summary["status"] == "failed" else EXIT_OK


def cmd_issues(args) -> int:
    config = _config(args)
    store = _store(args, config, create=False)
    try:
        if args.action in ("ack", "resolve", "mute"):
            if args.id is None:
                raise CliError(f"flowdeck issues {args.action} needs an issue ID", EXIT_USAGE)
            state = {"ack": "acknowledged", "resolve": "resolved", "mute": "muted"}[args.action]
            now = _now_ms()
            until = None
            if args.action == "mute":
                from flowdeck.pipeline.config import parse_duration

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
        _print_json(rows)
        return EXIT_OK
    for r in rows:
        print(f"{r['id']:>5} {r['state']:<12} {r['severity']:<8} {r['flow']:<10} "
              f"x{r['count']:<4} {iso(r['last_ms'])}  {r['title']}")
    return EXIT_OK


def cmd_actions(args) -> int:
    config = _config(args)
    store = _store(args, config, create=False)
    try:
        rows = store.actions(flow=args.flow, limit=args.limit)
    finally:
        store.close()
    if args.json:
        _print_json(rows)
        return EXIT_OK
    for r in rows:
        print(f"{iso(r['ts_ms'])} {r['flow'] or '-':<10} {r['source'] or '-':<10} "
              f"{r['action']:<16} {r['actor']:<10} {r['outcome']:<8} {r['reason']}")
    return EXIT_OK


def cmd_status(args) -> int:
    """Flows, last run, open issues; exit 0 healthy, 1 degraded, 2 failing."""
    config = _config(args)
    store = _store(args, config, create=False)
    try:
        counts = store.open_issue_counts()
        out = {}
        worst = 0
        now = _now_ms()
        for name, flow in config.flows.items():
            runs = store.recent_runs(name, limit=1)
            last = runs[0] if runs else None
            latest = store.latest(name)
            newest = max((r["ts_ms"] for r in latest), default=None)
            stale = newest is None or now - newest > flow.freshness * 1000
            if last is None or last["status"] == "failed":
                state = "failing"
            elif last["status"] == "partial" or stale:
                state = "degraded"
            else:
                state = "healthy"
            breakers = {src: st.get("breaker", {}).get("state", "closed")
                        for (_f, src), st in store.source_states(name).items()}
            open_kinds = {i["kind"] for i in
                          store.issues(flow=name, state=("open", "acknowledged"))}
            incident = "incident" in open_kinds
            if incident:
                state = "failing"
            elif state == "healthy" and (any(b != "closed" for b in breakers.values())
                                         or open_kinds & DEGRADING_ISSUES):
                state = "degraded"
            worst = max(worst, {"healthy": 0, "degraded": 1, "failing": 2}[state])
            last_stats = (last or {}).get("stats") or {}
            active = [s for s, i in last_stats.get("sources", {}).items()
                      if "error" not in i and "skipped" not in i]
            out[name] = {"state": state, "active_sources": active,
                         "breakers": {s.name: breakers.get(s.name, "closed")
                                      for s in flow.sources},
                         "incident": incident,
                         "last_run": iso(last["started_ms"]) if last else None,
                         "last_status": last["status"] if last else None,
                         "newest_record": iso(newest), "stale": stale,
                         "issues_open": {sev: n for (f, sev), n in counts.items() if f == name}}
    finally:
        store.close()
    if args.json:
        _print_json({"flows": out, "exit": worst})
    else:
        for name, f in out.items():
            issues = ", ".join(f"{n} {s}" for s, n in f["issues_open"].items()) or "no issues"
            open_b = [f"{s} {b}" for s, b in f["breakers"].items() if b != "closed"]
            print(f"{name:<10} {f['state']:<9} last run {f['last_run'] or 'never'} "
                  f"({f['last_status'] or '-'}), active {', '.join(f['active_sources']) or '-'}, "
                  f"breakers {', '.join(open_b) or 'all closed'}, newest record "
                  f"{f['newest_record'] or '-'}, {issues}")
    return worst


# Actions that change nothing an operator would want to undo: no confirmation asked.
SAFE_ACTIONS = {"run_now", "resume", "ack_issue", "prewarm"}


def _action_params(args) -> dict:
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
            params["since_ms"] = parse_since(args.since, _now_ms())
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
    from flowdeck.pipeline.serve.feed import FeedError, parse_bind

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

    config = _config(args)
    params = _action_params(args)
    what = " ".join([args.action] + [f"{k}={v}" for k, v in params.items()])
    if args.action not in SAFE_ACTIONS and not args.yes:
        if not sys.stdin.isatty():
            raise CliError(f"{what}: confirm with --yes (no terminal to ask on)", EXIT_USAGE)
        if input(f"{what}? [y/N] ").strip().lower() not in ("y", "yes"):
            print("flowdeck: cancelled", file=sys.stderr)
            return EXIT_ERROR
    url = args.connect or _default_feed(config)
    token = args.token or os.environ.get(config.feed.token_env) or None
    actor = args.actor or os.environ.get("USER") or "cli"
    actor = re.sub(r"[^A-Za-z0-9_.@-]", "_", actor)[:64]
    try:
        result = asyncio.run(_act_remote(url, token, args.action, params, actor))
    except RemoteError as exc:
        raise CliError(str(exc)) from None
    if args.json:
        _print_json(result)
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


# ---------------------------------------------------------------- parser


def _add_common(p, *, db: bool = True, config: bool = True) -> None:
    if config:
        p.add_argument("--config", metavar="F",
                       help="config file (default: $FLOWDECK_CONFIG, else the bundled demo)")
    if db:
        p.add_argument("--db", metavar="URL",
                       help="database URL (default: $FLOWDECK_DB, else the config's store.url, "
                            "else sqlite:///flowdeck.db)")


def _add_sim(p) -> None:
    p.add_argument("--simulator", metavar="URL",
                   help="base URL of a running `flowdeck simulate` for simulated sources "
                        "(default: start one in-process)")
    p.add_argument("--scenario", metavar="S", help="fault scenario for the in-process simulator")
    p.add_argument("--seed", type=int, default=7, help="simulator seed (default 7)")


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


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="flowdeck",
        description="Observability-first data-flow engine with a terminal console.")
    ap.add_argument("--log-level", default=os.environ.get("FLOWDECK_LOG", "WARNING"),
                    help="log level for the engine's own log (default WARNING)")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("demo", help="simulator + engine + console on the bundled flows")
    _add_common(p)
    _add_sim(p)
    _add_ui(p)
    p.add_argument("--headless", action="store_true",
                   help="no console: print a live log instead")
    _add_in_process(p)
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("console", help="the operator console on an engine in this process")
    _add_common(p)
    _add_sim(p)
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

    p = sub.add_parser("daemon", help="headless engine")
    _add_common(p)
    _add_sim(p)
    p.add_argument("--once", action="store_true", help="run every flow once and exit")
    p.add_argument("--json", action="store_true", help="print JSON (a summary per flow)")
    p.add_argument("--bind", metavar="HOST:PORT",
                   help="serve the websocket feed and HTTP API here (default: the config's "
                        "feed.bind, 127.0.0.1:8765; port 0 picks a free one)")
    p.add_argument("--token", metavar="T",
                   help="token viewers must present (default: the variable named by the "
                        "config's feed.token_env, FLOWDECK_TOKEN); required off loopback")
    p.add_argument("--log-events", action="store_true", help=argparse.SUPPRESS)  # console's
    p.set_defaults(fn=cmd_daemon)

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

    p = sub.add_parser("simulate", help="loopback sources shaped like real public APIs")
    p.add_argument("--port", type=int, default=8700)
    p.add_argument("--scenario", metavar="S", help="fault scenario (sample_data/scenarios)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--labels", metavar="PATH", help="write injected anomalies to this JSON file")
    p.set_defaults(fn=cmd_simulate)

    p = sub.add_parser("check", help="validate a config: file:line: field: problem")
    p.add_argument("file", metavar="CONFIG")
    p.set_defaults(fn=cmd_check)

    p = sub.add_parser("status", help="flows and open issues; exit 0 healthy, 1 degraded, "
                                      "2 failing")
    _add_common(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_status)

    p = sub.add_parser("export", help="validated records with quality and anomaly scores")
    _add_common(p)
    p.add_argument("flow", metavar="FLOW")
    p.add_argument("--format", choices=("csv", "jsonl"), default="csv")
    p.add_argument("--since", metavar="TS", help="ISO-8601 time, a duration ago (2h), or epoch ms")
    p.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("lineage", help="a record's raw payloads and stage history")
    _add_common(p)
    p.add_argument("record_id", metavar="RECORD_ID", type=int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_lineage)

    p = sub.add_parser("replay", help="re-run stored payloads through the current pipeline")
    _add_common(p)
    p.add_argument("flow", metavar="FLOW")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quarantine", action="store_true", help="payloads with quarantined items")
    g.add_argument("--raw", action="store_true", help="every raw payload (see --since)")
    p.add_argument("--since", metavar="TS", help="with --raw: only payloads fetched since TS")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_replay)

    p = sub.add_parser("issues", help="quality issues: list, ack, resolve, mute")
    _add_common(p)
    p.add_argument("action", nargs="?", choices=("list", "ack", "resolve", "mute"),
                   default="list")
    p.add_argument("id", nargs="?", type=int, metavar="ID")
    p.add_argument("--flow")
    p.add_argument("--state", choices=("open", "acknowledged", "resolved", "muted"))
    p.add_argument("--for", dest="duration", default="1h", help="with mute: how long (1h)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_issues)

    p = sub.add_parser("actions", help="recovery actions (automatic and operator)")
    _add_common(p)
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

    p = sub.add_parser("db", help="database schema")
    dbsub = p.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    q = dbsub.add_parser("upgrade", help="apply Alembic migrations")
    q.add_argument("--db", metavar="URL")
    q.set_defaults(fn=cmd_db_upgrade)
    return ap


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # A run skipped because the previous one is still going shows in the run counters.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    fn: Callable[[argparse.Namespace], int] = args.fn
    try:
        return fn(args)
    except CliError as exc:
        print(f"flowdeck: {exc}", file=sys.stderr)
        return exc.code
    except ConfigError as exc:
        for p in exc.problems:
            print(p, file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:  # the promise: one line, never a traceback
        if os.environ.get("FLOWDECK_DEBUG"):
            raise
        print(f"flowdeck: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR

