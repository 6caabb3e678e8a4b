"""Only a console loads Textual: the other commands, run for real in a fresh interpreter,
import neither Textual nor rich nor the console's app, screens and widgets.

Each check is a subprocess, so nothing another test imported can hide (or fake) a load.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow

# What a non-console command must not load (a module or anything below it).
CONSOLE_ONLY = ("textual", "textual_serve", "rich", "flowdeck.console.app",
                "flowdeck.console.screens", "flowdeck.console.widgets",
                "flowdeck.console.textual_fixes")

# Run in the child: loaded(), the console-only modules in sys.modules. click is made
# unimportable there: it is no dependency of flowdeck's (the test virtualenv has it for
# schemathesis), and with it `import httpx` loads httpx's own command line and rich, which
# a user's install (tests/e2e/test_install.py: flowdeck and its dependencies only) does not.
PRELUDE = textwrap.dedent(f"""\
    import json, sys
    sys.modules["click"] = None  # as in an install without click: see above
    CONSOLE_ONLY = {CONSOLE_ONLY!r}

    def loaded():
        return sorted(m for m in sys.modules
                      if any(m == p or m.startswith(p + ".") for p in CONSOLE_ONLY))
""")


def python(code: str, cwd) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("FLOWDECK_CONFIG", "FLOWDECK_DB", "FLOWDECK_DEBUG")}
    return subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=180, cwd=cwd, env=env)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_importing_the_cli_loads_no_textual(tmp_path):
    res = python("""
        import flowdeck.console.cli
        import flowdeck.console.client.launcher, flowdeck.console.client.remote
        print(json.dumps(loaded()))
    """, tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == []


def test_the_check_is_able_to_see_textual(tmp_path):
    """The control: the console's app does load Textual, so an empty list above means it."""
    res = python("""
        import flowdeck.console.app
        print(json.dumps(loaded()))
    """, tmp_path)
    assert res.returncode == 0, res.stderr
    assert "textual" in json.loads(res.stdout)


def test_check_on_the_bundled_config_loads_no_textual(tmp_path):
    res = python("""
        from flowdeck.console.cli import main
        from flowdeck.pipeline.config import BUNDLED_CONFIG
        rc = main(["check", str(BUNDLED_CONFIG)])
        print(json.dumps({"rc": rc, "loaded": loaded()}))
    """, tmp_path)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.splitlines()[-1])
    assert out == {"rc": 0, "loaded": []}


def test_daemon_once_and_the_store_commands_load_no_textual(tmp_path):
    """`flowdeck daemon --once` on the bundled config (its simulated sources served by the
    in-process simulator) into a fresh SQLite file, then every other non-console command
    on that file, all in one interpreter: none loads Textual."""
    db = f"sqlite:///{tmp_path / 'flowdeck.db'}"
    feed = f"ws://127.0.0.1:{closed_port()}"
    commands = [
        ["daemon", "--once", "--json", "--db", db],
        ["status", "--json", "--db", db],
        ["export", "weather", "--format", "jsonl", "--db", db, "-o", str(tmp_path / "w.jsonl")],
        ["lineage", "1", "--json", "--db", db],
        ["replay", "weather", "--raw", "--json", "--db", db],
        ["issues", "--json", "--db", db],
        ["actions", "--json", "--db", db],
        ["db", "upgrade", "--db", f"sqlite:///{tmp_path / 'fresh.db'}"],
        ["watch", feed, "--count", "1"],       # nothing listens: one line, exit 1
        ["act", "pause", "--flow", "weather", "--yes", "--connect", feed],
    ]
    res = python(f"""
        import contextlib, io
        from flowdeck.console.cli import main
        results = []
        for argv in {commands!r}:
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                rc = main(argv)
            results.append({{"argv": argv, "rc": rc, "loaded": loaded()}})
        print(json.dumps(results))
    """, tmp_path)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    results = json.loads(res.stdout.splitlines()[-1])
    assert [r["argv"] for r in results] == commands
    for r in results:
        assert r["loaded"] == [], f"{' '.join(r['argv'])} loaded {r['loaded']}"
    rc = {r["argv"][0]: r["rc"] for r in results}
    assert rc["daemon"] == 0 and rc["export"] == 0 and rc["lineage"] == 0
    assert rc["replay"] == 0 and rc["issues"] == 0 and rc["actions"] == 0 and rc["db"] == 0
    assert rc["status"] in (0, 1, 2)
    assert rc["watch"] == 1 and rc["act"] == 1  # the daemon is not there


def test_evaluate_loads_no_textual(tmp_path):
    """`flowdeck evaluate` runs the detect stage over a CSV: no console in sight."""
    (tmp_path / "s.csv").write_text("timestamp,value\n" + "".join(
        f"2014-07-01 00:{i // 60:02d}:{i % 60:02d},{i % 7}\n" for i in range(300)))
    (tmp_path / "labels.json").write_text('{"s.csv": []}')
    res = python("""
        import contextlib, io
        from flowdeck.console.cli import main
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = main(["evaluate", "--data", "s.csv", "--labels", "labels.json", "--json"])
        print(json.dumps({"rc": rc, "files": len(json.loads(out.getvalue())["files"]),
                          "loaded": loaded()}))
    """, tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.splitlines()[-1]) == {"rc": 0, "files": 1, "loaded": []}


def test_simulate_loads_no_textual(tmp_path):
    """`flowdeck simulate` serves until stopped: look at sys.modules once it listens."""
    port = closed_port()
    res = python(f"""
        import os, socket, threading, time
        from flowdeck.console.cli import main

        def look():
            deadline = time.time() + 60
            while time.time() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", {port}), timeout=0.2).close()
                    break
                except OSError:
                    time.sleep(0.1)
            else:
                print(json.dumps({{"listening": False, "loaded": loaded()}}), flush=True)
                os._exit(1)
            print(json.dumps({{"listening": True, "loaded": loaded()}}), flush=True)
            os._exit(0)

        threading.Thread(target=look, daemon=True).start()
        main(["simulate", "--port", "{port}"])
    """, tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads(res.stdout.splitlines()[-1]) == {"listening": True, "loaded": []}
