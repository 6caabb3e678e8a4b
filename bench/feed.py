"""The live feed under load, against bare baselines run in the same process and run.

Three measurements (DESIGN.md section 7):

1. ingest-to-viewer latency at 10,000 records/s, from the engine's hub to a viewer in
   another process: batches of 100 records every 10 ms are published on a real engine's hub
   from a worker thread, shaped exactly as the engine's ``records`` events, and travel
   hub -> feed -> websocket -> viewer. Baseline: the same events sent straight from the
   hub to the socket with ``websockets.broadcast``. Target p99 < 50 ms. Also the full
   path: a payload of ``--engine-batch`` records arrives every batch/rate seconds
   (default 100 records every 10 ms = 10,000 records/s), is committed raw, and a run
   takes every payload that has arrived (``--one-run-per-payload``: one each) through
   every stage -> SQLite -> hub -> feed -> viewer; printed with the rate the engine
   actually sustained, so a run that fell behind says so.
2. 1,000 concurrent viewers on loopback (in client processes): p99 delivery latency at a
   steady rate, and throughput of a burst, against a bare ``websockets.broadcast`` loop
   sending the same bytes to the same clients. Targets p99 < 100 ms, >= 0.7x.
3. the cost of one stalled viewer (connected, subscribed, never reading) to the other
   1,000: throughput with it, against the mean of runs without it. Target <= 5 %.

    .venv/bin/python -m bench.feed [--viewers 1000] [--procs 2] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from websockets.asyncio.client import connect
from websockets.asyncio.server import broadcast, serve

from bench.common import REPO, Figure, Options
from bench.feed_client import pin
from flowdeck.pipeline.config import parse_config
from flowdeck.pipeline.core.clock import SystemClock
from flowdeck.pipeline.core.hub import Event
from flowdeck.pipeline.engine.engine import Engine
from flowdeck.pipeline.serve.control import LocalControl
from flowdeck.pipeline.serve.feed import FeedServer
from flowdeck.pipeline.serve.protocol import envelope
from flowdeck.storage.model import RawDraft
from flowdeck.storage.store import Store

CONFIG = """
flows:
  bench:
    key: station
    sources:
      - name: feed
        kind: file
        path: unused.jsonl
        format: jsonl
        fields: {station: s, ts: t, temperature: temp, pressure: p, sent: sent}
        timestamp: {format: epoch_ms}
    fields:
      station: {type: str, required: true, pattern: "^[A-Z0-9]{4}$"}
      temperature: {type: float, required: true, range: [-90, 60]}
      pressure: {type: float, range: [850, 1090]}
      sent: {type: float}
    detect: [{metric: temperature, methods: [robust_z]}]
"""
DRAIN = 2.0  # seconds between phases for every viewer to drain (--quick: 0.5)
PAD = "x" * 400  # event payload padding: a ~600-byte message, like a fetch or issue event


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


# ---------------------------------------------------------------- client processes


class Clients:
    """Client processes holding viewers; ``wait_ready`` then ``results``."""

    def __init__(
        self, url: str, viewers: int, procs: int, channel: str | None, phases: list[str]
    ) -> None:
        share = [viewers // procs + (1 if i < viewers % procs else 0) for i in range(procs)]
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-m", "bench.feed_client", url, str(k), channel or "",
                 ",".join(phases)],
                stdout=subprocess.PIPE,
                text=True,
                cwd=REPO,
            )
            for k in share
            if k
        ]

    async def wait_ready(self) -> None:
        for p in self.procs:
            line = await asyncio.to_thread(p.stdout.readline)
            if line.strip() != "ready":
                raise RuntimeError("a client process failed to start")

    async def results(self) -> dict:
        merged: dict = {}
        for p in self.procs:
            out = json.loads(await asyncio.to_thread(p.stdout.readline))
            p.wait()
            for phase, st in out.items():
                m = merged.setdefault(phase, {"lat": [], "count": 0, "first": [], "last": []})
                m["lat"] += st["lat"]
                m["count"] += st["count"]
                if st["first"]:
                    m["first"].append(st["first"])
                    m["last"].append(st["last"])
        return merged


# ---------------------------------------------------------------- 1. ingest to viewer


def make_batch(i: int, t0_ms: int, n: int = 100) -> bytes:
    sent = time.time()
    return "\n".join(
        json.dumps(
            {
                "s": f"K{k:03d}",
                "t": t0_ms + i * 1000,
                "temp": 10 + k % 7,
                "p": 1000 + k % 30,
                "sent": sent,
            }
        )
        for k in range(n)
    ).encode()


def records_event(i: int, n: int = 100) -> dict:
    """What the engine's hub carries for one stored batch: count and newest row per key."""
    sent = time.time()
    ts = int(sent * 1000) // 1000 * 1000
    return {
        "count": n,
        "latest": [
            {
                "key": f"K{k:03d}",
                "ts_ms": ts,
                "data": {
                    "station": f"K{k:03d}",
                    "temperature": 10 + (k + i) % 7 * 0.5,
                    "pressure": 1000.0 + k % 30,
                    "sent": sent,
                },
                "quality": 0.97,
                "anomaly_score": 0.4,
                "anomalous": False,
                "flags": [],
                "sources": ["feed"],
            }
            for k in range(n)
        ],
    }


