"""Chat load: a burst of new sessions, then every session chatting, through the HTTP gateway.

Runs the real gateway (`llmcam serve`, embedded Ray, one actor per session) and, in the same run,
a baseline with the original llmcam's design (`benchmarks/baseline_app.py`: one process, sessions
in module-level dicts), both against the same zero-latency OpenAI stand-in, and writes a table to
`benchmarks/RESULTS.md` between `<!-- chat_load -->` and `<!-- /chat_load -->`.

    cd /work/main && .venv/bin/python benchmarks/chat_load.py [--sessions 100] [--turns 10]

Bounded: every phase has a time limit, and the servers it starts (and their temp dirs) are
removed on the way out, also on error or SIGTERM.
"""

from __future__ import annotations

import os
import sys

os.environ["YOLO_OFFLINE"] = "1"
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # read by Ray at import time

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import argparse
import asyncio
import contextlib
import ctypes
import glob
import importlib.metadata
import json
import math
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import psutil

from tests.standins import OpenAIServer

MARK_START, MARK_END = "<!-- chat_load -->", "<!-- /chat_load -->"
MB = 1_000_000
TARGET_P99_RATIO = 1.3
TARGET_BURST_S = 30.0
TARGET_USS_MB = 50.0
MEMORY_SAMPLES = 5
IDLE_WINDOW_S = 10.0
CONTENTION = 0.2  # share of the machine taken by others beyond which timings are not trusted
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


# --- the servers under test


class Server:
    """A server in a subprocess, its log in a file, its process tree watched with psutil."""

    def __init__(self, label: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.label = label
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
            self.proc = subprocess.Popen(self.argv, env=self.env, cwd=ROOT, stdout=out,
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
        try:
            if self.proc is not None and p.pid == self.proc.pid:
                return "gateway/app process"
            name, cmd = p.name(), p.cmdline()
        except psutil.Error:
            return "gone"
        if name in ("gcs_server", "raylet"):
            return "Ray gcs_server+raylet"
        if (cmd and cmd[0].startswith("ray::")) or any("default_worker.py" in a for a in cmd):
            return "Ray workers (session actors)"
        return "Ray other (dashboard, agents)"

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


# --- the load


@dataclass
class Load:
    burst_s: float | None = None
    first_reply_s: list[float] = field(default_factory=list)  # from t0, per answered session
    create_s: list[float] = field(default_factory=list)
    turn_s: list[float] = field(default_factory=list)  # turns 2..N
    turns_wall_s: float | None = None
    sids: list[str] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    tools: tuple[int, int] | None = None  # count, JSON bytes
    burst_cpu: str = ""
    turns_cpu: str = ""
    burst_own_cpu_s: float | None = None
    turns_own_cpu_s: float | None = None
    burst_others: float | None = None
    turns_others: float | None = None

    def error(self, where: str, what: str) -> None:
        self.errors[f"{where}: {what.split(':')[0]}"] += 1
        if len(self.examples) < 6:
            self.examples.append(f"{where}: {what}"[:400])


async def _turn(client: httpx.AsyncClient, sid: str, content: str, load: Load, where: str) -> bool:
    try:
        r = await client.post(f"/api/sessions/{sid}/messages", json={"content": content})
    except httpx.HTTPError as exc:
        load.error(where, f"{type(exc).__name__}: {exc}")
        return False
    if r.status_code != 200:
        load.error(where, f"HTTP {r.status_code}: {r.text[:300]}")
        return False
    reply = r.json().get("reply")
    if reply != "echo: " + content:
        load.error(where, f"wrong reply: {reply!r:.200}")
        return False
    return True


async def run_load(server: Server, sessions: int, turns: int, phase_limit: float) -> Load:
    load = Load()
    # A fresh connection per request: with keep-alive, a starved uvicorn closed idle
    # connections just as the next request came (ReadError), whatever the client's expiry.
    limits = httpx.Limits(max_connections=sessions * 2, max_keepalive_connections=0)
    timeout = httpx.Timeout(phase_limit, connect=30)
    async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=timeout) as client:
        meter = CpuMeter(server).__enter__()
        t0 = time.perf_counter()

        async def newcomer(k: int) -> None:
            try:
                r = await client.post("/api/sessions")
            except httpx.HTTPError as exc:
                load.error("create", f"{type(exc).__name__}: {exc}")
                return
            if r.status_code != 201:
                load.error("create", f"HTTP {r.status_code}: {r.text[:300]}")
                return
            load.create_s.append(time.perf_counter() - t0)
            sid = r.json()["session_id"]
            if await _turn(client, sid, f"hello from session {k}, turn 1", load, "turn 1"):
                load.first_reply_s.append(time.perf_counter() - t0)
                load.sids.append(sid)

        tasks = [asyncio.create_task(newcomer(k)) for k in range(sessions)]
        _, pending = await asyncio.wait(tasks, timeout=phase_limit)
        for task in pending:
            task.cancel()
        if pending:
            load.errors[f"burst: unanswered after {phase_limit:.0f} s"] += len(pending)
        meter.__exit__()
        load.burst_cpu = meter.summary()
        load.burst_own_cpu_s = meter.own
        load.burst_others = meter.others_share
        if len(load.first_reply_s) == sessions:
            load.burst_s = max(load.first_reply_s)
        if not load.sids:
            return load
        with contextlib.suppress(httpx.HTTPError, ValueError):
            r = await client.get(f"/api/sessions/{load.sids[0]}/tools")
            load.tools = (len(r.json()), len(json.dumps(r.json())))

        async def chatter(k: int, sid: str) -> None:
            for turn in range(2, turns + 1):
                t = time.perf_counter()
                if await _turn(client, sid, f"hello from session {k}, turn {turn}", load,
                               f"turn {turn}"):
                    load.turn_s.append(time.perf_counter() - t)

        meter = CpuMeter(server).__enter__()
        t1 = time.perf_counter()
        tasks = [asyncio.create_task(chatter(k, sid)) for k, sid in enumerate(load.sids)]
        _, pending = await asyncio.wait(tasks, timeout=phase_limit)
        for task in pending:
            task.cancel()
        if pending:
            load.errors[f"turns: sessions unfinished after {phase_limit:.0f} s"] += len(pending)
        load.turns_wall_s = time.perf_counter() - t1
        meter.__exit__()
        load.turns_cpu = meter.summary()
        load.turns_own_cpu_s = meter.own
        load.turns_others = meter.others_share
    return load


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)  # nearest rank
    return ordered[min(len(ordered), max(1, math.ceil(q / 100 * len(ordered)))) - 1]


