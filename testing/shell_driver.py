"""Drive the shell sandbox (actors.tools.shell) directly, in a process of its own, so tests can run
it as root and as an unprivileged user (`runuser -u USER -- python -m testing.shell_driver`).

Reads a JSON list of steps on stdin and writes one JSON object on stdout:
- {"key": K, "command": C, "timeout": T}: run C for session key K (32 hex digits) in its sandbox;
- {"remove": K}: `remove_scratch(K)`, what the session actor does on delete and passivation.
Answers {"results": [tool answer, or null for a removal], "seconds": [...], "uids": {K: uid},
"scratch": {K: path}, "euid": ...}. The sandbox's scratch root follows TMPDIR.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

from actors.tools import shell


async def drive(steps: list[dict[str, Any]]) -> dict[str, Any]:
    results: list[str | None] = []
    seconds: list[float] = []
    uids: dict[str, int] = {}
    scratch: dict[str, str] = {}
    for step in steps:
        started = time.monotonic()
        if "remove" in step:
            shell.remove_scratch(step["remove"])
            results.append(None)
        else:
            key = step["key"]
            results.append(await shell.run_sandboxed(
                step["command"], key, timeout=float(step.get("timeout", shell.TIMEOUT_S))))
            if shell.scratch_path(key).exists():
                uids[key] = shell.sandbox_uid(key)
                scratch[key] = str(shell.scratch_path(key))
        seconds.append(time.monotonic() - started)
    return {"results": results, "seconds": seconds, "uids": uids, "scratch": scratch,
            "euid": os.geteuid()}


def main() -> None:
    steps = json.load(sys.stdin)
    json.dump(asyncio.run(drive(steps)), sys.stdout)


if __name__ == "__main__":
    main()
