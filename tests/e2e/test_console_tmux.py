"""`flowdeck demo` in a real terminal (tmux 120x40): every screen, by keys, as a person sees it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from support.services import REQUIRE_SERVICES

pytestmark = pytest.mark.slow

SCREENS = [  # key, text that must appear on that screen
    ("2", "Sources"),
    ("3", "Quality"),
    ("4", "Caches"),
    ("5", "Recovery"),
    ("6", "Data"),
    ("7", "Insights"),
    ("8", "Events"),
    ("1", "Overview"),
]


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, timeout=20).stdout


@pytest.fixture
def session(tmp_path):
    if shutil.which("tmux") is None:
        if REQUIRE_SERVICES:
            pytest.fail("tmux is not installed and FLOWDECK_REQUIRE_SERVICES=1")
        pytest.skip("tmux is not installed")
    name = f"flowdeck-{uuid.uuid4().hex[:8]}"
    flowdeck = Path(sys.executable).with_name("flowdeck")
    cmd = f"{flowdeck} demo --db sqlite:///{tmp_path / 'demo.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TMUX")}
    env["TERM"] = "xterm-256color"
    subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", "120", "-y", "40", cmd],
                   check=True, env=env, cwd=tmp_path)
    yield name
    subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)


def screen(name: str) -> str:
    return tmux("capture-pane", "-p", "-t", name)


# Generous: each wait ends as soon as the screen shows what it waits for, and under a loaded
# CI machine (two cores, the rest of the suite beside it) the demo's first runs took over 30 s.
WAIT_S = 90.0


def wait_for(name: str, predicate, timeout: float = WAIT_S) -> str:
    deadline = time.time() + timeout
    text = ""
    while time.time() < deadline:
        text = screen(name)
        if predicate(text):
            return text
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f} s; the terminal shows:\n{text}")


def test_demo_every_screen_in_tmux(session):
    # The overview fills with both flows once the first runs have finished.
    text = wait_for(session, lambda t: "weather" in t and "fx" in t and "Overview" in t
                    and "healthy" in t)
    assert "flowdeck" in text
    for key, title in SCREENS:
        tmux("send-keys", "-t", session, key)
        text = wait_for(session, lambda t, title=title: f"▸ {title}" in t)
        if title == "Sources":
            assert "metnet" in text and "airnet" in text and "ecbx" in text
        if title == "Data":
            assert "KSFO" in text or "weather" in text
        if title == "Events":
            assert "run" in text
    tmux("send-keys", "-t", session, "?")
    text = wait_for(session, lambda t: "flowdeck keys" in t)
    tmux("send-keys", "-t", session, "Escape")
    # (wait: an escape followed at once by a key reads as alt+key in a terminal)
    wait_for(session, lambda t: "flowdeck keys" not in t)
    tmux("send-keys", "-t", session, "p")
    wait_for(session, lambda t: "PAUSED" in t)
    tmux("send-keys", "-t", session, "q")
    deadline = time.time() + 15
    while time.time() < deadline and session in tmux("list-sessions"):
        time.sleep(0.2)
    assert session not in tmux("list-sessions"), "q did not quit the console"
