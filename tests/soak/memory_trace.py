"""Where a running daemon's memory goes: tracemalloc snapshots of a real `flowdeck daemon`
under the soak's steady ingest (bench/soak.py), diffed over time.

    .venv/bin/python tests/soak/memory_trace.py [--seconds 180] [--rate 5000] [--every 30]
                                               [--frames 12] [--top 15] [--dir DIR]

The daemon runs with tracemalloc on (``--frames`` frames per traceback) and a thread that
dumps a snapshot every ``--every`` seconds into DIR. At the end the script prints, for the
snapshot after the warm-up against the last one, the allocations that grew most (by
traceback, the flowdeck frame nearest the allocation first), their size now and their
growth, and the traced total over time; and, every ``--every`` seconds, a probe of
the process (VmRSS, RssAnon, fds, glibc malloc in use and free, SQLite's own memory,
pymalloc blocks, gc-tracked objects, cyclic garbage collected; ``--garbage`` also counts
the cyclic garbage by type). ``--frames 0`` runs the probe alone: tracemalloc's own
tables (tens of bytes per live block) inflate RSS and slow the daemon several times, so
RSS figures are read from a run without it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo, for bench.*

from bench.common import REPO  # noqa: E402
from bench.soak import Soak  # noqa: E402

WRAPPER = """
import ctypes, gc, json, os, runpy, sys, threading, time, tracemalloc
TRACE = {frames}
GARBAGE = {garbage}
if TRACE:
    tracemalloc.start(TRACE)
_collected = [0, 0, 0]
def _on_gc(phase, info):
    if phase == "stop":
        _collected[info["generation"]] += info["collected"]
gc.callbacks.append(_on_gc)

class _Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

def _probe():
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _Mallinfo2
    try:
        lite = ctypes.CDLL("libsqlite3.so.0")
        lite.sqlite3_memory_used.restype = ctypes.c_int64
    except OSError:
        lite = None
    status = {{}}
    with open("/proc/self/status") as fh:
        for line in fh:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "Threads"):
                status[k] = int(v.split()[0])
    m = libc.mallinfo2()
    return {{"t": time.time(), **status, "fds": len(os.listdir("/proc/self/fd")),
            "malloc_arena_kb": (m.arena + m.hblkhd) // 1024, "malloc_used_kb": (m.uordblks + m.hblkhd) // 1024,
            "malloc_free_kb": m.fordblks // 1024,
            "sqlite_kb": lite.sqlite3_memory_used() // 1024 if lite else None,
            "py_blocks": sys.getallocatedblocks(), "gc_objects": len(gc.get_objects()),
            "gc_enabled": gc.isenabled(), "gc_frozen": gc.get_freeze_count(),
            "traced_kb": tracemalloc.get_traced_memory()[0] // 1024 if TRACE else None,
            "gc_collected": list(_collected), "garbage": _garbage() if GARBAGE else None}}

def _garbage():
    # cyclic garbage now, by type (collected with DEBUG_SAVEALL, counted, released)
    import collections
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        kinds = collections.Counter(type(o).__qualname__ for o in gc.garbage)
        n = len(gc.garbage)
        gc.garbage.clear()
    finally:
        gc.set_debug(0)
    return [n, kinds.most_common(8)]

def _dump():
    i = 0
    while True:
        time.sleep({every})
        with open("{out}/probe.jsonl", "a") as fh:
            fh.write(json.dumps(_probe()) + "\\n")
        if TRACE:
            snap = tracemalloc.take_snapshot()
            snap.dump("{out}/.part")
            os.replace("{out}/.part", "{out}/snap{{:04d}}.tracemalloc".format(i))
        i += 1
threading.Thread(target=_dump, daemon=True, name="memory-probe").start()
sys.argv = ["flowdeck", *sys.argv[1:]]
runpy.run_module("flowdeck.console.cli", run_name="__main__", alter_sys=True)
"""

def where(tb: tracemalloc.Traceback) -> str:
    """The allocation's frames, flowdeck's first (newest first), shortened."""
    frames = list(reversed(tb))  # tracemalloc keeps the oldest frame first
    ours = [f for f in frames if f.filename.startswith(str(REPO))
            and "site-packages" not in f.filename]
    pick = (ours or frames)[:4]
    return " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in pick)


def report(folder: Path, top: int, warm_index: int) -> None:
    snaps = sorted(folder.glob("snap*.tracemalloc"))
    if len(snaps) < 2:
        print(f"only {len(snaps)} snapshot(s) in {folder}")
        return
    filters = [tracemalloc.Filter(False, tracemalloc.__file__),
               tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
               tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>")]
    print("traced total per snapshot (MB):",
          " ".join(f"{sum(s.size for s in tracemalloc.Snapshot.load(str(p)).filter_traces(filters).statistics('filename')) / 2**20:.0f}"
                   for p in snaps))
    a = tracemalloc.Snapshot.load(str(snaps[min(warm_index, len(snaps) - 2)])).filter_traces(filters)
    b = tracemalloc.Snapshot.load(str(snaps[-1])).filter_traces(filters)
    print(f"\n{snaps[min(warm_index, len(snaps) - 2)].name} -> {snaps[-1].name}: grew most, by traceback")
    for st in b.compare_to(a, "traceback")[:top]:
        print(f"  {st.size_diff / 2**20:+8.1f} MB  now {st.size / 2**20:7.1f} MB  "
              f"{st.count_diff:+9d} blocks  {where(st.traceback)}")
    print("\nlargest now, by line")
    for st in b.statistics("lineno")[:top]:
        f = st.traceback[0]
        print(f"  {st.size / 2**20:7.1f} MB {st.count:9d} blocks  {f.filename}:{f.lineno}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=180)
    ap.add_argument("--rate", type=int, default=5000)
    ap.add_argument("--every", type=float, default=30)
    ap.add_argument("--frames", type=int, default=12, help="0: no tracemalloc, probe only")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--garbage", action="store_true",
                    help="collect cyclic garbage at each probe and count it by type")
    ap.add_argument("--dir", type=Path, default=None, help="keep the snapshots here")
    ap.add_argument("--report-only", action="store_true", help="only diff DIR's snapshots")
    args = ap.parse_args()
    folder = args.dir or Path(tempfile.mkdtemp(prefix="flowdeck-memtrace-"))
    folder.mkdir(parents=True, exist_ok=True)
    warm_index = 1  # the second snapshot: after the first interval's warm-up
    if not args.report_only:
        code = WRAPPER.format(frames=args.frames, every=args.every, out=folder,
                              garbage=args.garbage)
        s = Soak(args.seconds, args.rate, concurrent=False, launcher=["-c", code])
        s.start()
        figs, extra = s.finish()
        print(figs[0], extra)
        time.sleep(0.5)
    probe = folder / "probe.jsonl"
    if probe.exists():
        rows = [json.loads(line) for line in probe.read_text().splitlines()]
        cols = [k for k in rows[0] if k != "t"]
        print("probe (KB unless named):\n  " + " ".join(f"{c:>15}" for c in cols))
        for r in rows:
            print("  " + " ".join(f"{r[c]!s:>15}" for c in cols))
    report(folder, args.top, warm_index)
    print(f"\nsnapshots in {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
