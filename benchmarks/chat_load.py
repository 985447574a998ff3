"""Chat load: one session, 10 sessions and a burst of 100 new sessions, through the HTTP gateway.

Runs the real gateway (`llmcam serve`, embedded Ray, one actor per session) and, in the same run,
a baseline with the original llmcam's design (`benchmarks/baseline_app.py`: one process, sessions
in module-level dicts), both against the same zero-latency OpenAI stand-in, in three shapes:
1 session chatting turn after turn (p50/p99), 10 sessions chatting at once, and 100 sessions
created at once that then chat at once. It reports the latencies, turns/s, each system's CPU per
turn by process, the actors' memory and (with --profile) py-spy's top entries for the gateway,
one session actor and one LLMClient, and writes a section to `benchmarks/RESULTS.md` between
`<!-- chat_load -->` and `<!-- /chat_load -->`.

    cd /work/main && .venv/bin/python -m benchmarks.chat_load [--shapes 1,10,100] [--profile]

`--llmcam-root DIR` runs the gateway of another checkout of the project (a copy of an earlier
tree: the "before" figures) with this checkout's benchmark, baseline and stand-in.

Bounded: every phase has a time limit, and the servers it starts (and their temp dirs) are
removed on the way out, also on error or SIGTERM.

Over 300 lines on purpose: a benchmark reads top to bottom as one script (its scenario, its
same-run baseline, its table); what scripts share is in _harness.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import importlib.metadata
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil

from benchmarks._harness import (
    BASELINE_APP,
    LLMCAM_SERVE,
    RESULTS,
    ROOT,
    UNBOUNDED_ENV,
    CpuMeter,
    Errors,
    Profile,
    Profiler,
    Server,
    exit_on_sigterm,
    fmt,
    load_average,
    log_problems,
    machine,
    pct,
    ratio,
    scratch,
    server_env,
    tree_uss,
    uss_mb,
    write_results,
)
from testing.standins import OpenAIServer

MARKER = "chat_load"
MEMORY_SAMPLES = 5
IDLE_WINDOW_S = 10.0
CONTENTION = 0.2  # share of the machine taken by others beyond which timings are not trusted
PROFILE_S = 15
# The targets, llmcam against the one-process design in the same run.
TARGET_P50_DELTA_MS = 10.0  # 1 session: p50 within 10 ms
TARGET_P99_1 = 2.0  # 1 session: p99 at most 2x
TARGET_TPS_10 = 0.8  # 10 sessions: at least 0.8x the turns/s
TARGET_TPS_100 = 0.6  # 100 sessions: at least 0.6x the turns/s
TARGET_P99_100 = 1.5  # 100 sessions: p99 at most 1.5x
TARGET_CPU = 3.0  # CPU per turn at most 3x
TARGET_USS_MB = 45.0  # a live session actor


# --- the load


@dataclass
class Shape:
    """One shape of load: `sessions` new sessions (created at once, each answering a first
    message), then turns 2..`turns` of every session, all sessions at once."""

    name: str
    sessions: int
    turns: int
    first_reply_s: list[float] = field(default_factory=list)  # from t0, per answered session
    burst_s: float | None = None
    turn_s: list[float] = field(default_factory=list)  # turns 2..N
    turns_wall_s: float | None = None
    sids: list[str] = field(default_factory=list)
    burst_cpu: CpuMeter | None = None
    turns_cpu: CpuMeter | None = None
    profiles: list[Profile] = field(default_factory=list)
    actor_procs: int = 0  # session actor processes (live and spare) during the turns

    @property
    def turns_per_s(self) -> float | None:
        return len(self.turn_s) / self.turns_wall_s if self.turns_wall_s else None

    def cpu_per_turn_ms(self) -> float | None:
        m = self.turns_cpu
        return m.own / len(self.turn_s) * 1000 if m and self.turn_s else None


async def _turn(client: httpx.AsyncClient, sid: str, content: str, errors: Errors,
                where: str) -> bool:
    try:
        r = await client.post(f"/api/sessions/{sid}/messages", json={"content": content})
    except httpx.HTTPError as exc:
        errors.add(where, f"{type(exc).__name__}: {exc}")
        return False
    if r.status_code != 200:
        errors.add(where, f"HTTP {r.status_code}: {r.text[:300]}")
        return False
    reply = r.json().get("reply")
    if reply != "echo: " + content:
        errors.add(where, f"wrong reply: {reply!r:.200}")
        return False
    return True


def busiest(server: Server, kind: str, window: float = 1.0) -> int | None:
    """The pid of the actor process of class `kind` that used the most CPU just now,
    among those up for at least 10 s (not a spare actor that is still starting)."""
    now = time.time()
    procs = [p for p in server.actors(kind) if now - _created(p) >= 10]
    before = {p.pid: _cpu(p) for p in procs}
    time.sleep(window)
    grown = {p.pid: _cpu(p) - before[p.pid] for p in procs}
    return max(grown, key=grown.__getitem__) if grown else None


def _created(p: psutil.Process) -> float:
    try:
        return p.create_time()
    except psutil.Error:
        return time.time()


def _cpu(p: psutil.Process) -> float:
    try:
        t = p.cpu_times()
        return t.user + t.system
    except psutil.Error:
        return 0.0


async def run_shape(server: Server, shape: Shape, errors: Errors, phase_limit: float,
                    profile_dir: Path | None) -> None:
    # A fresh connection per request: with keep-alive, a starved uvicorn closed idle
    # connections just as the next request came (ReadError), whatever the client's expiry.
    limits = httpx.Limits(max_connections=shape.sessions * 2, max_keepalive_connections=0)
    timeout = httpx.Timeout(phase_limit, connect=30)
    tag = shape.name
    async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=timeout) as client:
        meter = CpuMeter(server).__enter__()
        t0 = time.perf_counter()

        async def newcomer(k: int) -> None:
            try:
                r = await client.post("/api/sessions")
            except httpx.HTTPError as exc:
                errors.add(f"{tag} create", f"{type(exc).__name__}: {exc}")
                return
            if r.status_code != 201:
                errors.add(f"{tag} create", f"HTTP {r.status_code}: {r.text[:300]}")
                return
            sid = r.json()["session_id"]
            if await _turn(client, sid, f"hello from {tag} {k}, turn 1", errors,
                           f"{tag} turn 1"):
                shape.first_reply_s.append(time.perf_counter() - t0)
                shape.sids.append(sid)

        tasks = [asyncio.create_task(newcomer(k)) for k in range(shape.sessions)]
        _, pending = await asyncio.wait(tasks, timeout=phase_limit)
        for task in pending:
            task.cancel()
        if pending:
            errors.counts[f"{tag} burst: unanswered after {phase_limit:.0f} s"] += len(pending)
        meter.__exit__()
        shape.burst_cpu = meter
        if len(shape.first_reply_s) == shape.sessions:
            shape.burst_s = max(shape.first_reply_s)
        if not shape.sids:
            return
        # What the burst set going (spare actors started again to replace the claimed ones,
        # about a second of CPU each) is a cost of new sessions, not of the turns below.
        await asyncio.to_thread(server.settle, 60)

        async def chatter(k: int, sid: str) -> None:
            for turn in range(2, shape.turns + 1):
                t = time.perf_counter()
                if await _turn(client, sid, f"hello from {tag} {k}, turn {turn}", errors,
                               f"{tag} turn {turn}"):
                    shape.turn_s.append(time.perf_counter() - t)

        meter = CpuMeter(server).__enter__()
        t1 = time.perf_counter()
        tasks = [asyncio.create_task(chatter(k, sid)) for k, sid in enumerate(shape.sids)]
        profiler = None
        if profile_dir is not None:
            profiler = await asyncio.to_thread(_start_profiler, server, profile_dir)
        _, pending = await asyncio.wait(tasks, timeout=phase_limit)
        for task in pending:
            task.cancel()
        if pending:
            errors.counts[f"{tag} turns: sessions unfinished after {phase_limit:.0f} s"] += \
                len(pending)
        shape.turns_wall_s = time.perf_counter() - t1
        meter.__exit__()
        shape.actor_procs = len(server.actors("SessionActor"))
        shape.turns_cpu = meter
        if profiler is not None:
            shape.profiles = await asyncio.to_thread(profiler.finish)


def _start_profiler(server: Server, out: Path) -> Profiler:
    assert server.proc is not None
    targets = {"gateway": server.proc.pid}
    for kind in ("SessionActor", "LLMClient"):
        pid = busiest(server, kind, 1.0)
        if pid is not None:
            targets[f"a {kind}"] = pid
    return Profiler(targets, PROFILE_S, out).start()


# --- one system, start to stop


@dataclass
class Result:
    label: str
    ready_s: float = 0.0
    shapes: list[Shape] = field(default_factory=list)
    errors: Errors = field(default_factory=Errors)
    idle_uss_mb: tuple[float, int] = (0.0, 0)
    end_uss_mb: tuple[float, int] = (0.0, 0)
    actor_uss_mb: list[float] = field(default_factory=list)
    llm_client_uss_mb: list[float] = field(default_factory=list)
    llm_calls: int = 0
    idle: CpuMeter | None = None
    idle_actor_procs: int = 0
    tools: tuple[int, int] | None = None  # count, JSON bytes
    log_problems: list[str] = field(default_factory=list)
    startup_note: str = ""
    shutdown: str = ""
    log_tail: str = ""

    def shape(self, name: str) -> Shape | None:
        return next((s for s in self.shapes if s.name == name), None)


def measure(server: Server, llm: OpenAIServer, args: argparse.Namespace, ours: bool,
            tmp: Path) -> Result:
    result = Result(server.label)
    try:
        result.ready_s = server.launch(args.startup_timeout)
        server.settle(60)
        result.idle_uss_mb = tree_uss(server.tree())
        calls0 = len(llm.requests)
        for name, sessions, turns in args.shape_list:
            shape = Shape(name, sessions, turns)
            result.shapes.append(shape)
            profile = tmp if ours and args.profile and sessions == 10 else None
            print(f"{server.label}: {name}", flush=True)
            asyncio.run(run_shape(server, shape, result.errors, args.phase_timeout, profile))
            server.settle(30)
        result.llm_calls = len(llm.requests) - calls0
        sid = next((s.sids[0] for s in result.shapes if s.sids), None)
        if sid:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                tools = httpx.get(f"{server.url}/api/sessions/{sid}/tools", timeout=60).json()
                result.tools = (len(tools), len(json.dumps(tools)))
        with CpuMeter(server) as idle:
            time.sleep(IDLE_WINDOW_S)
        result.idle = idle
        result.idle_actor_procs = len(server.actors("SessionActor"))
        result.end_uss_mb = tree_uss(server.tree())
        if ours:
            sids = [sid for s in result.shapes for sid in s.sids]
            result.actor_uss_mb = session_actor_uss(server, sids)
            result.llm_client_uss_mb = uss_mb(server.actors("LLMClient"))
    except Exception as exc:
        result.errors.add("run", f"{type(exc).__name__}: {exc}")
    finally:
        if result.errors.counts:
            result.log_tail = server.log_tail()
        server.stop()
        result.startup_note = server.start_note
        result.log_problems = log_problems(server.log)
        result.shutdown = server.stopped()
        llm.reset()
    return result


def session_actor_uss(server: Server, sids: list[str]) -> list[float]:
    """USS of a few live session actors (after their turns), found by name through the
    gateway's own Ray."""
    ports = glob.glob(str(Path(server.env["RAY_TMPDIR"]) / "ray" / "session_*"
                          / "gcs_server_port_*"))
    if not ports:
        return []
    address = "127.0.0.1:" + Path(ports[0]).read_text().strip()
    # The embedded Ray uses token auth (on by default for local clusters since Ray 2.59); a
    # driver that joins by address must ask for it too, and finds the token in ~/.ray.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    from actors.session.names import NAMESPACE, session_key

    step = max(1, len(sids) // MEMORY_SAMPLES)
    values: list[float] = []
    ray.init(address=address, namespace=NAMESPACE, logging_level="WARNING",
             log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        for sid in sids[::step][:MEMORY_SAMPLES]:
            actor = ray.get_actor("session:" + session_key(sid), namespace=NAMESPACE)
            pid = ray.get(actor.start.remote(), timeout=60)["pid"]
            values += uss_mb([psutil.Process(pid)])
    finally:
        ray.shutdown()
    return values


# --- the report


def verdict(ok: bool | None, meters: list[CpuMeter | None] | None = None) -> str:
    """yes / no; for a time-based target, 'unreliable' where other processes on the machine
    took more than CONTENTION of its CPU while it was measured."""
    if ok is None:
        return "n/a"
    worst = max((m.others_share for m in meters or [] if m is not None), default=0.0)
    if worst > CONTENTION:
        return f"{'yes' if ok else '**no**'} (unreliable: others took {worst:.0%} of the CPU)"
    return "yes" if ok else "**no**"


def ms(v: float | None) -> str:
    return fmt(v * 1000 if v is not None else None, ".0f")


def _per_turn_by_process(shape: Shape) -> str:
    m = shape.turns_cpu
    if m is None or not shape.turn_s:
        return "—"
    n = len(shape.turn_s)
    parts = [f"{k} {v / n * 1000:.1f}" for k, v in sorted(m.by_kind.items(), key=lambda kv: -kv[1])
             if v / n * 1000 >= 0.05]
    return "; ".join(parts)


def idle_floor_ms(o: Shape, ours: Result) -> float | None:
    """CPU per turn that the session actor processes spend merely existing (Ray's core worker
    wakes every 10 ms in each): their CPU per process with no request in flight (measured after
    the run) times the processes there were, over the turns' wall time."""
    idle = ours.idle
    if idle is None or not ours.idle_actor_procs or not o.turn_s or not o.turns_wall_s:
        return None
    per_proc = idle.by_kind.get("actor SessionActor", 0.0) / idle.wall / ours.idle_actor_procs
    return per_proc * o.actor_procs * o.turns_wall_s / len(o.turn_s) * 1000


def shape_rows(o: Shape, b: Shape | None, ours: Result) -> list[tuple[str, ...]]:
    meters = [o.turns_cpu, b.turns_cpu if b else None]
    o50, o99 = pct(o.turn_s, 50), pct(o.turn_s, 99)
    b50, b99 = (pct(b.turn_s, 50), pct(b.turn_s, 99)) if b else (None, None)
    otps, btps = o.turns_per_s, b.turns_per_s if b else None
    ocpu, bcpu = o.cpu_per_turn_ms(), b.cpu_per_turn_ms() if b else None
    floor = idle_floor_ms(o, ours)

    def ok(test: bool | None) -> str:
        return verdict(test, meters)

    both = None not in (o50, b50)
    rows: list[tuple[str, ...]] = []
    if o.sessions > 1:
        rows.append((f"{o.name}: all answered their first message (s)", fmt(o.burst_s, ".1f"),
                     fmt(b.burst_s if b else None, ".1f"), ratio(o.burst_s, b.burst_s if b
                                                                else None), "", ""))
    p50_target, p99_target, tps_target = "", "", ""
    p50_ok = p99_ok = tps_ok = None
    if o.sessions == 1:
        p50_target, p99_target = f"≤ baseline + {TARGET_P50_DELTA_MS:.0f} ms", \
            f"≤ {TARGET_P99_1:.0f}× baseline"
        p50_ok = (o50 - b50) * 1000 <= TARGET_P50_DELTA_MS if both else None
        p99_ok = o99 <= TARGET_P99_1 * b99 if both else None
    elif o.sessions <= 10:
        tps_target = f"≥ {TARGET_TPS_10}× baseline"
        tps_ok = otps >= TARGET_TPS_10 * btps if otps and btps else None
    else:
        tps_target, p99_target = f"≥ {TARGET_TPS_100}× baseline", f"≤ {TARGET_P99_100}× baseline"
        tps_ok = otps >= TARGET_TPS_100 * btps if otps and btps else None
        p99_ok = o99 <= TARGET_P99_100 * b99 if both else None
    rows += [
        (f"{o.name}: turns/s (turns 2..{o.turns})", fmt(otps, ".1f"), fmt(btps, ".1f"),
         ratio(otps, btps), tps_target, ok(tps_ok) if tps_target else ""),
        (f"{o.name}: turn latency p50 (ms)", ms(o50), ms(b50), ratio(o50, b50), p50_target,
         ok(p50_ok) if p50_target else ""),
        (f"{o.name}: turn latency p99 (ms)", ms(o99), ms(b99), ratio(o99, b99), p99_target,
         ok(p99_ok) if p99_target else ""),
        (f"{o.name}: the system's CPU per turn (ms)", fmt(ocpu, ".1f"), fmt(bcpu, ".1f"),
         ratio(ocpu, bcpu), f"≤ {TARGET_CPU:.0f}× baseline",
         verdict(ocpu <= TARGET_CPU * bcpu if ocpu and bcpu else None)),
        (f"{o.name}: of which the idle floor of {o.actor_procs} session actor processes "
         "(ms; see below) / the rest", f"{fmt(floor, '.1f')} / "
         f"{fmt(ocpu - floor if ocpu is not None and floor is not None else None, '.1f')}",
         "", ratio(ocpu - floor if ocpu is not None and floor is not None else None, bcpu),
         "", ""),
        (f"{o.name}: others' share of the CPU while measured",
         fmt(o.turns_cpu.others_share if o.turns_cpu else None, ".0%"),
         fmt(b.turns_cpu.others_share if b and b.turns_cpu else None, ".0%"), "",
         f"≤ {CONTENTION:.0%}", ""),
    ]
    return rows


def report(args: argparse.Namespace, ours: Result, base: Result | None, started: datetime,
           took: float, load_before: str) -> str:
    rows: list[tuple[str, ...]] = []
    for o in ours.shapes:
        rows += shape_rows(o, base.shape(o.name) if base else None, ours)
    uss = statistics.median(ours.actor_uss_mb) if ours.actor_uss_mb else None
    llm_uss = statistics.median(ours.llm_client_uss_mb) if ours.llm_client_uss_mb else None

    def errs(r: Result | None) -> str:
        if r is None:
            return "skipped"
        return str(r.errors.total())

    def turns(r: Result) -> int:
        return sum(len(s.first_reply_s) + len(s.turn_s) for s in r.shapes)

    def tools(r: Result | None) -> str:
        return f"{r.tools[0]} / {r.tools[1]} B" if r and r.tools else "—"

    rows += [
        (f"session actor USS after its turns, median of {len(ours.actor_uss_mb)} (MB)",
         fmt(uss, ".1f"), "—", "", f"≤ {TARGET_USS_MB:.0f} MB",
         verdict(None if uss is None else uss <= TARGET_USS_MB)),
        ("shared LLMClient actor USS (MB)", fmt(llm_uss, ".1f"), "—", "", "", ""),
        ("whole system USS idle → after the run (MB, processes)",
         f"{ours.idle_uss_mb[0]:.0f} ({ours.idle_uss_mb[1]}) → "
         f"{ours.end_uss_mb[0]:.0f} ({ours.end_uss_mb[1]})",
         (f"{base.idle_uss_mb[0]:.0f} ({base.idle_uss_mb[1]}) → "
          f"{base.end_uss_mb[0]:.0f} ({base.end_uss_mb[1]})" if base else "skipped"), "", "", ""),
        ("errors (HTTP, timeouts, wrong replies)", errs(ours), errs(base), "", "0", ""),
        ("LLM calls / turns answered", f"{ours.llm_calls} / {turns(ours)}",
         f"{base.llm_calls} / {turns(base)}" if base else "skipped", "", "", ""),
        ("tools sent with every LLM call (count / JSON)", tools(ours), tools(base), "", "", ""),
        (f"CPU used with no request in flight, {IDLE_WINDOW_S:.0f} s after the run (cores)",
         fmt(ours.idle.own / ours.idle.wall if ours.idle else None, ".2f"),
         fmt(base.idle.own / base.idle.wall if base and base.idle else None, ".2f"), "", "", ""),
        ("ready after start (s)", fmt(ours.ready_s, ".1f"),
         fmt(base.ready_s if base else None, ".1f"), "", "", ""),
    ]
    live = sum(len(s.sids) for s in ours.shapes)
    lines = [
        "## Chat load (`benchmarks/chat_load.py`)",
        "",
        f"Run {started:%Y-%m-%d %H:%M} UTC, {took / 60:.1f} min in all, on {machine()}; "
        f"Ray {importlib.metadata.version('ray')}; llmcam from "
        f"`{args.llmcam_root or ROOT}`. Load average (1 / 5 / 15 min) before the run "
        f"{load_before}, after it {load_average()}.",
        "",
        "What: per shape, N sessions created at once (`POST /api/sessions`, each followed at "
        "once by its first `POST /api/sessions/{sid}/messages`), then turns 2.. of every "
        "session, all sessions at the same time (each session's turns one after another), "
        "measured from the HTTP side with one httpx.AsyncClient; shapes run one after another "
        "against one server (the earlier shapes' sessions stay live). LLM: the zero-latency "
        "OpenAI stand-in (`testing.standins.OpenAIServer`, streaming, echoes the user's message; "
        "every reply is checked), in the benchmark's own process. llmcam: `llmcam serve` "
        "(embedded Ray, one actor per session, SQLite journal). Baseline: "
        "`benchmarks/baseline_app.py`, the original llmcam's design (one uvicorn process, "
        "sessions in module-level dicts, same routes shape, same OpenAI client streaming, same "
        "stand-in). Ratios are llmcam / baseline. \"The system's CPU\" is the CPU time of the "
        "server's own processes (for llmcam: the gateway, Ray's processes and the actors) over "
        "the turns, so unlike wall times it hardly depends on what else runs on the machine. "
        "USS = `psutil.Process(pid).memory_full_info().uss`, MB = 10^6 bytes.",
        "",
        "| measure | llmcam (actor per session) | baseline (original design) | ratio | target "
        "| met |",
        "|---|---|---|---|---|---|",
        *(f"| {' | '.join(row)} |" for row in rows),
        "",
        "CPU per turn by process (ms, turns 2..):",
        *(f"- llmcam, {s.name}: {_per_turn_by_process(s)}" for s in ours.shapes),
        *(f"- baseline, {s.name}: {_per_turn_by_process(s)}" for s in (base.shapes if base
                                                                       else [])),
        f"- llmcam, idle after the run: {ours.idle.summary() if ours.idle else '—'} "
        f"({live} session actors live, {ours.idle_actor_procs} session actor processes with "
        "the spares: Ray's core worker wakes every 10 ms in each; the idle-floor rows above "
        "scale this to each shape)",
    ]
    profiles = [p for s in ours.shapes for p in s.profiles]
    if profiles:
        shape = next(s for s in ours.shapes if s.profiles)
        lines += ["", f"Profile (py-spy, {PROFILE_S} s during the turns of {shape.name}, "
                  "100 Hz, shares of the samples in which the process was busy):",
                  *(x for p in profiles for x in p.lines())]
    lines += ["", f"Shutdown: llmcam {ours.shutdown or '—'}"
              + (f"; baseline {base.shutdown or '—'}" if base else "") + "."]
    for r in (ours, base):
        if r and r.errors.counts:
            lines += ["", f"Errors in {r.label}: "
                      + "; ".join(f"{k} × {v}" for k, v in r.errors.counts.items()),
                      *(f"- `{e}`" for e in r.errors.examples)]
        if r and r.startup_note:
            lines += ["", f"{r.label}: {r.startup_note}"]
        if r and r.log_problems:
            lines += ["", f"{r.label}'s log had {len(r.log_problems)} warning/error lines, "
                      "the first ones:", *(f"- `{x[:300]}`" for x in r.log_problems[:3])]
    lines += ["", "Limits of these figures: everything (load client, stand-in, gateway, Ray, "
              "the actor processes, the baseline) shares this machine's cores with other work "
              "(see the others' share rows), so wall-time figures are noisy and CPU per turn "
              "is the steadier figure; the stand-in shares the benchmark's GIL with the load "
              "client, which caps both systems alike; with zero LLM latency every millisecond "
              "is overhead (a real model takes seconds per turn); the baseline keeps nothing "
              "durable and isolates nothing, llmcam journals every message to SQLite before "
              "it counts."]
    return "\n".join(lines) + "\n"


# --- main


def parse_shapes(text: str, turns: dict[int, int]) -> list[tuple[str, int, int]]:
    out = []
    for part in text.split(","):
        n = int(part)
        out.append((f"{n} session{'s' if n > 1 else ''}", n, turns.get(n, turns[0])))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="1,10,100",
                        help="numbers of sessions, one shape each, run in this order")
    parser.add_argument("--turns", type=int, default=10, help="turns per session (100 shape)")
    parser.add_argument("--turns-1", type=int, default=41, help="turns of the 1-session shape")
    parser.add_argument("--turns-10", type=int, default=60, help="turns per session (10 shape)")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy on the gateway, a session actor and an LLMClient during "
                        "the 10-session shape's turns")
    parser.add_argument("--llmcam-root", type=Path, default=None,
                        help="run the gateway from another checkout (e.g. the tree before a "
                        "change), with this venv")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--phase-timeout", type=float, default=600,
                        help="seconds each of the burst and the turns may take at most")
    parser.add_argument("--startup-timeout", type=float, default=180)
    parser.add_argument("--keep-temp", action="store_true", help="keep logs and data")
    parser.add_argument("--gateway-env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment for the gateway (e.g. the per-user limits)")
    parser.add_argument("--marker", default=MARKER,
                        help="the RESULTS.md section to write (another keeps both runs)")
    args = parser.parse_args(argv)
    args.shape_list = parse_shapes(args.shapes, {1: args.turns_1, 10: args.turns_10,
                                                 0: args.turns})

    exit_on_sigterm()
    started, t_start = datetime.now(UTC), time.monotonic()
    load_before = load_average()
    with scratch("chat_load-", keep=args.keep_temp) as tmp, OpenAIServer() as llm:
        common = {"OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": "x", "LLMCAM_MODEL": "m"}
        base = None
        if not args.skip_baseline:
            print("baseline: starting", flush=True)
            base = measure(Server("baseline", BASELINE_APP, server_env(**common),
                                  tmp / "baseline.log"), llm, args, False, tmp)
            print(f"baseline: done, {base.errors.total()} errors", flush=True)
        (tmp / "data").mkdir()
        (tmp / "rt").mkdir()
        gw_env = server_env(**common, **UNBOUNDED_ENV, LLMCAM_DATA=str(tmp / "data"),
                            RAY_TMPDIR=str(tmp / "rt"),  # its Ray's files go with the temp dir
                            LLMCAM_YOLO_MODEL="yolov8n.yaml", LLMCAM_DETECTOR_GPUS="0")
        gw_env.update(item.split("=", 1) for item in args.gateway_env)
        if args.llmcam_root:
            gw_env["PYTHONPATH"] = str(args.llmcam_root.resolve())
        print("llmcam: starting `llmcam serve`", flush=True)
        ours = measure(Server("llmcam serve", LLMCAM_SERVE, gw_env, tmp / "gateway.log",
                              cwd=args.llmcam_root or ROOT), llm, args, True, tmp)
        print(f"llmcam: done, {ours.errors.total()} errors", flush=True)
    section = report(args, ours, base, started, time.monotonic() - t_start, load_before)
    print(section)
    for r in (ours, base):
        if r and r.log_tail:
            print(f"--- {r.label} log tail ---\n{r.log_tail}", file=sys.stderr)
    if not any(s.first_reply_s for s in ours.shapes):
        print(f"llmcam answered nothing: {args.out} left as it was", file=sys.stderr)
        return 1
    write_results(args.out, args.marker, section)
    print(f"written to {args.out}")
    return 1 if ours.errors or (base and base.errors) else 0


if __name__ == "__main__":
    sys.exit(main())
