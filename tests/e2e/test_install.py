"""flowdeck as a user installs it: the wheel built from this checkout, installed with its
dependencies into a fresh virtualenv outside the checkout, run from another folder with no
PYTHONPATH. Nothing is mocked: this is the test that `pip install` + `flowdeck daemon` works
without a clone (it did not before the layout move: the wheel carried no sample_data/)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest
from support.services import REQUIRE_SERVICES

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
# Cython source, its generated C and the editable install's in-place build: what ships is
# the extension the wheel's own build compiled.
COMPILED_SOURCES_AND_BUILDS = (".pyx", ".c", ".so", ".pyd")
# The checkout's folders and where the wheel puts them ([tool.setuptools] package-dir).
PACKAGE_DIRS = {
    "console": "flowdeck/console",
    "pipeline": "flowdeck/pipeline",
    "storage": "flowdeck/storage",
    "themes": "flowdeck/themes",
    "sample_data": "flowdeck/sample_data",
}
# Not part of a build: the checkout's virtualenv, build output, caches, local databases.
COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.pyc", ".*cache",
    "*.db", "*.db-wal", "*.db-shm", "*.db.spool", "flowdeck-spool",
)
OFFLINE_HINTS = ("No matching distribution found", "Could not find a version that satisfies")


def _cannot_fetch(what: str, res: subprocess.CompletedProcess) -> None:
    """A build or install that failed because a package is not reachable offline is a skip
    (a failure in CI, FLOWDECK_REQUIRE_SERVICES=1); any other failure is a failure."""
    output = res.stdout + res.stderr
    if any(hint in output for hint in OFFLINE_HINTS) and not REQUIRE_SERVICES:
        pytest.skip(f"{what}: a package it needs is not available offline:\n{output[-2000:]}")
    pytest.fail(f"{what} failed (exit {res.returncode}):\n{output[-4000:]}")


def _outside_checkout(path: Path) -> Path:
    assert not path.resolve().is_relative_to(ROOT), f"{path} is inside the checkout {ROOT}"
    return path


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a clean copy of the checkout: setuptools reuses build/lib in the
    source tree, so an in-place build could ship modules that no longer exist."""
    tmp = _outside_checkout(tmp_path_factory.mktemp("wheel"))
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=COPY_IGNORE)
    out = tmp / "dist"
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(src)],
        capture_output=True, text=True, timeout=600, cwd=tmp,
    )
    if res.returncode != 0:
        _cannot_fetch("building the wheel", res)
    (built,) = out.glob("flowdeck-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> dict:
    """A fresh virtualenv with the wheel and its dependencies, and a working directory that
    is neither the checkout nor the virtualenv."""
    tmp = _outside_checkout(tmp_path_factory.mktemp("install"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    bindir = venv / "bin"
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "FLOWDECK_CONFIG")}
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    workdir = tmp / "elsewhere"
    workdir.mkdir()
    res = subprocess.run([str(bindir / "python"), "-m", "pip", "install", "--quiet", str(wheel)],
                         capture_output=True, text=True, timeout=900, cwd=workdir, env=env)
    if res.returncode != 0:
        _cannot_fetch("installing the wheel", res)
    return {"venv": venv, "bin": bindir, "env": env, "cwd": workdir}


def flowdeck(inst: dict, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(inst["bin"] / "flowdeck"), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=inst["cwd"], env=inst["env"])


def installed_python(inst: dict, code: str) -> str:
    res = subprocess.run([str(inst["bin"] / "python"), "-c", code], capture_output=True,
                         text=True, timeout=60, cwd=inst["cwd"], env=inst["env"])
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_wheel_carries_the_package_data_and_no_generic_top_level_names(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    tops = {n.split("/", 1)[0] for n in names}
    # One top-level name: no console/, pipeline/, storage/ (nor themes/, sample_data/).
    assert {t for t in tops if not t.endswith(".dist-info")} == {"flowdeck"}, tops
    for required in (
        "flowdeck/themes/flowdeck.tcss",
        "flowdeck/themes/dark.toml",
        "flowdeck/sample_data/flows/demo.yaml",
        "flowdeck/sample_data/scenarios/normal.yaml",
        "flowdeck/sample_data/reference/stations.csv",
        "flowdeck/pipeline/serve/viewer.html",
        "flowdeck/storage/migrations/env.py",
        "flowdeck/storage/migrations/script.py.mako",
        "flowdeck/storage/migrations/versions/0001_initial_schema.py",
    ):
        assert required in names, f"{required} is missing from {wheel.name}"
    assert any(n.startswith("flowdeck/themes/") and n.endswith(".toml") for n in names)
    # Every file of the package folders ships: a new subpackage or data folder that
    # pyproject.toml does not list fails here, not on a user's machine.
    missing = []
    for folder, target in PACKAGE_DIRS.items():
        for path in sorted((ROOT / folder).rglob("*")):
            if path.is_dir() or "__pycache__" in path.parts or path.suffix == ".pyc":
                continue
            if path.suffix in COMPILED_SOURCES_AND_BUILDS:
                continue  # the detection kernel: checked below as the built module
            name = f"{target}/{path.relative_to(ROOT / folder).as_posix()}"
            if name not in names:
                missing.append(name)
    assert not missing, f"not in the wheel: {missing}"
    # The compiled detection kernel (pipeline/_kernel.pyx) ships built: this machine has a
    # C compiler, and the wheel was built with it.
    assert any(n.startswith("flowdeck/pipeline/_kernel.") and n.endswith((".so", ".pyd"))
               for n in names), sorted(n for n in names if "_kernel" in n)
    # ... and not Cython's generated C, a 1.2 MB build artefact.
    assert "flowdeck/pipeline/_kernel.c" not in names


def test_installed_package_is_imported_from_the_virtualenv(installed):
    where = json.loads(installed_python(installed, (
        "import json, sys, flowdeck.console, flowdeck.pipeline, flowdeck.storage\n"
        "print(json.dumps({'files': [m.__path__[0] for m in (flowdeck.console,"
        " flowdeck.pipeline, flowdeck.storage)], 'path': sys.path}))"
    )))
    site = str(installed["venv"])
    for path in where["files"]:
        assert path.startswith(site), f"{path} is not in the virtualenv {site}"
    assert not [p for p in where["path"] if p and Path(p).resolve().is_relative_to(ROOT)]


def test_installed_flowdeck_help_and_check_on_the_bundled_config(installed):
    res = flowdeck(installed, "--help")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("usage: flowdeck")
    # With no --config the commands read FLOWDECK_CONFIG, else the bundled config, which is
    # the package data of the installed wheel.
    bundled = installed_python(
        installed, "from flowdeck.pipeline.config import BUNDLED_CONFIG; print(BUNDLED_CONFIG)")
    assert bundled.startswith(str(installed["venv"])), bundled
    res = flowdeck(installed, "check", bundled)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"{bundled}: ok (2 flows, 6 sources)"


def test_installed_daemon_once_json_stores_records(installed):
    db = installed["cwd"] / "once.db"
    res = flowdeck(installed, "daemon", "--once", "--json", "--db", f"sqlite:///{db}")
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    out = json.loads(res.stdout)
    assert set(out["flows"]) == {"weather", "fx"}
    stored = 0
    for name, flow in out["flows"].items():
        assert flow["status"] == "ok", (name, flow["error"])
        assert flow["payloads"] > 0, name
        assert flow["stages"]["store"]["out"] > 0, name
        stored += flow["stages"]["store"]["out"]
    con = sqlite3.connect(db)
    try:
        (records,) = con.execute("select count(*) from records").fetchone()
    finally:
        con.close()
    assert records == stored


def test_installed_simulator_serves_until_interrupted(installed):
    port = free_port()
    proc = subprocess.Popen(
        [str(installed["bin"] / "flowdeck"), "simulate", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=installed["cwd"], env=installed["env"],
        # A shell that started the tests in the background ignores SIGINT, and a child would
        # inherit that; Ctrl-C is what a user sends, so the simulator gets the default.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    out, err = proc.communicate()
                    pytest.fail(f"the simulator did not start:\n{out}\n{err}")
                time.sleep(0.1)
        time.sleep(1.0)  # serves for a few seconds, as a user would leave it running
        url = f"http://127.0.0.1:{port}/weather/metnet/obs"
        with urllib.request.urlopen(url, timeout=10) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("application/geo+json")
            body = json.loads(resp.read())
        assert body["type"] == "FeatureCollection" and body["features"]
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode in (0, 130), (proc.returncode, err)  # 130: stopped by Ctrl-C
    assert "Traceback" not in err
    assert out.startswith(f"simulator on http://127.0.0.1:{port}")
