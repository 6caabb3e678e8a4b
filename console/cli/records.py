"""`flowdeck export`, `lineage` and `replay`: the stored records of a flow, where one came
from, and stored payloads run again through the current pipeline."""

from __future__ import annotations

import asyncio
import sys

from flowdeck.console.cli import common
from flowdeck.console.cli.common import EXIT_ERROR, EXIT_OK, EXIT_USAGE, CliError


def add_parsers(sub) -> None:
    p = sub.add_parser("export", help="validated records with quality and anomaly scores")
    common.add_common(p)
    p.add_argument("flow", metavar="FLOW")
    p.add_argument("--format", choices=("csv", "jsonl"), default="csv")
    p.add_argument("--since", metavar="TS", help="ISO-8601 time, a duration ago (2h), or epoch ms")
    p.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("lineage", help="a record's raw payloads and stage history")
    common.add_common(p)
    p.add_argument("record_id", metavar="RECORD_ID", type=int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_lineage)

    p = sub.add_parser("replay", help="re-run stored payloads through the current pipeline")
    common.add_common(p)
    p.add_argument("flow", metavar="FLOW")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quarantine", action="store_true", help="payloads with quarantined items")
    g.add_argument("--raw", action="store_true", help="every raw payload (see --since)")
    p.add_argument("--since", metavar="TS", help="with --raw: only payloads fetched since TS")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_replay)


def cmd_export(args) -> int:
    from flowdeck.pipeline.serve.queries import export_text, parse_since

    config = common.config(args, from_store=True)
    flow = common.flow(config, args.flow)
    store = common.store(args, config, create=False)
    try:
        since = parse_since(args.since, common.now_ms())
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

    config = common.config(args, from_store=True)
    store = common.store(args, config, create=False)
    try:
        info = lineage(store, config, args.record_id)
    except LookupError as exc:
        raise CliError(str(exc)) from None
    finally:
        store.close()
    if args.json:
        common.print_json(info)
    else:
        print(render_lineage(info), end="")
    return EXIT_OK


def cmd_replay(args) -> int:
    from flowdeck.pipeline.engine.engine import Engine
    from flowdeck.pipeline.serve.queries import parse_since

    config = common.config(args, from_store=True)
    flow = common.flow(config, args.flow)
    if not args.quarantine and not args.raw:
        raise CliError("say what to replay: --quarantine, or --raw [--since TS]", EXIT_USAGE)
    try:
        since = parse_since(args.since, common.now_ms()) if args.raw else None
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    store = common.store(args, config, create=False)

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
        common.print_json(summary)
    else:
        st = summary["stages"]
        print(f"replayed {summary['payloads']} payload(s) of {flow}: "
              f"{st['store']['out']} records stored, {summary['quarantined']} still quarantined")
    return EXIT_ERROR if summary["status"] == "failed" else EXIT_OK
