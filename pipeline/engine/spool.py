"""The raw spool: fetched payloads the store could not take, kept in order until it can.

When the database is locked or unreachable, a fetched payload cannot be
committed to the raw store (DESIGN.md section 8: raw first). Rather than drop
it, the engine hands it to its flow's spool: one file per payload in a folder
per flow, written to a temporary name, flushed and renamed, so a crash while
the database is away loses nothing either. Every later run (and the engine's
retry timer) first commits the spooled payloads to the raw store, oldest
first, and only then processes them; the raw store's content hash and the
records' idempotent upsert make a payload committed twice (a crash between
commit and unlink) harmless.

The spool is bounded (``store.spool_max`` bytes per flow): past it a new
payload is refused and counted, never allowed to fill the disk.

File format: one JSON header line (source, fetched_ms, content_type,
status_code, truncated, size), a newline, then the body bytes. The spool keeps
``RawDraft``s, the one raw-payload type from fetch to store; ``spool_seq`` is a
payload's place in it (the file name).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import resource
from dataclasses import replace
from pathlib import Path

from flowdeck.storage.crashpoints import crash_point
from flowdeck.storage.model import RawDraft

log = logging.getLogger("flowdeck.spool")

def _fsize_limit() -> int | None:
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return None if soft == resource.RLIM_INFINITY else int(soft)


_NAME = re.compile(r"^(\d{12})\.spool$")


class RawSpool:
    """One flow's buffer. ``folder=None`` keeps it in memory (an in-memory database)."""

    def __init__(self, folder: Path | None, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.dropped = 0
        # why the last payload was refused: "spool_max" (the bound), "disk_full" (ENOSPC)
        # or "io_error" (another OSError); None once one is kept again
        self.refused: str | None = None
        self.refused_error: str | None = None
        self._refused_size = 0
        self._mem: list[RawDraft] = []
        self._sizes: dict[int, int] = {}
        self._seq = 0
        if folder is not None and folder.is_dir():
            for p in folder.iterdir():
                m = _NAME.match(p.name)
                if m:
                    seq = int(m.group(1))
                    self._sizes[seq] = p.stat().st_size
                    self._seq = max(self._seq, seq)
                elif p.name.endswith(".tmp"):  # a write cut short by a crash: never renamed
                    p.unlink(missing_ok=True)

    def __len__(self) -> int:
        return len(self._sizes)

    @property
    def bytes(self) -> int:
        return sum(self._sizes.values())

    def _path(self, seq: int) -> Path:
        assert self.folder is not None
        return self.folder / f"{seq:012d}.spool"

    def add(self, draft: RawDraft) -> bool:
        """Keep a payload. False (and counted in ``dropped``) when the spool is full."""
        body = draft.body
        if self.bytes + len(body) > self.max_bytes:
            self.dropped += 1
            self.refused, self.refused_error = "spool_max", None
            self._refused_size = len(body)
            return False
        self._seq += 1
        if self.folder is None:
            self._mem.append(replace(draft, raw_id=None, spool_seq=self._seq))
            self._sizes[self._seq] = len(body)
            self.refused = self.refused_error = None
            return True
        header = {"source": draft.source, "fetched_ms": draft.fetched_ms,
                  "content_type": draft.content_type, "status_code": draft.status_code,
                  "truncated": draft.truncated, "size": len(body)}
        final = self._path(self._seq)
        tmp = final.with_name(final.name + ".tmp")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                fh.write(json.dumps(header).encode() + b"\n" + body)
                crash_point("mid_spool_write")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        except OSError as exc:  # the spool's disk is full too (ENOSPC): refused and counted
            log.error("cannot spool a payload of %s in %s: %s", draft.source, self.folder, exc)
            tmp.unlink(missing_ok=True)
            self.dropped += 1
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
            self.refused = "disk_full" if full else "io_error"
            self.refused_error = f"{os.strerror(exc.errno) if exc.errno else exc}"
            if exc.errno == errno.EFBIG:  # one payload larger than RLIMIT_FSIZE allows
                self.refused_error += f" (RLIMIT_FSIZE {_fsize_limit()} bytes)"
            self._refused_size = len(body)
            return False
        self._sizes[self._seq] = len(body)
        self.refused = self.refused_error = None
        return True

    def can_take(self) -> bool:
        """Whether a payload like the last refused one would be kept now: False while the
        spool is at its bound or its disk has no room for it (so the engine can stop
        fetching what it could not keep)."""
        if self.refused is None:
            return True
        if self.bytes + self._refused_size > self.max_bytes:
            return False
        if self.refused == "spool_max" or self.folder is None:
            return True
        limit = _fsize_limit()
        if limit is not None and self._refused_size + 4096 >= limit:  # + its header
            return False  # such a payload never fits in one file under RLIMIT_FSIZE
        where = self.folder
        while not where.exists() and where.parent != where:  # not made yet: its disk
            where = where.parent
        try:
            st = os.statvfs(where)
        except OSError:
            return False
        return st.f_bavail * st.f_frsize >= self._refused_size + 65_536  # + header, inode

    def entries(self) -> list[RawDraft]:
        """Every kept payload, oldest first."""
        if self.folder is None:
            return list(self._mem)
        out = []
        for seq in sorted(self._sizes):
            path = self._path(seq)
            try:
                data = path.read_bytes()
                head, _, body = data.partition(b"\n")
                h = json.loads(head)
                if len(body) != h["size"]:
                    raise ValueError(f"{len(body)} bytes, header says {h['size']}")
            except (OSError, ValueError, KeyError) as exc:
                log.error("spool file %s is unreadable (%s); set aside as .bad", path, exc)
                path.rename(path.with_suffix(".bad"))
                self._sizes.pop(seq, None)
                continue
            out.append(RawDraft(h["source"], body, h["fetched_ms"], h.get("content_type"),
                                h.get("status_code"), bool(h.get("truncated")), spool_seq=seq))
        return out

    def remove(self, draft: RawDraft) -> None:
        """Forget a payload (one ``entries`` returned) once the raw store holds it."""
        seq = draft.spool_seq
        self._sizes.pop(seq, None)
        if self.folder is not None:
            self._path(seq).unlink(missing_ok=True)
        else:
            self._mem = [e for e in self._mem if e.spool_seq != seq]