async def ingest_to_viewer(
    seconds: float, bare: bool, engine_rate: float | None = None, batch: int = 100,
    coalesce: bool = True,
) -> tuple[list[float], float, list[float]]:
    """Records at 10,000/s from the hub (or at ``engine_rate`` through the whole engine).

    Through the engine, payloads arrive every batch/rate seconds; each is committed raw
    on arrival, and a run processes every payload that has arrived (as a scheduled run
    takes everything its fetch returns), or with ``coalesce=False`` one run per payload.
    Returns the viewer-side latencies, the records/s processed, and per run the wait of
    its oldest payload from arrival to stored-and-published (server side: a coalesced
    payload superseded by a newer one in the same run is never shown on its own)."""
    with tempfile.TemporaryDirectory() as d:
        cfg = parse_config(CONFIG, str(Path(d) / "bench.yaml"))
        store = Store(f"sqlite:///{Path(d) / 'bench.db'}")
        engine = Engine(cfg, store, clock=SystemClock())
        loop = asyncio.get_running_loop()
        # The daemon's start-up (no schedule: the payloads below are the runs), so the
        # engine runs as a started daemon's does (e.g. the start-up heap frozen for the GC).
        await engine.start(schedule=False, resume=False)
        if bare:
            server, url, pump = await _bare_records_server(engine)
        else:
            feed = FeedServer(LocalControl(engine), host="127.0.0.1", port=0)
            await feed.start()
            url = feed.feed_url
        clients = Clients(url, 1, 1, None if bare else "records:bench", ["ingest"])
        await clients.wait_ready()
        t0_ms = int(time.time() * 1000) - 3_600_000
        interval = 0.01 if engine_rate is None else batch / engine_rate
        batches = int(seconds / interval)
        pauses = Pauses()
        start = time.perf_counter()
        pending = []
        arrived: list[tuple[float, bytes]] = []
        waits: list[float] = []
        for i in range(batches):
            delay = start + i * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if engine_rate is None:  # from the worker thread, as the engine publishes
                pending.append(loop.run_in_executor(engine.worker, _publish, engine, i))
            elif coalesce:
                arrived.append((time.perf_counter(), make_batch(i, t0_ms, batch)))
                pending.append(
                    loop.run_in_executor(engine.worker, _drain, engine, store, arrived, waits)
                )
            else:
                arrived.append((time.perf_counter(), make_batch(i, t0_ms, batch)))
                pending.append(
                    loop.run_in_executor(engine.worker, _drain, engine, store, arrived, waits, 1)
                )
        await asyncio.gather(*pending)
        sustained = batches * (100 if engine_rate is None else batch) / (
            time.perf_counter() - start)
        pauses.stop()
        await asyncio.sleep(0.5)
        if bare:
            pump.cancel()
            server.close()
            await server.wait_closed()
        else:
            await feed.stop()
        res = await clients.results()
        await engine.stop()
        store.close()
    return res["ingest"]["lat"], sustained, waits, pauses


