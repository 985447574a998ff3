"""The one harness of the benchmarks: free ports, the environment and command lines of the
servers they start, servers in subprocesses (their process trees watched with psutil, started
again once when a loaded machine fails their start, stopped with nothing left behind), what each
process of a tree is, CPU and memory meters, a py-spy profiler, the OpenAI stand-in for long
runs, an SSE reader, errors with examples, percentiles, scratch dirs, SIGTERM, and the results
writer (each script owns a section of RESULTS.md between its markers).

Over 300 lines on purpose: it is the one harness every benchmark uses (ports, servers, meters,
the results writer), asked for as one place."""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from testing import free_port
from testing.standins import OpenAIServer

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
MB = 1_000_000
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# `llmcam serve` from this checkout (with `server_env`'s PYTHONPATH), and the one-process baseline
LLMCAM_SERVE = [sys.executable, "-m", "gateway.cli", "serve"]
BASELINE_APP = [sys.executable, "-m", "benchmarks.baseline_app"]


def server_env(**values: str | None) -> dict[str, str]:
    """The environment of a server a benchmark starts: this process's, with this checkout on
    PYTHONPATH (the server and its Ray workers import this tree), no Ray or store to join from
    the shell (each run makes its own unless `values` name one), then `values` (None removes a
    variable)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name in ("RAY_ADDRESS", "LLMCAM_DB"):
        env.pop(name, None)
    for name, value in values.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


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
        self.start_note = ""  # why it was started a second time, if it was

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

    def launch(self, timeout: float) -> float:
        """start() and wait_ready(): seconds until ready. A loaded machine can fail Ray's own
        start-up once: then what is left is stopped and the server started once more (the
        reason kept in `start_note`)."""
        for attempt in (1, 2):
            self.start()
            try:
                return self.wait_ready(timeout)
            except RuntimeError as exc:
                self.stop()
                if attempt == 2:
                    raise
                self.start_note = f"first start failed, started again: {str(exc)[-300:]}"
                print(f"{self.label}: {self.start_note}", flush=True)
        raise AssertionError("unreachable")

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
        kind = proc_kind(p, self.proc.pid if self.proc else None)
        if kind in ("root", "gone"):
            return "gateway/app process" if kind == "root" else kind
        if kind in ("gcs_server", "raylet"):
            return "Ray gcs_server+raylet"
        title = kind.removeprefix("ray::")
        if kind.startswith("ray::") and title not in ("IDLE", "") \
                and not title.startswith(("Dashboard", "Runtime")):
            return f"actor {title}"
        return "Ray other (dashboard, agents, idle workers)"

    def actors(self, cls: str) -> list[psutil.Process]:
        """The processes of the tree that run an actor of class `cls` (by their titles)."""
        return [p for p in self.tree() if self.category(p) == f"actor {cls}"]

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

    def stopped(self) -> str:
        """How its stop went, for a report: `3.1 s after SIGTERM; had to kill: …`."""
        note = f"{self.shutdown_s:.1f} s after SIGTERM" if self.shutdown_s is not None else ""
        if self.killed_after_shutdown:
            note += "; had to kill: " + ", ".join(self.killed_after_shutdown[:8])
        return note


def proc_kind(p: psutil.Process, root_pid: int | None) -> str:
    """What a process is: "root" (the server itself), "gcs_server", "raylet", "postgres",
    "ray::<title>" for a Ray worker (the actor class it runs: `ray::SessionActor.chat` and
    `ray::<name>:LLMClient…` give `ray::SessionActor` and `ray::LLMClient`, an idle one
    `ray::IDLE`; a worker with no title `ray::`), "other", or "gone". Each script names the
    kinds for its own tables."""
    try:
        if p.pid == root_pid:
            return "root"
        name, cmd = p.name(), p.cmdline()
    except psutil.Error:
        return "gone"
    if name in ("gcs_server", "raylet"):
        return name
    if name.startswith("postgres") or (cmd and "postgres" in cmd[0]):
        return "postgres"
    if cmd and cmd[0].startswith("ray::"):
        return "ray::" + cmd[0][5:].split(".")[0].split(":")[-1].strip()
    if any("default_worker.py" in a for a in cmd):
        return "ray::"
    return "other"


def postgres_processes(pg: Any) -> list[psutil.Process]:
    """The processes of a `testing.postgres.PostgresServer` (its postmaster and every child);
    none for None."""
    if pg is None:
        return []
    with contextlib.suppress(OSError, ValueError, psutil.Error):
        pid = int((pg.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    return []


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


OTHERS = "other processes on the machine"


@dataclass
class CpuMeter:
    """Where the CPU went during a phase: the server's tree by kind (`kind`, by default the
    server's `category`; `extra` adds processes outside the tree, as PostgreSQL's), this process
    (load client and OpenAI stand-in: `this_process`), and everything else on the machine."""

    server: Server
    kind: Callable[[psutil.Process], str] | None = None
    extra: Callable[[], list[psutil.Process]] | None = None
    this_process: str = "benchmark process (client + stand-in)"
    wall: float = 0.0
    own_by_kind: dict[str, float] = field(default_factory=dict)  # the server's (and extra's)
    by_kind: dict[str, float] = field(default_factory=dict)  # with this process and others
    busy_cores: float = 0.0
    _t0: float = 0.0
    _sys0: Any = None
    _procs0: dict[tuple[int, float], float] = field(default_factory=dict)
    _self0: float = 0.0

    def _procs(self) -> list[psutil.Process]:
        procs = self.server.tree() + (self.extra() if self.extra else [])
        return list({p.pid: p for p in procs}.values())

    def __enter__(self) -> CpuMeter:
        self._t0 = time.monotonic()
        self._sys0 = psutil.cpu_times()
        self._procs0 = cpu_by_process(self._procs())
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
        procs = self._procs()
        after = cpu_by_process(procs)
        kind = self.kind or self.server.category
        kinds = {(p.pid, _ctime(p)): kind(p) for p in procs}
        by_kind: Counter[str] = Counter()
        for key, secs in after.items():
            by_kind[kinds.get(key, "gone")] += secs - self._procs0.get(key, 0.0)
        self.own_by_kind = dict(by_kind)
        by_kind[self.this_process] = _self_cpu() - self._self0
        by_kind[OTHERS] = max(0.0, busy - sum(by_kind.values()))
        self.by_kind = dict(by_kind)

    @property
    def others_share(self) -> float:
        """Share of the machine's CPU capacity that other processes took."""
        cores = psutil.cpu_count() or 1
        return self.by_kind.get(OTHERS, 0.0) / (cores * self.wall) if self.wall else 0.0

    @property
    def own(self) -> float:
        """CPU seconds of the server's own processes (not the load client's, not others')."""
        return sum(self.own_by_kind.values())

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
    """USS summed over the processes (MB) and how many there were."""
    values = uss_mb(procs)
    return sum(values), len(values)


