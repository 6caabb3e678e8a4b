"""Simulated sources: HTTP sources of the demo simulator (pipeline/demo/simulator.py).

A ``simulated`` source's ``url`` is a path on the simulator. The engine's options
``simulator_url`` (one already running), else ``scenario`` and ``seed`` say which
simulator: without a URL, the first simulated source opened starts one in this process
(on the engine's clock) for every simulated source of the engine; it stops when the
engine closes its sources.
"""

from __future__ import annotations

from flowdeck.pipeline.config import SourceConfig
from flowdeck.pipeline.sources.base import Source, SourceContext, register
from flowdeck.pipeline.sources.http import HttpSource


async def _simulator_url(ctx: SourceContext) -> str:
    url = ctx.options.get("simulator_url") or ctx.shared.get(__name__)
    if url:
        return url
    from flowdeck.pipeline.demo.scenarios import Scenario
    from flowdeck.pipeline.demo.simulator import Simulator

    scenario = ctx.options.get("scenario")
    sim = Simulator(seed=ctx.options.get("seed", 7),
                    scenario=Scenario.load(scenario) if scenario else None, clock=ctx.clock)
    await sim.start()
    ctx.on_close(sim.stop)
    ctx.shared[__name__] = sim.base_url
    ctx.log(f"simulator started on {sim.base_url}"
            + (f" (scenario {scenario})" if scenario else ""))
    return sim.base_url


@register("simulated")
async def open_simulated(src: SourceConfig, ctx: SourceContext) -> Source:
    base = await _simulator_url(ctx)
    return HttpSource(src, ctx.http, base.rstrip("/") + "/" + src.url.lstrip("/"),
                      backoff=src.backoff)
