"""File sources: a path or a glob; each new or changed file is one payload."""

from __future__ import annotations

import asyncio
import glob
import os

from flowdeck.pipeline.config import SourceConfig
from flowdeck.pipeline.sources.base import FetchError, Source, SourceContext, register
from flowdeck.storage.model import RawDraft

_TYPES = {"json": "application/json", "geojson": "application/geo+json",
          "jsonl": "application/x-ndjson", "csv": "text/csv", "xml": "application/xml"}


class FileSource:
    last_attempts = 1  # no retries: a file that cannot be read is read again next run

    def __init__(self, src: SourceConfig, path: str) -> None:
        self.src = src
        self.pattern = path
        self.seen: dict[str, tuple[float, int]] = {}

    async def fetch(self) -> list[RawDraft]:
        return await asyncio.to_thread(self._scan)

    async def close(self) -> None:
        """Nothing to release."""

    def _scan(self) -> list[RawDraft]:
        paths = sorted(glob.glob(self.pattern)) if glob.has_magic(self.pattern) else [self.pattern]
        if not paths or (len(paths) == 1 and not os.path.exists(paths[0])):
            if glob.has_magic(self.pattern):
                return []
            raise FetchError("io", f"no such file: {self.pattern}")
        out, seen, errors = [], {}, []
        for p in paths:
            if not os.path.isfile(p):
                continue
            try:
                st = os.stat(p)
                sig = (st.st_mtime, st.st_size)
                if self.seen.get(p) == sig:
                    continue
                with open(p, "rb") as fh:
                    body = fh.read(self.src.max_bytes + 1)
            except OSError as exc:  # this file's problem, not the other files'
                errors.append(f"cannot read {p}: {exc.strerror}")
                continue
            seen[p] = sig
            truncated = len(body) > self.src.max_bytes
            out.append(RawDraft(self.src.name, body[:self.src.max_bytes] if truncated else body,
                                content_type=_TYPES[self.src.format], truncated=truncated,
                                origin=p))
        # Only files actually handed over count as seen: a failure loses nothing. Files no
        # longer there are forgotten (a drop folder cleaned as it goes would otherwise
        # grow this by one entry per file ever read).
        present = set(paths)
        self.seen = {p: sig for p, sig in self.seen.items() if p in present}
        self.seen.update(seen)
        if errors and not out:
            raise FetchError("io", "; ".join(errors))
        return out


@register("file")
async def open_file(src: SourceConfig, ctx: SourceContext) -> Source:
    return FileSource(src, str(ctx.config.resolve_path(src.path)))
