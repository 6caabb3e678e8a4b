"""`flowdeck check`: validate a config file, one `file:line: field: problem` per problem."""

from __future__ import annotations

import sys

from flowdeck.console.cli.common import EXIT_OK, EXIT_USAGE
from flowdeck.pipeline.config import ConfigError, config_warnings, load_config


def add_parsers(sub) -> None:
    p = sub.add_parser("check", help="validate a config: file:line: field: problem")
    p.add_argument("file", metavar="CONFIG")
    p.set_defaults(fn=cmd_check)


def cmd_check(args) -> int:
    try:
        cfg = load_config(args.file)
    except ConfigError as exc:
        for p in exc.problems:
            print(p, file=sys.stderr)
        return EXIT_USAGE
    for w in config_warnings(cfg):  # loads, but may not do what was meant: said, not failed
        print(w, file=sys.stderr)
    sources = sum(len(f.sources) for f in cfg.flows.values())
    print(f"{args.file}: ok ({len(cfg.flows)} flows, {sources} sources)")
    return EXIT_OK
