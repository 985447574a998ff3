"""Shared pieces of the benchmarks: free ports, servers in subprocesses (their process trees
watched with psutil, stopped with nothing left behind), CPU and memory meters, a py-spy
profiler, percentiles and the results writer (each script owns a section of RESULTS.md
between its markers)."""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
MB = 1_000_000
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _parent_death_signal() -> Any:
    """A preexec_fn that makes a child get SIGTERM if this process dies (Linux only), so even a
    SIGKILLed benchmark leaves no server behind."""
    try:
        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except OSError:
        return None
    return lambda: prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Server:
    """A server in a subprocess, its log in a file, its process tree watched with psutil."""

    def __init__(self, label: str, argv: list[str], env: dict[str, str], log: Path,
                 cwd: Path = ROOT) -> None:
        self.label = label
        self.cwd = cwd
        self.port = free_port()
        self.argv = [*argv, "--port", str(self.port)]
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self._seen: dict[int, psutil.Process] = {}
        self.shutdown_s: float | None = None
        self.killed_after_shutdown: list[str] = []
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        self.starts += 1
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdout=out,
                                         stderr=subprocess.STDOUT,
                                         preexec_fn=_parent_death_signal())
        return self

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def wait_ready(self, timeout: float) -> float:
        """Seconds until GET /healthz answers 200."""
        assert self.proc is not None
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.label} exited with {self.proc.returncode} before it "
                                   f"was ready; log tail:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/healthz", timeout=5).status_code == 200:
                    return time.monotonic() - t0
            time.sleep(0.3)
        raise RuntimeError(f"{self.label} not ready after {timeout:.0f} s; log tail:\n"
                           f"{self.log_tail()}")

    def tree(self) -> list[psutil.Process]:
        """The server and every process under it (Ray's, for the gateway)."""
        assert self.proc is not None
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            procs = []
        for p in procs:
            self._seen.setdefault(p.pid, p)
        return procs

    def category(self, p: psutil.Process) -> str:
        """What a process of the tree is, for the CPU breakdown: the server itself, Ray's own
        processes, or a Ray worker by the actor class in its title (`ray::SessionActor.chat`
        -> SessionActor)."""
        try:
            if self.proc is not None and p.pid == self.proc.pid:
                return "gateway/app process"
            name, cmd = p.name(), p.cmdline()
        except psutil.Error:
            return "gone"
        if name in ("gcs_server", "raylet"):
            return "Ray gcs_server+raylet"
        if cmd and cmd[0].startswith("ray::"):
            title = cmd[0][5:].split(".")[0].split(":")[-1]
            if title in ("IDLE", "") or title.startswith(("Dashboard", "Runtime")):
                return "Ray other (dashboard, agents, idle workers)"
            return f"actor {title}"
        if any("default_worker.py" in a for a in cmd):
            return "Ray other (dashboard, agents, idle workers)"
        return "Ray other (dashboard, agents, idle workers)"

    def settle(self, limit: float, idle_cores: float = 0.25) -> float:
        """Wait until the tree uses under `idle_cores` for a second (startup work done)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < limit:
            before = cpu_by_process(self.tree())
            time.sleep(1.0)
            after = cpu_by_process(self.tree())
            used = sum(v - before.get(k, 0.0) for k, v in after.items())
            if used < idle_cores:
                break
        return time.monotonic() - t0

    def stop(self, timeout: float = 90.0) -> None:
        """SIGTERM, wait; then SIGKILL whatever of its tree is still there (recorded)."""
        if self.proc is None:
            return
        self.tree()
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.killed_after_shutdown.append(f"{self.label} itself (pid {self.proc.pid})")
                self.proc.kill()
                self.proc.wait(10)
        self.shutdown_s = time.monotonic() - t0
        survivors = [p for p in self._seen.values() if _alive(p)]
        if survivors:
            time.sleep(3)  # Ray's processes go a moment after their raylet
            survivors = [p for p in survivors if _alive(p)]
        for p in survivors:
            with contextlib.suppress(psutil.Error):
                self.killed_after_shutdown.append(f"{p.name()} (pid {p.pid})")
                p.kill()  # psutil checks the create time: never a recycled pid


def log_problems(log: Path) -> list[str]:
    """Warning, error and traceback lines of a server's log."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return []
    words = ("WARNING", "ERROR", "Traceback", "Exception", "CRITICAL")
    return [ANSI.sub("", line) for line in lines if any(w in line for w in words)
            and "Token authentication is enabled" not in line]


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def cpu_by_process(procs: list[psutil.Process]) -> dict[tuple[int, float], float]:
    """CPU seconds (user+system) so far, keyed by (pid, create time)."""
    out: dict[tuple[int, float], float] = {}
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            out[(p.pid, p.create_time())] = t.user + t.system
    return out


