"""`flowdeck check`: validate a config file, one `file:line: field: problem` per problem.

With ``--sample PAYLOAD`` it is also a dry run: the payload goes through the source's real
stages (collect, validate, transform, enrich, quality) and the first records are printed
as they would be stored; nothing is written. Field paths that match nothing in the sample
are warnings that list the names that are there.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from flowdeck.console.cli.common import EXIT_ERROR, EXIT_OK, EXIT_USAGE
from flowdeck.pipeline.config import ConfigError, config_warnings, load_config


def add_parsers(sub) -> None:
    p = sub.add_parser("check", help="validate a config: file:line: field: problem")
    p.add_argument("file", metavar="CONFIG")
    p.add_argument("--sample", metavar="PAYLOAD",
                   help="dry run: parse this payload file through the flow's stages and show "
                        "the first records as they would be stored (nothing is written)")
    p.add_argument("--source", metavar="NAME", help="the source the sample is from "
                   "(needed when the config has several)")
    p.add_argument("--limit", type=int, default=5, help="records to show (default 5)")
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
    if args.sample:
        return _sample(cfg, args)
    return EXIT_OK


def _iso(ms: int) -> str:
    text = datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")
    return text.replace(".000+00:00", "Z").replace("+00:00", "Z")


def _sample(cfg, args) -> int:
    from flowdeck.pipeline.sniff import dry_run, find_source

    try:
        flow_name, src = find_source(cfg, args.source)
    except ValueError as exc:
        print(f"{args.file}: --source: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        body = Path(args.sample).read_bytes()
    except OSError as exc:
        print(f"{args.sample}: cannot read: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    run = dry_run(cfg, flow_name, src.name, body, int(time.time() * 1000))
    for w in run.warnings:
        print(f"{args.file}: warning: flows.{flow_name}.{w}")
    print(f"{args.sample}: {run.items} items -> {len(run.records)} records, "
          f"{len(run.quarantine)} quarantined (dry run, nothing written)")
    for rec in run.records[: max(args.limit, 0)]:
        row = {"key": rec.key, "ts": _iso(rec.ts), "data": rec.data}
        if rec.flags:
            row["flags"] = rec.flags
        print("  " + json.dumps(row, ensure_ascii=False, default=str))
    if run.quarantine:
        reasons = Counter(q.reason for q in run.quarantine)
        print("quarantined: " + ", ".join(f"{r} x{n}" for r, n in reasons.most_common()))
        for q in run.quarantine[:3]:
            print(f"  item {q.item}: {q.stage}/{q.reason}: {q.message}")
    return EXIT_ERROR if run.quarantine and not run.records else EXIT_OK
