"""The engine's log: JSON lines with flow/source/run, text on a terminal, secrets masked."""

from __future__ import annotations

import io
import json
import logging
import threading

import pytest

from flowdeck.pipeline.core import logs
from flowdeck.pipeline.core.redact import MASK, redact, redact_obj, register_secret


@pytest.fixture
def capture():
    out = io.StringIO()
    log = logging.getLogger("flowdeck.test.logs")
    h = logs.make_handler("json", out)
    log.addHandler(h)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    yield log, out
    log.removeHandler(h)


def lines(out: io.StringIO) -> list[dict]:
    return [json.loads(ln) for ln in out.getvalue().splitlines()]


def test_json_lines_carry_level_logger_message_and_the_run_they_are_about(capture):
    log, out = capture
    log.warning("outside")
    with logs.context(flow="fx"):
        logs.set_run(42)
        with logs.context(source="ecb"):
            log.error("fetch %s failed", "ecb")
        log.info("after")
    log.info("outside again")
    got = lines(out)
    assert [g["message"] for g in got] == ["outside", "fetch ecb failed", "after", "outside again"]
    assert got[0]["level"] == "warning" and got[0]["logger"] == "flowdeck.test.logs"
    assert "flow" not in got[0] and "run_id" not in got[0]
    assert got[1]["flow"] == "fx" and got[1]["source"] == "ecb" and got[1]["run_id"] == 42
    assert got[2]["flow"] == "fx" and got[2]["run_id"] == 42 and "source" not in got[2]
    assert "flow" not in got[3] and "run_id" not in got[3]
    assert got[0]["ts"].endswith("+00:00")


def test_an_exception_is_one_line_with_its_traceback_masked(capture):
    log, out = capture
    try:
        raise RuntimeError("connect to https://u:pw-1234@db.example/x failed")
    except RuntimeError:
        log.exception("store away")
    (got,) = lines(out)
    assert "pw-1234" not in out.getvalue()
    assert "RuntimeError" in got["exc"] and f"u:{MASK}@db.example" in got["exc"]


def test_secret_shapes_and_registered_values_are_masked(capture):
    log, out = capture
    register_secret("reg1stered-Secret")
    log.warning("GET https://alice:hunter2@h/x?token=abc123&page=2 Authorization: Bearer zz9 "
                "X-Api-Key: kk7 api_key=qq1 value reg1stered-Secret here")
    text = out.getvalue()
    for s in ("hunter2", "abc123", "zz9", "kk7", "qq1", "reg1stered-Secret"):
        assert s not in text, s
    msg = lines(out)[0]["message"]
    assert "page=2" in msg and "alice:" in msg and "value *** here" in msg
    assert redact_obj({"a": ["x token=t0k3n"], "n": 1}) == {"a": ["x token=***"], "n": 1}
    assert redact("no secret in this line: fine") == "no secret in this line: fine"


def test_text_format_names_the_flow_and_run():
    out = io.StringIO()
    log = logging.getLogger("flowdeck.test.text")
    h = logs.make_handler("text", out)
    log.addHandler(h)
    log.propagate = False
    try:
        with logs.context(flow="weather", run_id=7):
            log.warning("slow")
    finally:
        log.removeHandler(h)
    line = out.getvalue().strip()
    assert line.endswith("warning flowdeck.test.text [weather run 7]: slow")


def test_the_default_format_is_text_on_a_terminal_and_json_otherwise():
    class Tty(io.StringIO):
        def isatty(self):
            return True
    assert logs.default_format(Tty()) == "text"
    assert logs.default_format(io.StringIO()) == "json"
    with pytest.raises(ValueError):
        logs.setup("xml", stream=io.StringIO())


def test_the_context_reaches_a_worker_thread_through_copy_context(capture):
    import contextvars
    log, out = capture
    with logs.context(flow="fx", run_id=3):
        ctx = contextvars.copy_context()
    t = threading.Thread(target=ctx.run, args=(log.warning, "in the worker"))
    t.start()
    t.join()
    (got,) = lines(out)
    assert got["flow"] == "fx" and got["run_id"] == 3


def test_every_command_takes_log_format(capsys):
    from flowdeck.console.cli import build_parser
    p = build_parser()
    assert p.parse_args(["daemon", "--log-format", "json"]).log_format == "json"
    assert p.parse_args(["--log-format", "text", "check", "x.yaml"]).log_format == "text"
    assert p.parse_args(["db", "upgrade", "--log-format", "json"]).log_format == "json"
    with pytest.raises(SystemExit):
        p.parse_args(["status", "--log-format", "xml"])