@dataclass
class CpuMeter:
    """Where the CPU went during a phase: the server's tree by kind, this process (load client
    and OpenAI stand-in), and everything else on the machine."""

    server: Server
    wall: float = 0.0
    by_kind: dict[str, float] = field(default_factory=dict)
    busy_cores: float = 0.0
    _t0: float = 0.0
    _sys0: Any = None
    _procs0: dict[tuple[int, float], float] = field(default_factory=dict)
    _self0: float = 0.0

    def __enter__(self) -> CpuMeter:
        self._t0 = time.monotonic()
        self._sys0 = psutil.cpu_times()
        self._procs0 = cpu_by_process(self.server.tree())
        self._self0 = _self_cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.monotonic() - self._t0
        sys1 = psutil.cpu_times()
        total = sum(sys1) - sum(self._sys0)
        idle = (sys1.idle + sys1.iowait) - (self._sys0.idle + self._sys0.iowait)
        cores = psutil.cpu_count() or 1
        busy = (total - idle) / total * cores * self.wall if total > 0 else 0.0
        self.busy_cores = busy / self.wall if self.wall else 0.0
        procs = self.server.tree()
        after = cpu_by_process(procs)
        kinds = {(p.pid, _ctime(p)): self.server.category(p) for p in procs}
        by_kind: Counter[str] = Counter()
        for key, secs in after.items():
            by_kind[kinds.get(key, "gone")] += secs - self._procs0.get(key, 0.0)
        by_kind["benchmark process (client + stand-in)"] = _self_cpu() - self._self0
        by_kind["other processes on the machine"] = max(0.0, busy - sum(by_kind.values()))
        self.by_kind = dict(by_kind)

    @property
    def others_share(self) -> float:
        """Share of the machine's CPU capacity that other processes took."""
        cores = psutil.cpu_count() or 1
        other = self.by_kind.get("other processes on the machine", 0.0)
        return other / (cores * self.wall) if self.wall else 0.0

    @property
    def own(self) -> float:
        """CPU seconds of the server's own processes (not the load client's, not others')."""
        return sum(v for k, v in self.by_kind.items() if not k.startswith(("benchmark", "other")))

    def summary(self) -> str:
        cores = psutil.cpu_count() or 1
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in
                          sorted(self.by_kind.items(), key=lambda kv: -kv[1]) if v >= 0.05)
        return (f"{self.busy_cores:.2f} of {cores} cores busy over {self.wall:.1f} s; "
                f"CPU time: {parts}")


def _ctime(p: psutil.Process) -> float:
    try:
        return p.create_time()
    except psutil.Error:
        return 0.0


def _self_cpu() -> float:
    t = psutil.Process().cpu_times()
    return t.user + t.system


def tree_uss(procs: list[psutil.Process]) -> tuple[float, int]:
    total, n = 0, 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_full_info().uss
            n += 1
    return total / MB, n



def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)  # nearest rank
    return ordered[min(len(ordered), max(1, math.ceil(q / 100 * len(ordered)))) - 1]



def fmt(value: float | None, spec: str = ".2f") -> str:
    return "—" if value is None else format(value, spec)


def ratio(a: float | None, b: float | None) -> str:
    return "—" if a is None or b is None or b == 0 else f"{a / b:.2f}×"



def machine() -> str:
    model = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    ram = psutil.virtual_memory().total / 2**30
    return (f"{psutil.cpu_count()} cores ({model}), {ram:.1f} GiB RAM, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}")



def write_results(path: Path, marker: str, section: str) -> None:
    """Put `section` between `<!-- marker -->` and `<!-- /marker -->`, leaving the rest."""
    start_mark, end_mark = f"<!-- {marker} -->", f"<!-- /{marker} -->"
    block = f"{start_mark}\n{section}{end_mark}\n"
    text = path.read_text() if path.exists() else "# Benchmark results\n\n"
    start, end = text.find(start_mark), text.find(end_mark)
    if start != -1 and end > start:
        rest = text[end + len(end_mark):].lstrip("\n")
        text = text[:start] + block + ("\n" + rest if rest else "")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def publish(lines: list[str], path: Path, marker: str, write: bool = True) -> None:
    """Print a result section, and put it into RESULTS.md between its markers."""
    text = "\n".join(lines) + "\n"
    print(text)
    if write:
        write_results(path, marker, text)


def load_average() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


# --- profiling