# --- one system, start to stop


@dataclass
class Result:
    label: str
    ready_s: float = 0.0
    load: Load = field(default_factory=Load)
    idle_uss_mb: tuple[float, int] = (0.0, 0)
    end_uss_mb: tuple[float, int] = (0.0, 0)
    actor_uss_mb: list[float] = field(default_factory=list)
    actor_uss_note: str = ""
    llm_calls: int = 0
    idle_cpu: str = ""
    idle_cores: float | None = None
    log_problems: list[str] = field(default_factory=list)
    startup_note: str = ""
    shutdown: str = ""
    log_tail: str = ""

    @property
    def turns_per_s(self) -> float | None:
        lo = self.load
        return len(lo.turn_s) / lo.turns_wall_s if lo.turns_wall_s else None


def measure(server: Server, llm: OpenAIServer, args: argparse.Namespace,
            actor_memory: bool) -> Result:
    result = Result(server.label)
    try:
        server.start()
        try:
            result.ready_s = server.wait_ready(args.startup_timeout)
        except RuntimeError as exc:  # e.g. Ray's node timing out on a machine that is too busy
            if server.proc is None or server.proc.poll() is None:
                raise
            result.startup_note = f"first start failed, started again: {str(exc)[-300:]}"
            server.start()
            result.ready_s = server.wait_ready(args.startup_timeout)
        server.settle(60)
        result.idle_uss_mb = tree_uss(server.tree())
        calls0 = len(llm.requests)
        result.load = asyncio.run(run_load(server, args.sessions, args.turns,
                                           args.phase_timeout))
        result.llm_calls = len(llm.requests) - calls0
        with CpuMeter(server) as idle:
            time.sleep(IDLE_WINDOW_S)
        result.idle_cpu = idle.summary()
        result.idle_cores = idle.own / idle.wall
        result.end_uss_mb = tree_uss(server.tree())
        if actor_memory and result.load.sids:
            result.actor_uss_mb, result.actor_uss_note = session_actor_uss(
                server, result.load.sids)
    except Exception as exc:
        result.load.error("run", f"{type(exc).__name__}: {exc}")
    finally:
        if result.load.errors:
            result.log_tail = server.log_tail()
        server.stop()
        result.log_problems = log_problems(server.log)
        result.shutdown = f"{server.shutdown_s:.1f} s after SIGTERM" if server.shutdown_s else ""
        if server.killed_after_shutdown:
            result.shutdown += "; had to kill: " + ", ".join(server.killed_after_shutdown[:8])
        llm.reset()
    return result


