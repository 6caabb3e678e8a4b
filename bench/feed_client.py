"""The viewers of bench/feed.py: a client process holding ``n`` websocket viewers.

Its own module, importing websockets and the standard library only, so each client
process starts in a fraction of a second (bench/feed.py imports the whole engine, about
two seconds of CPU before a client could connect).

    python -m bench.feed_client URL N CHANNEL PHASES
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

from websockets.asyncio.client import connect


def pin(role: str) -> str:
    """Server on CPU 0, clients on the others, so they do not take turns on one core."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cpus) < 2:
        return "not pinned (one CPU)"
    mine = {cpus[0]} if role == "server" else set(cpus[1:])
    os.sched_setaffinity(0, mine)
    return f"{role} on CPU {','.join(map(str, sorted(mine)))}"


async def client_main(url: str, n: int, channel: str | None, phases: list[str]) -> None:
    """Open n viewers, print 'ready', then per phase: latencies, count, first/last receive."""
    pin("clients")
    stats = {p: {"lat": [], "count": 0, "first": None, "last": None} for p in phases}
    done = asyncio.Event()
    finished = 0

    async def viewer(i: int) -> None:
        nonlocal finished
        async with connect(
            url, compression=None, max_size=2**26, open_timeout=60, ping_interval=None
        ) as ws:
            if channel:
                await ws.recv()  # hello
                await ws.send(json.dumps({"type": "subscribe", "channel": channel}))
                while json.loads(await ws.recv())["type"] != "snapshot":
                    pass
            ready.append(i)
            async for raw in ws:
                now = time.time()
                m = json.loads(raw)
                if m.get("type") not in ("delta", "bench"):
                    continue
                d = m["data"]
                d = d.get("data", d)
                if "phase" in d:
                    st = stats[d["phase"]]
                    st["count"] += 1
                    st["first"] = st["first"] or now
                    st["last"] = now
                    if i % 10 == 0:  # a sample of viewers is plenty for percentiles
                        st["lat"].append(now - d["sent"])
                    if d.get("end") and d["phase"] == phases[-1]:
                        break
                elif "records" in d:  # ingest-to-viewer: each record carries when it was sent
                    st = stats[phases[0]]
                    st["count"] += 1
                    st["lat"].append(now - max(r["data"]["sent"] for r in d["records"]))
        finished += 1
        if finished == n:
            done.set()

    ready: list[int] = []
    tasks = []
    for i in range(n):
        tasks.append(asyncio.create_task(viewer(i)))
        if i % 50 == 49:
            await asyncio.sleep(0.05)
    while len(ready) < n:
        await asyncio.sleep(0.05)
    print("ready", flush=True)
    await asyncio.wait(tasks)
    print(json.dumps(stats), flush=True)


if __name__ == "__main__":
    url, n, channel, phases = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    asyncio.run(client_main(url, n, channel or None, phases.split(",")))
