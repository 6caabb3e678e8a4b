"""The `flowdeck` command line: the parser and `main`. Errors are one clear line and a
non-zero exit, never a traceback.

Each command group is a module here that registers its own subcommands with
`add_parsers(sub)`: common (shared helpers and options), console (demo, console),
daemon, watch, simulate, check, sniff, status, records (export, lineage, replay), issues
(issues, actions, act), db (db upgrade) and evaluate. A new command is one module plus one line in
`build_parser`. Only `console` opens a console, so only a console command loads Textual.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from flowdeck.console.cli import (
    backup,
    check,
    console,
    daemon,
    db,
    evaluate,
    issues,
    records,
    simulate,
    sniff,
    status,
    watch,
)
from flowdeck.console.cli.common import EXIT_ERROR, EXIT_OK, EXIT_USAGE, CliError
from flowdeck.pipeline.config import ConfigError
from flowdeck.pipeline.core.redact import redact


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="flowdeck",
        description="Observability-first data-flow engine with a terminal console.")
    ap.add_argument("--log-level", default=os.environ.get("FLOWDECK_LOG", "WARNING"),
                    help="log level for the engine's own log (default WARNING)")
    ap.add_argument("--log-format", choices=("json", "text"),
                    default=os.environ.get("FLOWDECK_LOG_FORMAT") or None,
                    help="the log's format: one JSON object per line, or text (default: text "
                         "on a terminal, JSON otherwise)")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # The order here is the order `flowdeck --help` lists the commands in.
    console.add_parsers(sub)   # demo, console
    daemon.add_parsers(sub)    # daemon
    watch.add_parsers(sub)     # watch
    simulate.add_parsers(sub)  # simulate
    check.add_parsers(sub)     # check
    sniff.add_parsers(sub)     # sniff
    status.add_parsers(sub)    # status
    records.add_parsers(sub)   # export, lineage, replay
    issues.add_parsers(sub)    # issues, actions, act
    db.add_parsers(sub)        # db upgrade, stats, vacuum
    backup.add_parsers(sub)    # backup, restore
    evaluate.add_parsers(sub)  # evaluate
    _log_options_everywhere(sub)
    return ap


def _log_options_everywhere(sub) -> None:
    """--log-level and --log-format after any command too (`flowdeck daemon --log-format
    json`); SUPPRESS keeps the top-level value when a command's is not given."""
    for p in sub.choices.values():
        p.add_argument("--log-level", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        p.add_argument("--log-format", choices=("json", "text"), default=argparse.SUPPRESS,
                       help="log format: json (one object per line) or text")
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                _log_options_everywhere(action)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from flowdeck.pipeline.core import logs

    try:
        args.log_format = logs.setup(args.log_format, str(args.log_level))
    except ValueError as exc:
        print(f"flowdeck: {exc}", file=sys.stderr)
        return EXIT_USAGE
    # A run skipped because the previous one is still going shows in the run counters.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    fn: Callable[[argparse.Namespace], int] = args.fn
    try:
        return fn(args)
    except CliError as exc:
        print(redact(f"flowdeck: {exc}"), file=sys.stderr)
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
        print(redact(f"flowdeck: error: {type(exc).__name__}: {exc}"), file=sys.stderr)
        return EXIT_ERROR