class Pauses:
    """While a measurement runs: garbage-collection pauses per generation (any thread,
    each holds the GIL) and the event loop's lag (how late a 5 ms sleep wakes up)."""

    def __init__(self) -> None:
        self.gc: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self.lag: list[float] = []
        self._t0 = 0.0
        gc.callbacks.append(self._on_gc)
        self._task = asyncio.create_task(self._watch())

    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.gc[info["generation"]].append(time.perf_counter() - self._t0)

    async def _watch(self) -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.005)
            self.lag.append(time.perf_counter() - t - 0.005)

    def stop(self) -> None:
        gc.callbacks.remove(self._on_gc)
        self._task.cancel()

    def line(self) -> str:
        gens = "  ".join(
            f"gen{g} {len(v)}x max {max(v, default=0) * 1000:.1f} ms" for g, v in self.gc.items()
        )
        return (
            f"GC pauses: {gens}; event-loop lag p99 {pct(self.lag, 0.99) * 1000:.1f} ms, "
            f"max {max(self.lag, default=0) * 1000:.1f} ms"
        )


def _publish(engine: Engine, i: int) -> None:
    engine.hub.publish(Event(type="records", ts=time.time(), flow="bench", data=records_event(i)))


def _drain(engine: Engine, store: Store, arrived: list, waits: list, most: int = 0) -> None:
    """One run (on the engine's worker thread) over the payloads that have arrived."""
    take = arrived[:most] if most else arrived[:]
    if not take:
        return  # an earlier run took them
    del arrived[: len(take)]
    # Committed raw together first, as Engine._run commits a run's payloads.
    now = engine.clock.now_ms()
    payloads = [RawDraft("feed", body, now) for _t, body in take]
    ids = store.insert_raws("bench", payloads)
    for payload, (raw_id, _) in zip(payloads, ids, strict=True):
        payload.raw_id = raw_id
    engine.process_payloads("bench", payloads)
    waits.append(time.perf_counter() - take[0][0])


async def _bare_records_server(engine: Engine):
    """The baseline: records events straight from the hub to the sockets, nothing else."""
    sub = engine.hub.subscribe(types={"records"})

    async def handler(ws):
        await ws.wait_closed()

    server = await serve(handler, "127.0.0.1", 0, compression=None)

    async def pump():
        seq = 0
        while True:
            ev = await sub.get()
            seq += 1
            d = ev.data
            broadcast(
                server.connections,
                envelope(
                    "delta",
                    "records:bench",
                    seq,
                    time.time(),
                    {"flow": "bench", "count": d["count"], "records": d["latest"]},
                ),
                text=True,
            )

    task = asyncio.create_task(pump())
    return server, f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}", task


# ---------------------------------------------------------------- 2 and 3. many viewers


def event_data(phase: str, i: int, end: bool = False) -> dict:
    return {"message": PAD, "phase": phase, "i": i, "sent": time.time(), "end": end}


async def run_phase(
    publish, kind: str, name: str, n: int, rate: float, connections, skip=None
) -> float:
    """Publish one phase ('paced' at a rate, or a 'burst'); server (user, system) CPU seconds.

    CPU is counted until every socket buffer (but the stalled viewer's) has drained: the
    server's whole share of the work, without the idle wait that follows. User time is the
    server's own Python work; system time is mostly the kernel sending on loopback.
    """
    t0 = os.times()
    if kind == "paced":
        start = time.perf_counter()
        for i in range(n):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            publish(event_data(name, i, i == n - 1))
    else:
        for i in range(n):
            publish(event_data(name, i, i == n - 1))
            if i % 10 == 9:
                await asyncio.sleep(0)
    while any(
        c.transport.get_write_buffer_size()
        for c in connections
        if c is not skip and not c.transport.is_closing()
    ):
        await asyncio.sleep(0.002)
    t1 = os.times()
    await asyncio.sleep(DRAIN)  # every viewer drains its side before the next phase
    return t1.user - t0.user, t1.system - t0.system


