"""The engine side of flowdeck, in layers: serve/ -> engine/ -> the data path (config,
model, payload, sources/, stages/, detectors, expr, units, demo/) -> core/."""
