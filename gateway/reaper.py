"""Ray's processes share the fate of the `llmcam serve` that embedded them, also when it is
killed hard (SIGKILL, an out-of-memory kill): no shutdown code runs then.

Ray ties its GCS and raylet to the gateway (the kernel's parent-death signal), and its workers
go with the raylet, but its dashboard and runtime-env agents linger for a minute or more. So the
gateway starts this small process with a pipe as its stdin and keeps the other end open: when
the gateway ends, however it ends, the pipe closes and this process ends every process of the
gateway's Ray node (those whose environment names its `RAY_NODE_ID`), first asking, then
killing. After a clean stop there is nothing left to end. Run as
`python -m gateway.reaper <node id>`; started by gateway.cli only for an embedded Ray."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

GRACE_S = 2.0


def node_processes(node_id: str) -> list[int]:
    """The processes (of this user) whose environment names `node_id`."""
    marker = f"RAY_NODE_ID={node_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone, or another user's
            continue
        if marker in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def end_all(node_id: str) -> int:
    """SIGTERM each, then SIGKILL whoever is left after GRACE_S; how many there were."""
    pids = node_processes(node_id)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + GRACE_S
        while sig == signal.SIGTERM and time.monotonic() < deadline:
            pids = [p for p in pids if Path(f"/proc/{p}").exists() and not _zombie(p)]
            if not pids:
                break
            time.sleep(0.1)
    return len(pids)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def start(node_id: str) -> subprocess.Popen[bytes]:
    """The watcher of this process (the gateway): keep the returned object while it runs."""
    return subprocess.Popen([sys.executable, "-m", "gateway.reaper", node_id],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)


def main() -> None:
    # Ctrl-C reaches the whole foreground process group: the gateway stops, this one stays to
    # look after it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    node_id = sys.argv[1]
    while sys.stdin.buffer.read(1 << 16):  # until EOF: the gateway ended
        pass
    end_all(node_id)


if __name__ == "__main__" and sys.platform.startswith("linux"):
    main()