async def many_viewers(
    viewers: int,
    procs: int,
    n_paced: int,
    rate: float,
    n_burst: int,
    rounds: int,
    stall_rounds: int,
    n_light: int,
    light_rate: float,
) -> tuple[dict, dict]:
    """Interleaved phases on the same connections: the bare loop, the feed, the stall."""
    with tempfile.TemporaryDirectory() as d:
        cfg = parse_config(CONFIG, str(Path(d) / "bench.yaml"))
        store = Store(f"sqlite:///{Path(d) / 'bench.db'}")
        engine = Engine(cfg, store, clock=SystemClock())
        engine.hub.bind(asyncio.get_running_loop())
        feed = FeedServer(LocalControl(engine), host="127.0.0.1", port=0)
        await feed.start()
        plan = [
            ("paced", "base-light", n_light, light_rate),
            ("paced", "feed-light", n_light, light_rate),
        ] if n_light else []
        plan += [
            ("paced", "base-paced", n_paced, rate),
            ("paced", "feed-paced", n_paced, rate),
        ]
        for r in range(rounds):
            plan += [
                ("burst", f"base-burst{r}", n_burst, 0),
                ("burst", f"feed-burst{r}", n_burst, 0),
            ]
        for r in range(stall_rounds):  # stalled and not, alternating, ending unstalled
            plan += [
                ("burst", f"feed-stalled{r}", n_burst, 0),
                ("burst", f"feed-burst{rounds + r}", n_burst, 0),
            ]
        clients = Clients(feed.feed_url, viewers, procs, "events", [p[1] for p in plan])
        await clients.wait_ready()
        seq = 0

        def bare(data: dict) -> None:
            """What a bare server would do: encode once, websockets.broadcast to everyone."""
            nonlocal seq
            seq += 1
            now = time.time()
            ev = {"type": "log", "ts": now, "flow": "bench", "seq": seq, "data": data}
            broadcast(feed.server.connections, envelope("delta", "events", seq, now, ev), text=True)

        def via_feed(data: dict) -> None:
            engine.hub.publish(Event(type="log", ts=time.time(), flow="bench", data=data))

        cpu: dict = {"stalled-prefill": [], "stalled-pending": []}
        for kind, name, n, r in plan:
            stalled = skip = None
            if name.startswith("feed-stalled"):
                stalled, prefill = await _stall(feed, engine)
                cpu["stalled-prefill"].append(prefill)
                skip = next(
                    c for c in feed.server.connections if c.remote_address == stalled.local_address
                )
            conns = list(feed.server.connections)
            cpu[name] = await run_phase(
                via_feed if name.startswith("feed") else bare, kind, name, n, r, conns, skip
            )
            if stalled is not None:
                viewer = next((v for v in feed.viewers if v.conn is skip), None)
                cpu["stalled-pending"].append(len(viewer.pending) if viewer else -1)
                stalled.transport.abort()
                await asyncio.sleep(0.5)
        res = await clients.results()
        await feed.stop()
        engine.worker.shutdown()
        store.close()
    return res, cpu


async def _stall(feed: FeedServer, engine: Engine):
    """A viewer that subscribes and never reads, pushed until the server sees it backed up.

    Loopback socket buffers absorb megabytes, so it is fed large records deltas (which only
    it subscribes to) until the feed has started queueing for it; the measured burst then
    runs entirely on the slow path for this viewer.
    """
    ws = await connect(feed.feed_url, compression=None, max_queue=1, ping_interval=None)
    for ch in ("events", "records:bench"):
        await ws.send(json.dumps({"type": "subscribe", "channel": ch}))
    await asyncio.sleep(0.3)
    viewer = next(v for v in feed.viewers if v.conn.remote_address == ws.local_address)
    sent = 0
    while not viewer.pending and sent < 5000:
        engine.hub.publish(
            Event(type="records", ts=time.time(), flow="bench", data=records_event(sent, 1000))
        )
        sent += 1
        await asyncio.sleep(0.005)
    await asyncio.sleep(DRAIN)  # the other viewers drain the slim events this produced
    return ws, sent