def session_actor_uss(server: Server, sids: list[str]) -> tuple[list[float], str]:
    """USS of a few live session actors, found by name through the gateway's own Ray."""
    ports = glob.glob(str(Path(server.env["RAY_TMPDIR"]) / "ray" / "session_*"
                          / "gcs_server_port_*"))
    if not ports:
        return [], "GCS port file not found"
    address = "127.0.0.1:" + Path(ports[0]).read_text().strip()
    # The embedded Ray uses token auth (on by default for local clusters since Ray 2.59); a
    # driver that joins by address must ask for it too, and finds the token in ~/.ray.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    from actors.names import NAMESPACE, session_key

    step = max(1, len(sids) // MEMORY_SAMPLES)
    picked = sids[::step][:MEMORY_SAMPLES]
    values: list[float] = []
    ray.init(address=address, namespace=NAMESPACE, logging_level="WARNING",
             log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        for sid in picked:
            actor = ray.get_actor("session:" + session_key(sid), namespace=NAMESPACE)
            pid = ray.get(actor.start.remote(), timeout=60)["pid"]
            values.append(psutil.Process(pid).memory_full_info().uss / MB)
    finally:
        ray.shutdown()
    return values, f"median of {len(values)} sessions"


# --- the report


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "—" if value is None else format(value, spec)


def ratio(a: float | None, b: float | None) -> str:
    return "—" if a is None or b is None or b == 0 else f"{a / b:.2f}×"


def verdict(ok: bool | None, others: list[float | None] | None = None) -> str:
    """yes / no; for a time-based target, 'unreliable' where other processes on the machine
    took more than CONTENTION of its CPU while it was measured."""
    if ok is None:
        return "n/a"
    worst = max((x for x in others or [] if x is not None), default=0.0)
    if worst > CONTENTION:
        return f"unreliable: others took {worst:.0%} of the CPU"
    return "yes" if ok else "**no**"


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


def report(args: argparse.Namespace, ours: Result, base: Result | None, started: datetime,
           took: float, load_before: tuple[float, float, float]) -> str:
    lo, bl = ours.load, base.load if base else None
    b_tps = base.turns_per_s if base else None
    b_p50 = pct(bl.turn_s, 50) if bl else None
    b_p99 = pct(bl.turn_s, 99) if bl else None
    o_p50, o_p99 = pct(lo.turn_s, 50), pct(lo.turn_s, 99)
    uss = statistics.median(ours.actor_uss_mb) if ours.actor_uss_mb else None
    n = args.sessions

    def errs(r: Result | None) -> str:
        if r is None:
            return "skipped"
        return str(sum(r.load.errors.values())) if r.load.errors else "0"

    def ms(v: float | None) -> str:
        return fmt(v * 1000 if v is not None else None, ".0f")

    def tps_ok() -> bool | None:
        if ours.turns_per_s is None or b_tps is None:
            return None
        return ours.turns_per_s >= b_tps

    def p99_ok() -> bool | None:
        if o_p99 is None or b_p99 is None:
            return None
        return o_p99 <= TARGET_P99_RATIO * b_p99

    def cpu_ms(r: Result | None, burst: bool) -> float | None:
        if r is None:
            return None
        spent = r.load.burst_own_cpu_s if burst else r.load.turns_own_cpu_s
        done = len(r.load.first_reply_s if burst else r.load.turn_s)
        return spent / done * 1000 if spent is not None and done else None

    o_cb, b_cb = cpu_ms(ours, True), cpu_ms(base, True)
    o_ct, b_ct = cpu_ms(ours, False), cpu_ms(base, False)
    burst_ok = lo.burst_s is not None and lo.burst_s <= TARGET_BURST_S
    uss_ok = None if uss is None else uss <= TARGET_USS_MB
    def per_session(r: Result | None) -> str:
        if r is None:
            return "skipped"
        return fmt((r.end_uss_mb[0] - r.idle_uss_mb[0]) / n, ".1f")

    def tools(r: Result | None) -> str:
        t = r.load.tools if r else None
        return f"{t[0]} / {t[1]} B" if t else "—"

    rows = [
        (f"burst: all {n} new sessions answered their first message (s)",
         fmt(lo.burst_s, ".1f"), fmt(bl.burst_s if bl else None, ".1f"),
         ratio(lo.burst_s, bl.burst_s if bl else None), f"≤ {TARGET_BURST_S:.0f} s",
         verdict(burst_ok, [lo.burst_others])),
        ("burst: first reply p50 / p99 after t0 (s)",
         f"{fmt(pct(lo.first_reply_s, 50), '.1f')} / {fmt(pct(lo.first_reply_s, 99), '.1f')}",
         (f"{fmt(pct(bl.first_reply_s, 50), '.1f')} / {fmt(pct(bl.first_reply_s, 99), '.1f')}"
          if bl else "skipped"), "", "", ""),
        (f"turns/s (turns 2..{args.turns}, all sessions at once)", fmt(ours.turns_per_s, ".1f"),
         fmt(b_tps, ".1f"), ratio(ours.turns_per_s, b_tps), "≥ baseline",
         verdict(tps_ok(), [lo.turns_others, bl.turns_others if bl else None])),
        ("turn latency p50 (ms)", ms(o_p50), ms(b_p50), ratio(o_p50, b_p50), "", ""),
        ("turn latency p99 (ms)", ms(o_p99), ms(b_p99), ratio(o_p99, b_p99),
         f"≤ {TARGET_P99_RATIO}× baseline",
         verdict(p99_ok(), [lo.turns_others, bl.turns_others if bl else None])),
        ("share of the machine's CPU taken by other processes, burst / turns",
         f"{fmt(lo.burst_others, '.0%')} / {fmt(lo.turns_others, '.0%')}",
         f"{fmt(bl.burst_others, '.0%')} / {fmt(bl.turns_others, '.0%')}" if bl else "skipped",
         "", f"≤ {CONTENTION:.0%}", ""),
        ("CPU the system spent per new session, its first turn included (ms)",
         fmt(o_cb, ".0f"), fmt(b_cb, ".0f"), ratio(o_cb, b_cb), "", ""),
        ("CPU the system spent per turn, turns 2.. (ms)",
         fmt(o_ct, ".1f"), fmt(b_ct, ".1f"), ratio(o_ct, b_ct), "", ""),
        ("session actor USS after the turns, " + (ours.actor_uss_note or "not measured")
         + " (MB)", fmt(uss, ".1f"), "—", "", f"≤ {TARGET_USS_MB:.0f} MB", verdict(uss_ok)),
        ("whole system USS idle → after the run (MB, processes)",
         f"{ours.idle_uss_mb[0]:.0f} ({ours.idle_uss_mb[1]}) → "
         f"{ours.end_uss_mb[0]:.0f} ({ours.end_uss_mb[1]})",
         (f"{base.idle_uss_mb[0]:.0f} ({base.idle_uss_mb[1]}) → "
          f"{base.end_uss_mb[0]:.0f} ({base.end_uss_mb[1]})" if base else "skipped"),
         "", "", ""),
        ("USS growth per session over the run (MB)", per_session(ours), per_session(base),
         "", "", ""),
        ("errors (HTTP, timeouts, wrong replies)", errs(ours), errs(base), "", "0", ""),
        ("LLM calls / turns answered",
         f"{ours.llm_calls} / {len(lo.first_reply_s) + len(lo.turn_s)}",
         f"{base.llm_calls} / {len(bl.first_reply_s) + len(bl.turn_s)}" if base and bl
         else "skipped", "", "", ""),
        ("tools sent with every LLM call (count / JSON)", tools(ours), tools(base), "", "", ""),
        (f"CPU used with no request in flight, {IDLE_WINDOW_S:.0f} s after the run (cores)",
         fmt(ours.idle_cores, ".2f"), fmt(base.idle_cores if base else None, ".2f"),
         "", "", ""),
        ("ready after start (s)", fmt(ours.ready_s, ".1f"),
         fmt(base.ready_s if base else None, ".1f"), "", "", ""),
    ]
    lines = [
        "## Chat load (`benchmarks/chat_load.py`)",
        "",
        f"Run {started:%Y-%m-%d %H:%M} UTC, {took / 60:.1f} min in all, on {machine()}; "
        f"Ray {importlib.metadata.version('ray')}. Load average (1 / 5 / 15 min) before the run "
        f"{' / '.join(f'{x:.2f}' for x in load_before)}, after it "
        f"{' / '.join(f'{x:.2f}' for x in os.getloadavg())}.",
        "",
        f"What: {n} sessions created at once (`POST /api/sessions`, each followed at once by "
        f"its first `POST /api/sessions/{{sid}}/messages`), then turns 2..{args.turns} of every "
        "session, all sessions at the same time (each session's turns one after another), "
        "measured from the HTTP side with one httpx.AsyncClient. LLM: the zero-latency OpenAI "
        "stand-in (`tests.standins.OpenAIServer`, streaming, echoes the user's message; every "
        "reply is checked), in the benchmark's own process. llmcam: `llmcam serve` (embedded "
        "Ray, one actor per session, SQLite journal). Baseline: `benchmarks/baseline_app.py`, "
        "the original llmcam's design (one uvicorn process, sessions in module-level dicts, "
        "same routes shape, same OpenAI client streaming, same stand-in). Ratios are "
        "llmcam / baseline. USS = `psutil.Process(pid).memory_full_info().uss`, MB = 10^6 bytes.",
        "",
        "| measure | llmcam (actor per session) | baseline (original design) | ratio | target "
        "| met |",
        "|---|---|---|---|---|---|",
        *(f"| {' | '.join(row)} |" for row in rows),
        "",
        "\"CPU the system spent\" counts the CPU time of the server's own processes (for "
        "llmcam: the gateway, Ray's processes and the actors) and nothing else, so unlike the "
        "times above it does not depend on what else runs on the machine.",
        "",
        "Where the CPU went:",
        f"- llmcam, burst: {lo.burst_cpu or '—'}",
        f"- llmcam, turns: {lo.turns_cpu or '—'}",
        f"- llmcam, idle after the run: {ours.idle_cpu or '—'}",
        *([f"- baseline, burst: {bl.burst_cpu or '—'}",
           f"- baseline, turns: {bl.turns_cpu or '—'}",
           f"- baseline, idle after the run: {base.idle_cpu or '—'}"] if base and bl
          else ["- baseline: skipped"]),
        "",
        f"Shutdown: llmcam {ours.shutdown or '—'}"
        + (f"; baseline {base.shutdown or '—'}" if base else "") + ".",
    ]
    for r in (ours, base):
        if r and r.load.errors:
            lines += ["", f"Errors in {r.label}: "
                      + "; ".join(f"{k} × {v}" for k, v in r.load.errors.items()),
                      *(f"- `{e}`" for e in r.load.examples)]
    for r in (ours, base):
        if r and r.startup_note:
            lines += ["", f"{r.label}: {r.startup_note}"]
        if r and r.log_problems:
            lines += ["", f"{r.label}'s log had {len(r.log_problems)} warning/error lines, "
                      "the first ones:", *(f"- `{x[:300]}`" for x in r.log_problems[:5])]
    lines += ["", "Limits of these figures: " + limits_note(ours, base)]
    return "\n".join(lines) + "\n"


def limits_note(ours: Result, base: Result | None) -> str:
    cores = psutil.cpu_count() or 1
    notes = [
        f"everything (load client, stand-in, gateway, Ray, {len(ours.load.sids)} actor "
        f"processes{', baseline' if base else ''}) shares these {cores} cores, so the figures "
        "measure CPU cost per turn more than anything else; the breakdown above says which "
        "processes spent it",
        "the stand-in runs in the benchmark's process (one GIL with the load client), which "
        "caps both systems alike",
        "other processes on the machine (other work running at the same time) take a share "
        "that varies between runs: see 'other processes on the machine' above",
        "with zero LLM latency every millisecond is overhead: with a real model (seconds per "
        "turn) the differences in turn latency shrink relative to the model's time",
        "the baseline keeps nothing durable and runs no isolation; llmcam journals every "
        "message to SQLite before it counts",
    ]
    return "; ".join(notes) + "."


def write_results(path: Path, section: str) -> None:
    block = f"{MARK_START}\n{section}{MARK_END}\n"
    text = path.read_text() if path.exists() else "# Benchmark results\n\n"
    start, end = text.find(MARK_START), text.find(MARK_END)
    if start != -1 and end > start:
        rest = text[end + len(MARK_END):].lstrip("\n")
        text = text[:start] + block + ("\n" + rest if rest else "")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# --- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    parser.add_argument("--phase-timeout", type=float, default=600,
                        help="seconds each of the burst and the turns may take at most")
    parser.add_argument("--startup-timeout", type=float, default=180)
    parser.add_argument("--keep-temp", action="store_true", help="keep logs and data")
    args = parser.parse_args(argv)

    def on_term(signum: int, _: object) -> None:
        raise SystemExit(128 + signum)  # runs the cleanup below

    signal.signal(signal.SIGTERM, on_term)
    started, t_start = datetime.now(UTC), time.monotonic()
    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="chat_load-"))
    try:
        with OpenAIServer() as llm:
            common = {**os.environ, "OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": "x",
                      "LLMCAM_MODEL": "m", "PYTHONPATH": str(ROOT)}
            base = None
            if not args.skip_baseline:
                print("baseline: starting", flush=True)
                base = measure(Server("baseline", [sys.executable,
                                                   str(ROOT / "benchmarks" / "baseline_app.py")],
                                      common, tmp / "baseline.log"), llm, args, False)
                print(f"baseline: done, {sum(base.load.errors.values())} errors", flush=True)
            (tmp / "data").mkdir()
            (tmp / "rt").mkdir()
            gw_env = {**common, "LLMCAM_DATA": str(tmp / "data"),
                      "RAY_TMPDIR": str(tmp / "rt"),  # its Ray's files go with the temp dir
                      "LLMCAM_YOLO_MODEL": "yolov8n.yaml", "LLMCAM_DETECTOR_GPUS": "0"}
            gw_env.pop("RAY_ADDRESS", None)
            print("llmcam: starting `llmcam serve`", flush=True)
            ours = measure(Server("llmcam serve", [str(ROOT / ".venv" / "bin" / "llmcam"),
                                                   "serve"], gw_env, tmp / "gateway.log"),
                           llm, args, True)
            print(f"llmcam: done, {sum(ours.load.errors.values())} errors", flush=True)
        section = report(args, ours, base, started, time.monotonic() - t_start, load_before)
        print(section)
        for r in (ours, base):
            if r and r.log_tail:
                print(f"--- {r.label} log tail ---\n{r.log_tail}", file=sys.stderr)
        if not ours.load.first_reply_s:
            print(f"llmcam answered nothing: {args.out} left as it was", file=sys.stderr)
            return 1
        write_results(args.out, section)
        print(f"written to {args.out}")
        return 1 if ours.load.errors or (base and base.load.errors) else 0
    finally:
        if args.keep_temp:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