def uss_mb(procs: list[psutil.Process]) -> list[float]:
    """Each process's USS (`memory_full_info().uss`, MB), those that are gone left out."""
    out = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            out.append(p.memory_full_info().uss / MB)
    return out



def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)  # nearest rank
    return ordered[min(len(ordered), max(1, math.ceil(q / 100 * len(ordered)))) - 1]



def fmt(value: float | None, spec: str = ".2f") -> str:
    return "—" if value is None else format(value, spec)


def ratio(a: float | None, b: float | None) -> str:
    return "—" if a is None or b is None or b == 0 else f"{a / b:.2f}×"



def cpu_model(default: str = "unknown CPU") -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return default


def machine() -> str:
    model = cpu_model(platform.processor() or "unknown CPU")
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


def publish(lines: list[str] | str, path: Path, marker: str, write: bool = True) -> None:
    """Print a result section, and put it into RESULTS.md between its markers."""
    text = lines if isinstance(lines, str) else "\n".join(lines) + "\n"
    print(text)
    if write:
        write_results(path, marker, text)


def load_average() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


# --- a run's plumbing


@contextlib.contextmanager
def scratch(prefix: str, keep: bool = False) -> Iterator[Path]:
    """A temp dir for a run's logs and data, removed on the way out unless `keep`."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield tmp
    finally:
        if keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def exit_on_sigterm() -> None:
    """SIGTERM raises SystemExit, so that the cleanup on the way out runs (servers stopped,
    temp dirs removed)."""

    def on_term(signum: int, _: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)


@dataclass
class Errors:
    """Errors by kind (`where: what` up to the first colon), with the first few as examples."""

    keep: int = 6
    width: int = 400
    counts: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def add(self, where: str, what: str) -> None:
        self.counts[f"{where}: {what.split(':')[0][:80]}"] += 1
        if len(self.examples) < self.keep:
            self.examples.append(f"{where}: {what}"[:self.width])

    def __bool__(self) -> bool:
        return bool(self.counts)

    def total(self) -> int:
        return sum(self.counts.values())


class LongRunLLM(OpenAIServer):
    """The OpenAI stand-in for long runs: counts the model calls (`calls`) and keeps at most
    `keep` request bodies (memory stays flat); a subclass answers in `reply`."""

    def __init__(self, keep: int) -> None:
        super().__init__(chunk_size=16)
        self.keep, self.calls = keep, 0

    def _next_reply(self, messages: list[dict[str, Any]]) -> Any:
        with self._lock:
            self.calls += 1
            if len(self._requests) > self.keep:
                self._requests.clear()
        return self.reply(messages)

    def reply(self, messages: list[dict[str, Any]]) -> Any:
        return super()._next_reply(messages)


async def sse_events(lines: AsyncIterator[str]) -> AsyncIterator[dict[str, str]]:
    """The events of an SSE stream's lines, each as its fields (`id`, `event`, `data`);
    comment lines (pings) left out."""
    fields: dict[str, str] = {}
    async for line in lines:
        if line == "":
            if fields:
                yield fields
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")


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