def summary(res: dict, cpu: dict, phase: str, viewers: int, n: int) -> dict:
    """Latency percentiles (ms), deliveries/s and server CPU (us per delivery) of a phase."""
    st = res[phase]
    if st["count"] != viewers * n:
        raise RuntimeError(f"{phase}: {st['count']} of {viewers * n} messages delivered")
    lat = st["lat"]
    user, system = cpu[phase]
    return {
        "p50": pct(lat, 0.5) * 1000,
        "p99": pct(lat, 0.99) * 1000,
        "tp": st["count"] / (max(st["last"]) - min(st["first"])),
        "user": user / st["count"] * 1e6,
        "sys": system / st["count"] * 1e6,
        "cpu": (user + system) / st["count"] * 1e6,
    }


def med(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def listed(rows: list[dict], key: str, fmt: str = ",.0f") -> str:
    return ", ".join(f"{r[key]:{fmt}}" for r in rows)


async def part1(args) -> dict:
    bare, _, _, _ = await ingest_to_viewer(args.seconds, bare=True)
    ours: list[float] = []
    if not args.full_path_only:
        ours, _, _, _ = await ingest_to_viewer(args.seconds, bare=False)
    full, sustained, waits, pauses = await ingest_to_viewer(
        args.seconds, bare=False, engine_rate=args.engine_rate, batch=args.engine_batch,
        coalesce=not args.one_run_per_payload,
    )
    print(
        f"\n1. ingest-to-viewer at 10,000 records/s, hub -> viewer ({len(ours)} deltas of "
        f"100 records, {args.seconds:g} s)"
    )
    print(
        f"   baseline (hub -> broadcast): p50 {pct(bare, 0.5) * 1000:6.1f} ms  "
        f"p99 {pct(bare, 0.99) * 1000:6.1f} ms"
    )
    if ours:
        print(
            f"   flowdeck feed:               p50 {pct(ours, 0.5) * 1000:6.1f} ms  "
            f"p99 {pct(ours, 0.99) * 1000:6.1f} ms   (target p99 < 50 ms)"
        )
        print(f"   ratio p99 feed/baseline:     {pct(ours, 0.99) / pct(bare, 0.99):6.2f}")
    mode = "one run per payload" if args.one_run_per_payload else (
        "each run takes every payload that has arrived")
    print(
        f"   full path at {args.engine_rate:,.0f} records/s offered ({args.engine_batch} "
        f"records per payload, {mode}; payload -> raw -> all stages -> SQLite -> hub -> "
        f"feed -> viewer, {len(full)} deltas from {len(waits)} runs), engine sustained "
        f"{sustained:,.0f} records/s:"
    )
    print(
        f"   viewer (newest value shown):  p50 {pct(full, 0.5) * 1000:6.1f} ms  "
        f"p99 {pct(full, 0.99) * 1000:6.1f} ms   (target p99 < 50 ms)"
    )
    print(
        f"   oldest payload of a run, arrival -> stored + published: "
        f"p50 {pct(waits, 0.5) * 1000:6.1f} ms  p99 {pct(waits, 0.99) * 1000:6.1f} ms"
    )
    print(f"   ratio p99 full path/baseline: {pct(full, 0.99) / pct(bare, 0.99):6.2f}")
    print(f"   during the full path, server process: {pauses.line()}")
    return {"bare_p99_ms": pct(bare, 0.99) * 1000, "bare_p50_ms": pct(bare, 0.5) * 1000,
            "feed_only_p99_ms": pct(ours, 0.99) * 1000 if ours else None,
            "full_p99_ms": pct(full, 0.99) * 1000, "full_p50_ms": pct(full, 0.5) * 1000,
            "engine_sustained_records_per_s": sustained, "deltas": len(full),
            "offered_records_per_s": args.engine_rate}


async def part23(args) -> dict:
    v, rounds, sr = args.viewers, args.rounds, args.stall_rounds
    res, cpu = await many_viewers(
        v, args.procs, args.paced, args.rate, args.burst, rounds, sr, args.light, args.light_rate
    )

    def phase(name: str, n: int) -> dict:
        return summary(res, cpu, name, v, n)

    light = (phase("base-light", args.light), phase("feed-light", args.light)) if args.light else None
    paced_b, paced_f = phase("base-paced", args.paced), phase("feed-paced", args.paced)
    base = [phase(f"base-burst{r}", args.burst) for r in range(rounds)]
    ours = [phase(f"feed-burst{r}", args.burst) for r in range(rounds)]
    print(
        f"\n2. {v} viewers on loopback ({args.procs} client processes); ~700-byte messages; "
        f"medians of {rounds} alternating bursts of {args.burst}"
    )
    loads = [("steady load", paced_b, paced_f, args.rate)]
    if light:
        loads.insert(0, ("light load", *light, args.light_rate))
    for label, b, f, rate in loads:
        print(
            f"   delivery latency, {label} ({rate:g} msg/s = {rate * v:,.0f} deliveries/s):\n"
            f"       websockets.broadcast: p50 {b['p50']:6.1f} ms  p99 {b['p99']:6.1f} ms\n"
            f"       flowdeck feed:        p50 {f['p50']:6.1f} ms  p99 {f['p99']:6.1f} ms"
            "   (target p99 < 100 ms)"
        )
    for label, rows in (("websockets.broadcast", base), ("flowdeck feed       ", ours)):
        print(
            f"   throughput {label}: {med(rows, 'tp'):9,.0f} deliveries/s ({listed(rows, 'tp')})"
            f"; server CPU {med(rows, 'user'):.2f} user + {med(rows, 'sys'):.2f} system "
            "us/delivery"
        )
    print(
        f"   ratio feed/broadcast: throughput {med(ours, 'tp') / med(base, 'tp'):.2f}   "
        f"(target >= 0.7); server CPU per delivery {med(base, 'cpu') / med(ours, 'cpu'):.2f}"
    )
    without = [phase(f"feed-burst{rounds + r}", args.burst) for r in range(sr)]
    stalled = [phase(f"feed-stalled{r}", args.burst) for r in range(sr)]
    print(
        f"\n3. one stalled viewer (subscribed, never reading) among {v}: {sr} bursts with it, "
        f"{sr} without, alternating (medians); backed up after {cpu['stalled-prefill']} large "
        f"deltas, {cpu['stalled-pending']} queued (conflated) messages at the end of each"
    )
    for label, rows in (("with it", stalled), ("without", without)):
        print(
            f"   {label}: {med(rows, 'tp'):9,.0f} deliveries/s ({listed(rows, 'tp')}); "
            f"server CPU user {med(rows, 'user'):.2f} ({listed(rows, 'user', '.2f')}) "
            f"+ system {med(rows, 'sys'):.2f} us/delivery"
        )
    print(
        f"   cost to the others: server user CPU (the feed's own work) "
        f"{(med(stalled, 'user') / med(without, 'user') - 1) * 100:+.1f} %, "
        f"total CPU {(med(stalled, 'cpu') / med(without, 'cpu') - 1) * 100:+.1f} %, "
        f"throughput {(1 - med(stalled, 'tp') / med(without, 'tp')) * 100:+.1f} %   "
        "(target <= 5 %)"
    )
    return {"broadcast_ratio": med(ours, "tp") / med(base, "tp"),
            "broadcast_deliveries_per_s": med(base, "tp"), "feed_deliveries_per_s": med(ours, "tp"),
            "paced_p99_ms": paced_f["p99"], "paced_broadcast_p99_ms": paced_b["p99"],
            "stalled_cost_throughput": 1 - med(stalled, "tp") / med(without, "tp"),
            "stalled_cost_user_cpu": med(stalled, "user") / med(without, "user") - 1,
            "stalled_cost_total_cpu": med(stalled, "cpu") / med(without, "cpu") - 1,
            "stalled_with_deliveries_per_s": med(stalled, "tp"),
            "stalled_without_deliveries_per_s": med(without, "tp")}


async def main(args) -> int:
    where = pin("server")
    print(
        f"flowdeck feed benchmark: {os.cpu_count()} CPUs ({where}, clients on the rest), "
        f"{args.viewers} viewers in {args.procs} client processes"
    )
    if "1" in args.parts:
        await part1(args)
    if "2" in args.parts or "3" in args.parts:
        await part23(args)
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser()
    ap.add_argument("--viewers", type=int, default=1000)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument(
        "--engine-rate",
        type=float,
        default=10_000.0,
        help="records/s offered to the engine for the full-path latency",
    )
    ap.add_argument(
        "--engine-batch", type=int, default=100, help="records per payload (at most 1000)"
    )
    ap.add_argument(
        "--one-run-per-payload",
        action="store_true",
        help="full path: process each payload in its own run instead of coalescing",
    )
    ap.add_argument("--paced", type=int, default=100)
    ap.add_argument("--rate", type=float, default=10.0, help="messages/s in the paced phase")
    ap.add_argument("--burst", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3, help="bursts of the feed vs broadcast")
    ap.add_argument("--light", type=int, default=30, help="messages in the light-load phase")
    ap.add_argument("--light-rate", type=float, default=2.0)
    ap.add_argument("--parts", default="123", help="which measurements to run (1, 2, 3)")
    ap.add_argument("--stall-rounds", type=int, default=5)
    ap.add_argument("--full-path-only", action="store_true",
                    help="part 1: skip the hub -> feed measurement (keep baseline and full path)")
    return ap


def run(opts: Options) -> tuple[list[Figure], dict]:
    """The harness's feed figures: full-path p99 at 10,000 records/s against the bare hub ->
    broadcast p99; throughput of 1,000 viewers against websockets.broadcast; the cost of a
    stalled viewer to the others (throughput with it against without it)."""
    global DRAIN
    ap = parser()
    if opts.quick:
        argv = ["--seconds", f"{opts.seconds(4, 2, 1):g}", "--paced", str(opts.n(100, 10, 5)),
                "--burst", str(opts.n(200, 12, 10)), "--rounds", "2", "--stall-rounds", "2",
                "--light", "0", "--full-path-only"]
        DRAIN = 0.5
    else:
        argv = ["--seconds", f"{opts.seconds(5, 3, 1):g}", "--paced", str(opts.n(100, 20, 5)),
                "--burst", str(opts.n(200, 150, 20)), "--light", str(opts.n(30, 0, 5))]
    args = ap.parse_args(argv + ["--viewers", str(opts.n(1000, 1000, 50))])
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    try:
        with contextlib.redirect_stdout(sys.stderr):
            p1 = asyncio.run(_parts(args, "1"))
            p23 = asyncio.run(_parts(args, "23"))
    finally:
        if cpus is not None:
            os.sched_setaffinity(0, cpus)
        DRAIN = 2.0
    extra = {**p1, **p23, "viewers": args.viewers}
    figures = [
        Figure("feed_p99_ms_at_10k", p1["full_p99_ms"], "< 50",
               f"bare hub -> broadcast p99 {p1['bare_p99_ms']:.1f} ms", "ms",
               extra={"engine_sustained_records_per_s": round(
                   p1["engine_sustained_records_per_s"])}),
        Figure("broadcast_ratio_1000_viewers", p23["broadcast_ratio"], ">= 0.9",
               f"websockets.broadcast {p23['broadcast_deliveries_per_s']:,.0f} deliveries/s",
               "x"),
        Figure("stalled_viewer_cost", p23["stalled_cost_throughput"], "<= 0.05",
               f"without it {p23['stalled_without_deliveries_per_s']:,.0f} deliveries/s", "",
               extra={"user_cpu": round(p23["stalled_cost_user_cpu"], 3)}),
    ]
    return figures, extra


async def _parts(args, parts: str) -> dict:
    pin("server")
    out: dict = {}
    if "1" in parts:
        out.update(await part1(args))
    if "2" in parts:
        out.update(await part23(args))
    return out


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parser().parse_args())))
