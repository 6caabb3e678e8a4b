"""python -m bench: every benchmark of flowdeck, each figure against its own baseline.

    python -m bench                  full run, prints the table
    python -m bench --quick --json   under two minutes, one JSON object on stdout
    python -m bench --json           full run, JSON on stdout, kept in bench/results/
    python -m bench --only pipeline,detect --scale 0.2

``--scale`` (or FLOWDECK_BENCH_SCALE) multiplies the sizes (records, messages, keys,
seconds); the JSON says which scale it ran at. bench/README.md explains each figure.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from bench.common import REPO, Figure, Options, environment, log

# Which figures each benchmark gives (so a benchmark that fails still reports its keys,
# as null with the reason), in the order they run.
BENCHMARKS: dict[str, tuple[str, ...]] = {
    "pipeline": ("pipeline_records_per_s", "pipeline_ratio_vs_floor", "bytewax_ratio",
                 "pipeline_pg_records_per_s"),
    "retention": ("retention_size_growth_last_week",),
    "backup": ("backup_s_per_1m_records", "restore_s_per_1m_records"),
    # the quick soak's daemon starts here (SOAK_ALONGSIDE)
    "detect": ("detect_us_per_record_metric",),
    "cache": ("l1_hit_ns",),
    "feed": ("feed_p99_ms_at_10k", "broadcast_ratio_1000_viewers", "stalled_viewer_cost"),
    "console": ("console_key_to_paint_ms_at_10k",),
    "soak": ("rss_growth_soak",),
    # several daemons on PostgreSQL (bench/cluster.py): minutes of subprocesses, so only
    # when asked for (--only cluster)
    "cluster": ("cluster_runs_per_s_1", "cluster_runs_per_s_2", "cluster_runs_per_s_3",
                "cluster_scaling_3_vs_1", "cluster_takeover_p50_s", "cluster_takeover_p95_s"),
}
KEYS = [k for keys in BENCHMARKS.values() for k in keys]
# --quick only: the soak's daemon (about 0.3 of a core at 1,000 records/s) ingests
# alongside the CPU-time benchmarks (detect's and cache's figures are this process's CPU
# time) and the latency ones, never alongside the throughput ones, the backup (its
# seconds are scaled 33 times) or the retention month (a daemon on a compressed clock that
# must start on time). Together they last about the soak's 60 s, so the quick run does
# not wait for it at the end.
SOAK_ALONGSIDE = ("detect", "cache", "feed", "console")
ON_REQUEST = ("cluster",)  # run only when named in --only
TARGETS = {
    "pipeline_records_per_s": ">= 100000", "pipeline_ratio_vs_floor": ">= 0.5",
    "pipeline_pg_records_per_s": ">= 100000", "bytewax_ratio": ">= 1.5",
    "feed_p99_ms_at_10k": "< 50", "broadcast_ratio_1000_viewers": ">= 0.9",
    "stalled_viewer_cost": "<= 0.05", "l1_hit_ns": "< 1000",
    "console_key_to_paint_ms_at_10k": "< 100", "rss_growth_soak": "< 0.10",
    "detect_us_per_record_metric": "<= 2",
    "retention_size_growth_last_week": "< 0.05", "backup_s_per_1m_records": "< 60",
    "restore_s_per_1m_records": "< 60",
    "cluster_runs_per_s_1": ">= 1", "cluster_runs_per_s_2": ">= 1",
    "cluster_runs_per_s_3": ">= 1", "cluster_scaling_3_vs_1": ">= 1",
    "cluster_takeover_p50_s": "<= 5", "cluster_takeover_p95_s": "<= 8",
}


def _module(name: str):
    return importlib.import_module(f"bench.{name}")


Runner = Callable[[Options, bool], tuple[list[Figure], dict]]
# name -> runner (options, profile); each module imported only when its benchmark runs.
# The soak is not here: it starts, runs alongside others, and finishes (run() below).
RUNNERS: dict[str, Runner] = {
    "pipeline": lambda opts, profile: _module("throughput").run(opts, profile=profile),
    "detect": lambda opts, profile: _module("detect").run(opts),
    "cache": lambda opts, profile: _module("cache").run(opts),
    "retention": lambda opts, profile: _module("retention").run(opts),
    "backup": lambda opts, profile: _module("backup").run(opts),
    "feed": lambda opts, profile: _module("feed").run(opts),
    "console": lambda opts, profile: _module("console").run(opts),
    "cluster": lambda opts, profile: _module("cluster").run(opts),
}


def _failed(name: str, exc: BaseException) -> list[Figure]:
    reason = f"{name} benchmark failed: {type(exc).__name__}: {exc}"
    return [Figure(k, None, TARGETS[k], "-", reason=reason) for k in BENCHMARKS[name]]


def run(opts: Options, profile: bool = False) -> dict[str, Any]:
    from bench import soak as soak_mod

    started = time.perf_counter()
    env = environment()
    figures: dict[str, Figure] = {}
    details: dict[str, Any] = {}
    wanted = [n for n in BENCHMARKS
              if (n in opts.only if opts.only else n not in ON_REQUEST)]
    soak = None
    for name in wanted:
        if name == "soak":
            continue
        if name in SOAK_ALONGSIDE and soak is None and "soak" in wanted and opts.quick:
            # --quick: the soak's daemon ingests alongside the latency benchmarks, never
            # alongside the throughput ones (bench/soak.py)
            soak = soak_mod.soak(opts)
            soak.start()
            log(f"soak: a daemon ingesting for {soak.seconds:.0f} s alongside "
                f"{', '.join(n for n in wanted if n in SOAK_ALONGSIDE)}")
        log(f"== {name}")
        t = time.perf_counter()
        try:
            figs, extra = RUNNERS[name](opts, profile)
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            figs, extra = _failed(name, exc), {}
        details[name] = {**extra, "seconds": round(time.perf_counter() - t, 1)}
        for f in figs:
            figures[f.key] = f
            log(f"   {_line(f)}")
    if "soak" in wanted:
        t = time.perf_counter()
        if soak is None:
            log("== soak (alone)")
            soak = soak_mod.soak(opts)
            soak.start()
        try:
            figs, extra = soak.finish()
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            figs, extra = _failed("soak", exc), {}
        details["soak"] = {**extra, "seconds_waited": round(time.perf_counter() - t, 1)}
        for f in figs:
            figures[f.key] = f
    out: dict[str, Any] = {}
    notes: dict[str, str] = {}
    for key in KEYS:
        if not any(key in BENCHMARKS[n] for n in wanted):
            continue
        f = figures.get(key)
        if f is None:
            out[key] = None
            notes[key] = "the benchmark gave no figure"
            continue
        out[key] = None if f.value is None else round(float(f.value), 6)
        if f.value is None:
            notes[key] = f.reason or "no value"
    out["notes"] = notes
    out["targets"] = {k: TARGETS[k] for k in out if k in TARGETS}
    out["baselines"] = {k: f.baseline for k, f in figures.items()}
    out["met"] = {k: f.met() for k, f in figures.items()}
    out["quick"] = opts.quick
    out["scale"] = opts.scale
    out["seconds"] = round(time.perf_counter() - started, 1)
    out["environment"] = env
    out["details"] = details
    return out


def _fmt(v: float | None) -> str:
    if v is None:
        return "null"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"


def _line(f: Figure) -> str:
    return (f"{f.key}: {_fmt(None if f.value is None else float(f.value))} {f.unit} "
            f"(target {f.target}; baseline {f.baseline}){' ' + f.reason if f.reason else ''}")


def table(result: dict[str, Any]) -> str:
    rows = [("figure", "value", "target", "met", "baseline")]
    for key in KEYS:
        if key not in result:
            continue
        met = result["met"].get(key)
        rows.append((key, _fmt(result[key]), result["targets"][key],
                     "-" if met is None else ("yes" if met else "NO"),
                     result["baselines"].get(key, "-")))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True))
                     + "  " + r[4])
        if i == 0:
            lines.append("-" * (sum(widths) + 8 + 30))
    for key, why in result["notes"].items():
        lines.append(f"null {key}: {why}")
    env = result["environment"]
    lines.append(f"{env['cpu']}, {env['cores']} cores, Python {env['python']}, "
                 f"rev {env['git_rev']}, {'quick' if result['quick'] else 'full'} run, "
                 f"scale {result['scale']:g}, {result['seconds']:.0f} s")
    return "\n".join(lines)


def save(result: dict[str, Any], path: str | None) -> str:
    env = result["environment"]
    if path is None:
        name = f"{env['date'][:10]}-{env['git_rev']}{'-quick' if result['quick'] else ''}.json"
        path = str(REPO / "bench" / "results" / name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(result, fh, indent=1, sort_keys=False, default=str)
        fh.write("\n")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes, 60 s soak: < 2 min")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    ap.add_argument("--save", action="store_true",
                    help="write the result to bench/results/<date>-<rev>[-quick].json "
                         "(a full run with --json is always saved)")
    ap.add_argument("--out", help="write the result to this file instead")
    ap.add_argument("--scale", type=float,
                    default=float(os.environ.get("FLOWDECK_BENCH_SCALE", "1")),
                    help="multiply sizes and durations (default $FLOWDECK_BENCH_SCALE or 1)")
    ap.add_argument("--only", default="", help=f"comma-separated: {', '.join(BENCHMARKS)}")
    ap.add_argument("--profile", action="store_true",
                    help="cProfile the pipeline runs (SQLite and PostgreSQL), top 15 by cumtime")
    args = ap.parse_args(argv)
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    unknown = only - set(BENCHMARKS)
    if unknown:
        ap.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    if args.scale <= 0:
        ap.error("--scale must be > 0")
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    result = run(Options(quick=args.quick, scale=args.scale, only=only), profile=args.profile)
    text = table(result)
    if args.profile:
        for k in ("profile_sqlite", "profile_pg"):
            prof = result["details"].get("pipeline", {}).get(k)
            if prof:
                log(f"== {k}\n{prof}")
    if args.out or args.save or (args.json and not args.quick):
        log(f"saved {save(result, args.out)}")
    if args.json:
        log(text)
        print(json.dumps(result, default=str))
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
