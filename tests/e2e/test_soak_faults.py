"""The fault soak, CI's slow tier (issue 15, item 5): a real daemon and its simulator with
every bundled scenario's faults cycling for ``FLOWDECK_SOAK_SECONDS`` (default 600 s);
payloads and records conserved per flow, RSS and open fds flat after the warm-up, no
Traceback in the log (tests/support/faultsoak.py says exactly what is counted where).
The hour-long run is ``tests/soak/fault_soak.py --seconds 3600``."""

from __future__ import annotations

import os

import pytest
from support.faultsoak import run_soak
from support.recovery import daemon_config_text

pytestmark = pytest.mark.slow


def test_every_fault_cycling_conserves_records_and_keeps_memory_and_fds_flat(tmp_path):
    seconds = float(os.environ.get("FLOWDECK_SOAK_SECONDS", "600"))
    res = run_soak(tmp_path, seconds, config_text=daemon_config_text(), progress=print)
    print(res.summary())
    assert not res.problems, "\n".join(res.problems)
    for name, f in res.flows.items():
        assert f["records_in"] > 0 and f["raw"] > 0, name
    # The faults happened: duplicates dropped, bad payloads and records quarantined.
    assert sum(f["dropped"] for f in res.flows.values()) > 0
    assert sum(f["quarantined"] for f in res.flows.values()) > 0
