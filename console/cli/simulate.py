"""`flowdeck simulate`: the loopback sources shaped like real public APIs that the bundled
config's `simulated` sources read (pipeline/demo/), served until interrupted."""

from __future__ import annotations

import asyncio

from flowdeck.console.cli import common
from flowdeck.console.cli.common import EXIT_OK, CliError


def add_parsers(sub) -> None:
    p = sub.add_parser("simulate", help="loopback sources shaped like real public APIs")
    p.add_argument("--port", type=int, default=8700)
    p.add_argument("--scenario", metavar="S", help="fault scenario (sample_data/scenarios)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--labels", metavar="PATH", help="write injected anomalies to this JSON file")
    p.set_defaults(fn=cmd_simulate)


def cmd_simulate(args) -> int:
    from flowdeck.pipeline.demo import simulator

    common.check_scenario(args.scenario)
    try:
        asyncio.run(simulator.serve(port=args.port, scenario=args.scenario, seed=args.seed,
                                    labels_path=args.labels))
    except OSError as exc:
        raise CliError(f"cannot serve on port {args.port}: {exc.strerror}") from None
    return EXIT_OK
