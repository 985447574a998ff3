"""Ray's processes share the fate of the `llmcam serve` that embedded them, also when it is
killed hard (SIGKILL, an out-of-memory kill): no shutdown code runs then.

Ray ties its GCS and raylet to the gateway (the kernel's parent-death signal), and its workers
go with the raylet, but its dashboard and runtime-env agents linger for a minute or more. So the
gateway starts this small process with a pipe as its stdin and keeps the other end open. While
the pipe is open it notes the gateway's process tree every few seconds (pid and start time of
each descendant); when the pipe closes (the gateway ended, however it ended) it ends what is
left of that tree, first asking, then killing. After a clean stop nothing is left to end. Run as
`python -m gateway.reaper <gateway pid>`; started by gateway.cli only for an embedded Ray."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

GRACE_S = 2.0
LOOK_S = 3.0  # how often the tree is noted while the gateway runs


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time) of a process, None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), fields[0], int(fields[19])


def descendants(root: int) -> dict[int, int]:
    """Every process under `root`: pid -> start time (to know it again, not a reused pid)."""
    children: dict[int, list[int]] = {}
    started: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            children.setdefault(stat[0], []).append(int(entry.name))
            started[int(entry.name)] = stat[2]
    found: dict[int, int] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if pid != os.getpid() and pid in started:
            found[pid] = started[pid]
            todo += children.get(pid, [])
    return found


def _left(noted: dict[int, int]) -> list[int]:
    return [pid for pid, start in noted.items()
            if (stat := _stat(pid)) is not None and stat[2] == start and stat[1] != "Z"]


def end_all(noted: dict[int, int]) -> int:
    """SIGTERM what is left of the noted processes, SIGKILL whoever stays past GRACE_S; how
    many were left."""
    left = _left(noted)
    count = len(left)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in left:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + GRACE_S
        while sig == signal.SIGTERM and left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = _left({pid: noted[pid] for pid in left})
    return count


def start() -> subprocess.Popen[bytes]:
    """The watcher of this process (the gateway): keep the returned object while it runs."""
    return subprocess.Popen([sys.executable, "-m", "gateway.reaper", str(os.getpid())],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)


def main() -> None:
    # Ctrl-C reaches the whole foreground process group: the gateway stops, this one stays to
    # look after it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    gateway = int(sys.argv[1])
    noted = descendants(gateway)
    while True:
        ready, _, _ = select.select([sys.stdin.buffer], [], [], LOOK_S)
        if ready and not os.read(sys.stdin.fileno(), 1 << 16):
            break  # EOF: the gateway ended
        noted.update(descendants(gateway))
    end_all(noted)


if __name__ == "__main__" and sys.platform.startswith("linux"):
    main()