IDLE_FRAMES = {"Condition.wait", "_worker", "Worker.main_loop", "Runner.run", "Thread.run",
               "Event.wait", "Worker.print_logs", "listen_error_messages", "Queue.get",
               "select", "BaseSelector.select", "EpollSelector.select", "Thread.join",
               "_wait_for_tstate_lock", "wait"}


@dataclass
class Profile:
    label: str
    samples: int = 0
    active: int = 0
    self_top: list[tuple[str, float]] = field(default_factory=list)
    inclusive_top: list[tuple[str, float]] = field(default_factory=list)
    note: str = ""

    def lines(self, n: int = 6) -> list[str]:
        if not self.active:
            return [f"- {self.label}: {self.note or 'no samples'}"]
        head = (f"- {self.label}: {self.active} of {self.samples} samples busy "
                f"({self.active / self.samples:.0%}); ")
        return [head + "self: " + "; ".join(f"{v:.0%} `{k}`" for k, v in self.self_top[:n])
                + ". Inclusive (ours and libraries', below the event loop): "
                + "; ".join(f"{v:.0%} `{k}`" for k, v in self.inclusive_top[:n]) + "."]


def _frame_name(frame: str) -> str:
    m = re.match(r"(.*?) \((.*?)(?::\d+)?\)$", frame)
    if not m:
        return frame
    where = m.group(2).split("site-packages/")[-1].split(str(ROOT) + "/")[-1]
    return f"{m.group(1)} ({where})"


def summarize_profile(label: str, path: Path, n: int = 10) -> Profile:
    """Top functions of a py-spy raw (collapsed-stack) profile, as shares of the samples in
    which the process was busy (stacks that end in a wait are idle)."""
    prof = Profile(label)
    self_t: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        prof.note = f"no profile ({exc})"
        return prof
    generic = ("Thread.", "_bootstrap", "<module>", "main (", "run (", "Runner.", "asyncio_run",
               "_serve (", "Server.", "Context.run", "Handle._run", "BaseEventLoop.",
               "_inject_tracing", "async_span_wrapper", "_resume_span")
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if not count.isdigit():
            continue
        c = int(count)
        prof.samples += c
        names = [_frame_name(f) for f in stack.split(";") if f]
        if not names or names[-1].split(" (")[0] in IDLE_FRAMES:
            continue
        prof.active += c
        self_t[names[-1]] += c
        for name in set(names):
            if not name.startswith(generic) and "uvicorn" not in name \
                    and "middleware" not in name.lower():
                incl[name] += c
    if prof.active:
        prof.self_top = [(k, v / prof.active) for k, v in self_t.most_common(n)]
        prof.inclusive_top = [(k, v / prof.active) for k, v in incl.most_common(n)]
    return prof


class Profiler:
    """`py-spy record` on a few processes at once for `seconds` (raw stacks, sampled without
    stopping them); `py-spy` comes from the virtual environment (`pip install py-spy`)."""

    def __init__(self, targets: dict[str, int], seconds: float, out: Path) -> None:
        self.targets, self.seconds, self.out = targets, seconds, out
        self._procs: list[tuple[str, Path, subprocess.Popen[bytes]]] = []

    def start(self) -> Profiler:
        spy = Path(sys.executable).with_name("py-spy")
        for label, pid in self.targets.items():
            path = self.out / f"profile-{label.replace(' ', '_')}-{pid}.txt"
            argv = [str(spy), "record", "-p", str(pid), "-d", str(int(self.seconds)),
                    "-r", "100", "--nonblocking", "-f", "raw", "-o", str(path)]
            with contextlib.suppress(OSError):
                self._procs.append((label, path, subprocess.Popen(
                    argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
        return self

    def finish(self) -> list[Profile]:
        out = []
        for label, path, proc in self._procs:
            try:
                proc.wait(self.seconds + 30)
            except subprocess.TimeoutExpired:
                proc.terminate()
                proc.wait(10)
            out.append(summarize_profile(label, path))
        return out


# The per-user limits high enough never to refuse a benchmark's one client address, and no
# confirmation asked (a benchmark measures the system, not its bounds); the checks still run.
UNBOUNDED_ENV = {
    "LLMCAM_RATE_SESSIONS": "10000000", "LLMCAM_RATE_TURNS": "10000000",
    "LLMCAM_USER_LIVE_SESSIONS": "1000000", "LLMCAM_USER_LISTENERS": "1000000",
    "LLMCAM_USER_STREAMS": "1000000", "LLMCAM_MIN_STREAM_INTERVAL": "1",
    "LLMCAM_CONFIRM_TOOLS": "",
}
