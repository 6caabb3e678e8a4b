"""What every stage is: the ``Stage`` protocol and the registry the stage chain is built
from.

A stage is one module whose class registers itself under its name::

    @register("validate")
    class Validator: ...

plus one import line in ``flowdeck.pipeline.stages``; where it runs is its place in
``flowdeck.pipeline.model.SOURCE_STAGES`` (per payload) or ``RUN_STAGES`` (once per
run, over every source's records). ``StageChain`` (stages/chain.py) builds the
registered stages of a flow in that order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from flowdeck.pipeline.config import Config, FlowConfig
from flowdeck.pipeline.model import Batch


class Stage(Protocol):
    """One step over a whole batch (never one record at a time: the chain calls it once
    per payload, or once per run)."""

    name: str  # its key in the registry, the run's stage statistics and the console
    version: str  # stored with the flow's pipeline version (lineage, replay)

    def run(self, batch: Batch, now_ms: int) -> None:
        """Change ``batch`` in place: its records, quarantine, issues, dropped counts."""
        ...


StageFactory = Callable[[str, FlowConfig, Config], Stage]  # (flow name, flow, whole config)
STAGE_FACTORIES: dict[str, StageFactory] = {}


def register(name: str, *, needs_config: bool = False):
    """Register the decorated stage class under ``name`` (its ``name`` attribute). It is
    built as ``cls(flow_name, flow)``, or ``cls(flow_name, flow, config)`` with
    ``needs_config`` (a stage that reads files the config points at)."""
    def deco(cls):
        if getattr(cls, "name", None) != name:
            raise ValueError(f"stage {cls.__name__} is named {cls.name!r}, registered as {name!r}")
        if name in STAGE_FACTORIES:
            raise ValueError(f"stage {name!r} is registered twice")
        if needs_config:
            STAGE_FACTORIES[name] = cls
        else:
            STAGE_FACTORIES[name] = lambda flow_name, flow, config: cls(flow_name, flow)
        return cls
    return deco
