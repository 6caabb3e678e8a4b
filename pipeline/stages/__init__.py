"""The stages. Importing this package registers every stage in ``STAGE_FACTORIES``; a
new stage is one module here, one line below and its name in the order in
``flowdeck.pipeline.model``."""

from flowdeck.pipeline.stages import (  # noqa: F401
    collect,
    detect,
    enrich,
    quality,
    resolve,
    transform,
    validate,
)
