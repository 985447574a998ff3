"""The soak benchmark, shortened to 3 minutes: chat, uploads and notification streams on a
two-node Ray with PostgreSQL while a session actor, a notification child, the LLM, the second node
and the gateway fail in turn; nothing the clients were told was stored may be lost or stored
twice (`benchmarks/soak.py` checks it and says so in its verdict and exit code)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.helpers import ROOT

MINUTES = 3
TIMEOUT_S = 1500  # setup (PostgreSQL, two Ray nodes, the gateway) and the checks on 2 cores


def test_three_minutes_of_faults_lose_nothing_and_store_nothing_twice() -> None:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own Ray
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.soak", "--minutes", str(MINUTES),
         "--no-write"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    output = result.stdout + result.stderr
    verdict = re.search(r"^VERDICT (.*)$", result.stdout, re.MULTILINE)
    assert verdict, output[-6000:]
    assert "lost=0 " in verdict[1] and "duplicated=0 " in verdict[1], output[-6000:]
    assert result.returncode == 0, output[-6000:]
