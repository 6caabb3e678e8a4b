"""The engine's own log: one event per line, as JSON or text, with the flow, source and run
it is about, and never a secret.

``setup(fmt, level)`` installs one handler on the root logger (stderr): ``json`` writes one
object per line (``ts``, ``level``, ``logger``, ``message`` and, when known, ``flow``,
``source``, ``run_id``, ``exc``), ``text`` the familiar ``time level logger: message``. The
format defaults to text on a terminal and JSON otherwise (a service manager, a pipe).

The flow, source and run of a line come from context variables set where the work is
done (:func:`context`, used by the engine around a run and a source's fetch); the engine
copies the context into its worker thread, so a stage's log line names its run too.

Every handler :func:`setup` installs carries :class:`RedactFilter`, which rewrites the
formatted message (and the traceback) through :func:`flowdeck.pipeline.core.redact.redact`.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import logging
import sys
import traceback
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import IO, Any

from flowdeck.pipeline.core.redact import redact

FORMATS = ("json", "text")

flow_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("flowdeck_flow",
                                                                     default=None)
source_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("flowdeck_source",
                                                                       default=None)
run_var: contextvars.ContextVar[int | None] = contextvars.ContextVar("flowdeck_run",
                                                                    default=None)


@contextlib.contextmanager
def context(*, flow: str | None = None, source: str | None = None,
            run_id: int | None = None) -> Iterator[None]:
    """Log lines inside name this flow / source / run (only the ones given are set; a
    flow's context starts without a run, which :func:`set_run` gives it)."""
    resets: list[Callable[[], None]] = []
    for var, value in ((flow_var, flow), (source_var, source)):
        if value is not None:
            resets.append(functools.partial(var.reset, var.set(value)))
    if run_id is not None or flow is not None:
        resets.append(functools.partial(run_var.reset, run_var.set(run_id)))
    try:
        yield
    finally:
        for reset in reversed(resets):
            reset()


def set_run(run_id: int | None) -> None:
    """Inside a :func:`context` of a flow: the run id, once the store has given one."""
    run_var.set(run_id)


class RedactFilter(logging.Filter):
    """Rewrites a record's message and exception text with secrets masked.

    The message is formatted once here (``msg % args``) and the args dropped, so the
    formatter and every later handler see the redacted text only.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep what there is
            message = str(record.msg)
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        record.exc_info = None  # formatted (and redacted) above
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for name, var in (("flow", flow_var), ("source", source_var), ("run_id", run_var)):
            if getattr(record, name, None) is None:
                setattr(record, name, var.get())
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in ("flow", "source", "run_id"):
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        if record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``2026-12-03T09:00:00.000Z warning flowdeck.engine [fx run 12]: message``."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
        where = [str(v) for v in (getattr(record, "flow", None), getattr(record, "source", None))
                 if v is not None]
        run = getattr(record, "run_id", None)
        if run is not None:
            where.append(f"run {run}")
        ctx = f" [{' '.join(where)}]" if where else ""
        line = f"{ts}Z {record.levelname.lower()} {record.name}{ctx}: {record.getMessage()}"
        if record.exc_text:
            line += "\n" + record.exc_text
        return line


def default_format(stream: IO[str] | None = None) -> str:
    """text on a terminal, json otherwise."""
    stream = stream or sys.stderr
    try:
        return "text" if stream.isatty() else "json"
    except (AttributeError, ValueError):
        return "json"


def make_handler(fmt: str, stream: IO[str] | None = None) -> logging.Handler:
    h = logging.StreamHandler(stream or sys.stderr)
    h.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    h.addFilter(RedactFilter())
    h.set_name("flowdeck")
    return h


def setup(fmt: str | None, level: int | str = logging.WARNING,
          stream: IO[str] | None = None) -> str:
    """Replace the root logger's handlers with one of ``fmt`` (None: the default). Every
    handler already there (a console's hub handler, added later, gets its own filter)
    loses nothing: only handlers this function installed before are replaced."""
    fmt = fmt or default_format(stream)
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    root = logging.getLogger()
    for h in list(root.handlers):
        if h.get_name() == "flowdeck" or isinstance(h, logging.StreamHandler) and \
                getattr(h, "stream", None) in (sys.stderr, stream):
            root.removeHandler(h)
    root.addHandler(make_handler(fmt, stream))
    root.setLevel(level if isinstance(level, int) else
                  getattr(logging, str(level).upper(), logging.WARNING))
    return fmt


def protect(handler: logging.Handler) -> logging.Handler:
    """Give a handler installed elsewhere (the console's hub handler) the redaction filter."""
    if not any(isinstance(f, RedactFilter) for f in handler.filters):
        handler.addFilter(RedactFilter())
    return handler
