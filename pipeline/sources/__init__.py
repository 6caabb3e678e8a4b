"""The source kinds. Importing this package registers every kind in ``SOURCES``; a new
kind is one module here and one line below."""

from flowdeck.pipeline.sources import file, http, simulated, websocket  # noqa: F401
from flowdeck.pipeline.sources.base import SOURCES, FetchError, Source, SourceContext

__all__ = ["SOURCES", "FetchError", "Source", "SourceContext"]
