"""`flowdeck evaluate`: labelled CSV time series through the pipeline's detect stage, scored
with the windowed rule of the public streaming-anomaly benchmarks (docs/detection.md)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from flowdeck.console.cli import common
from flowdeck.console.cli.common import EXIT_OK, EXIT_USAGE, CliError


def add_parsers(sub) -> None:
    p = sub.add_parser("evaluate", help="score the detectors on labelled CSV time series")
    p.add_argument("--data", metavar="DIR_OR_FILE",
                   help="a CSV with a header timestamp,value, or a directory of them")
    p.add_argument("--labels", metavar="LABELS.json",
                   help="each file's path relative to --data -> its [start, end] windows")
    p.add_argument("--config", metavar="F",
                   help="take the detector settings from this config's detect section "
                        "(default: flowdeck's defaults)")
    p.add_argument("--flow", metavar="FLOW",
                   help="with --config: this flow's detect section (default: the first "
                        "flow that has one)")
    p.add_argument("--metric", metavar="M",
                   help="with --config: this metric's detect entry (default: the flow's first)")
    p.add_argument("--scores", metavar="OUT_DIR",
                   help="write OUT_DIR/<file> as timestamp,value,anomaly_score,anomaly_flag, "
                        "one row per input row")
    p.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    p.add_argument("--resolve", action="store_true",
                   help="measure the resolve strategies instead: each one's error against "
                        "the simulator's truth on a demo scenario")
    p.add_argument("--scenario", default="drift", metavar="NAME",
                   help="with --resolve: the scenario (default: drift)")
    p.add_argument("--minutes", type=int, default=240, metavar="N",
                   help="with --resolve: simulated minutes (default: 240)")
    p.set_defaults(fn=cmd_evaluate)


def detect_spec(args):
    """The detect entry named by --config/--flow/--metric, or None for the defaults."""
    if args.config is None:
        if args.flow or args.metric:
            raise CliError("--flow and --metric need --config", EXIT_USAGE)
        return None, "defaults"
    config = common.config(args)
    if args.flow is not None:
        name = common.flow(config, args.flow)
        if not config.flows[name].detect:
            raise CliError(f"flow {name!r} has no detect section", EXIT_USAGE)
    else:
        name = next((n for n, f in config.flows.items() if f.detect), None)
        if name is None:
            raise CliError(f"{args.config}: no flow has a detect section", EXIT_USAGE)
    specs = config.flows[name].detect
    if args.metric is None:
        return specs[0], f"{name}.{specs[0].metric}"
    for spec in specs:
        if spec.metric == args.metric:
            return spec, f"{name}.{spec.metric}"
    raise CliError(f"flow {name!r} detects no metric {args.metric!r} "
                   f"(it detects: {', '.join(s.metric for s in specs)})", EXIT_USAGE)


def cmd_resolve(args) -> int:
    from flowdeck.pipeline.demo.truth import measure

    if args.minutes < 10:
        raise CliError("--minutes: at least 10", EXIT_USAGE)
    try:
        report = measure(args.scenario, minutes=args.minutes)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    if args.json:
        common.print_json(report.as_dict())
    else:
        print(report.table())
    return EXIT_OK


def cmd_evaluate(args) -> int:
    from flowdeck.pipeline.evaluation import evaluate, load_labels, stage_scorer

    if args.resolve:
        return cmd_resolve(args)
    if args.data is None or args.labels is None:
        raise CliError("--data and --labels are required (or --resolve)", EXIT_USAGE)
    data, labels_path = Path(args.data), Path(args.labels)
    if not data.exists():
        raise CliError(f"{data}: no such file or directory", EXIT_USAGE)
    spec, source = detect_spec(args)
    try:
        labels = load_labels(labels_path)
    except FileNotFoundError:
        raise CliError(f"{labels_path}: no such file", EXIT_USAGE) from None
    except (ValueError, TypeError) as exc:
        raise CliError(f"{labels_path}: cannot read labels: {exc}", EXIT_USAGE) from None
    started = time.perf_counter()
    try:
        report = evaluate(data, labels, stage_scorer(spec),
                          scores_dir=Path(args.scores) if args.scores else None)
    except (ValueError, OSError) as exc:
        raise CliError(str(exc)) from None
    seconds = time.perf_counter() - started
    if not report.files:
        raise CliError(f"{data}: no CSV files", EXIT_USAGE)
    if args.json:
        out = report.as_dict()
        out["settings"] = source
        out["seconds"] = round(seconds, 2)
        common.print_json(out)
    else:
        print(report.table())
        o = report
        print(f"\noverall: score {o.score:.2f}  precision {o.precision:.3f}  recall "
              f"{o.recall:.3f}  F1 {o.f1:.3f}  ({len(o.files)} files, "
              f"{sum(f.rows for f in o.files)} rows, settings: {source}, {seconds:.1f} s)")
    if args.scores:
        print(f"scores written to {args.scores}", file=sys.stderr)
    return EXIT_OK
