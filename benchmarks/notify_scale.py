"""Notification streams at scale: S sessions × K streams, each a child actor running a round
every `--interval` seconds, every round sending one notification; one /events listener per
session (an httpx streaming SSE client, like a browser tab).

It measures, over a steady window once every stream has delivered: notifications delivered per
second; delivery lag p50/p99 from the moment the model answered with the send_notification call
(the stand-in writes that time into the message) to the SSE client reading the event, and from
the session's `at` stamp to the client; how long rounds really take apart; the memory (USS) of
each stream actor; and, after stopping every stream, that each listener got every stored
notification exactly once, in order (ids 1..n with no gap and no repeat), and every stream's
notifications 1..sent.

The gateway runs in a subprocess (this script, `--serve`: the real app under uvicorn with its own
embedded Ray, without the YOLO detector, which these streams never call); the zero-latency OpenAI
stand-in and the listeners run in this process. It writes its table into `benchmarks/RESULTS.md`
between `<!-- notify_scale -->` and `<!-- /notify_scale -->`.

    cd /work/main && .venv/bin/python -m benchmarks.notify_scale [--sessions 20] [--streams 5]
        [--duration 30] [--interval 1]

Bounded: every phase has a time limit; the gateway, its Ray and its temp dir are removed on the
way out, also on error or SIGTERM.

Over 300 lines on purpose: a benchmark reads top to bottom as one script (its scenario, its
same-run baseline, its table); what scripts share is in _harness.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import re
import signal
import statistics
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

from benchmarks._harness import (
    RESULTS,
    UNBOUNDED_ENV,
    CpuMeter,
    LongRunLLM,
    Server,
    cpu_by_process,
    exit_on_sigterm,
    fmt,
    load_average,
    machine,
    pct,
    proc_kind,
    publish,
    scratch,
    server_env,
    sse_events,
    uss_mb,
)
from testing.standins import Call, Text, ToolCalls
from testing.standins.openai_server import message_text

TAG = re.compile(r"bench-s(\d+)-k(\d+)")
START = re.compile(r"start the benchmark streams of session (\d+)")
SENT = re.compile(r"(bench-s\d+-k\d+) #(\d+) at ([0-9.]+)")
ACTORS = ("NotificationActor", "SessionActor", "LLMClient")
TARGET_STREAMS, TARGET_P99_S = 100, 2.0


# --- the gateway, in a subprocess ------------------------------------------------------------


def serve(port: int) -> None:
    """`--serve --port PORT`: the real gateway (embedded Ray) minus the detector deployment,
    started the way `llmcam serve` starts it (Ray joined in the main thread, stopped on the way
    out)."""
    import ray
    import uvicorn

    from actors.settings import from_env
    from gateway.app import create_app
    from gateway.ray_conn import connect

    settings = from_env()
    started = connect(settings)
    try:
        uvicorn.run(create_app(settings, deploy_detector=False), host="127.0.0.1", port=port,
                    access_log=False, log_level="warning", timeout_graceful_shutdown=5)
    except SystemExit as exc:
        if exc.code not in (signal.SIGTERM, signal.SIGINT):
            raise
    finally:
        if started:
            ray.shutdown()


def kind(gw: Server, p: psutil.Process) -> str:
    """This benchmark's names for the gateway's processes: the actors it watches by class."""
    found = proc_kind(p, gw.proc.pid if gw.proc else None)
    if found in ("root", "gone"):
        return "gateway" if found == "root" else found
    if found.removeprefix("ray::") in ACTORS:
        return found.removeprefix("ray::")
    return "gcs_server+raylet" if found in ("gcs_server", "raylet") else "Ray other"


# --- the model: every stream round sends one notification stamped with the time -------------


class BenchLLM(LongRunLLM):
    """The OpenAI stand-in with one rule: a stream's round calls send_notification with a
    message naming the stream, its count and the time; the chat starts a session's streams."""

    def __init__(self, streams: int, interval: float) -> None:
        super().__init__(keep=1000)
        self.streams, self.interval = streams, interval
        self.generated: dict[str, list[float]] = defaultdict(list)  # tag -> send times

    def reply(self, messages: list[dict[str, Any]]) -> Any:
        head = messages[0] if messages else {}
        found = TAG.search(message_text(head)) if head.get("role") == "system" else None
        if found:  # a stream's round
            if messages[-1].get("role") == "tool":
                return Text("ok")
            tag, now = found.group(0), time.time()
            with self._lock:
                self.generated[tag].append(now)
                n = len(self.generated[tag])
            return ToolCalls([Call("send_notification", {"msg": f"{tag} #{n} at {now:.6f}"})])
        last = messages[-1] if messages else {}
        started = START.search(message_text(last)) if last.get("role") == "user" else None
        if started:
            s = int(started.group(1))
            return ToolCalls([Call("start_notification_stream", {
                "task": f"bench-s{s}-k{k}: send one notification every round",
                "interval_seconds": self.interval}) for k in range(self.streams)])
        return Text("ok")


# --- the listeners --------------------------------------------------------------------------


@dataclass
class Received:
    recv: float  # time.time() when the client read it
    id: int
    noti_id: str
    message: str
    at: float


@dataclass
class Listener:
    sid: str
    events: list[Received] = field(default_factory=list)
    reconnects: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    async def run(self, client: httpx.AsyncClient) -> None:
        while True:
            last = self.events[-1].id if self.events else None
            headers = {"Accept": "text/event-stream"}
            if last is not None:
                headers["Last-Event-ID"] = str(last)
            try:
                async with client.stream("GET", f"/api/sessions/{self.sid}/events",
                                         headers=headers) as response:
                    if response.status_code != 200:
                        self.errors[f"HTTP {response.status_code}"] += 1
                        return
                    async for event in sse_events(response.aiter_lines()):
                        if "data" in event:
                            now = time.time()
                            data = json.loads(event["data"])
                            self.events.append(Received(now, int(event["id"]), data["noti_id"],
                                                        data["message"], data["at"]))
            except httpx.HTTPError as exc:
                self.errors[type(exc).__name__] += 1
            self.reconnects += 1
            await asyncio.sleep(0.5)


# --- the run --------------------------------------------------------------------------------


@dataclass
class Run:
    sessions: int
    streams: int
    started_streams: int = 0
    refused: int = 0
    start_s: float | None = None  # until every stream had delivered once
    window_s: float = 0.0
    window_events: int = 0
    lag_model: list[float] = field(default_factory=list)
    lag_session: list[float] = field(default_factory=list)
    round_gaps: list[float] = field(default_factory=list)
    stream_uss: list[float] = field(default_factory=list)
    session_uss: list[float] = field(default_factory=list)
    llm_uss: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)
    busy_cores: float = 0.0
    stored: int = 0
    received: int = 0
    generated: int = 0
    bad_listeners: list[str] = field(default_factory=list)
    bad_streams: list[str] = field(default_factory=list)
    reconnects: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    llm_calls: int = 0
    killed: list[str] = field(default_factory=list)
    idle_millicores: float | None = None


def idle_floor(gw: Server, seconds: float = 8.0) -> float | None:
    """CPU of an idle actor process (millicores): the session actors, before any stream."""
    time.sleep(2.0)  # let their start-up settle
    procs = gw.actors("SessionActor")
    if not procs:
        return None
    before = cpu_by_process(procs)
    time.sleep(seconds)
    after = cpu_by_process(procs)
    used = [after[k] - before[k] for k in after if k in before]
    return 1000 * statistics.median(used) / seconds if used else None


def uss_by_kind(gw: Server) -> dict[str, list[float]]:
    return {cls: uss_mb(gw.actors(cls)) for cls in ACTORS}


async def until(condition: Any, limit: float, step: float = 0.2) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(step)
    return bool(condition())


async def drive(gw: Server, llm: BenchLLM, args: argparse.Namespace, run: Run) -> None:
    limits = httpx.Limits(max_connections=args.sessions + 32,
                          max_keepalive_connections=args.sessions + 32)
    timeout = httpx.Timeout(args.phase_timeout, connect=30)
    async with httpx.AsyncClient(base_url=gw.url, limits=limits, timeout=timeout) as client:
        sids = []
        for _ in range(args.sessions):
            r = await client.post("/api/sessions")
            r.raise_for_status()
            sids.append(r.json()["session_id"])
        listeners = [Listener(sid) for sid in sids]
        tasks = [asyncio.create_task(listener.run(client)) for listener in listeners]
        try:
            await _measure(client, gw, llm, args, run, sids, listeners)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for sid in sids:
                with contextlib.suppress(httpx.HTTPError):
                    await client.delete(f"/api/sessions/{sid}")


async def _measure(client: httpx.AsyncClient, gw: Server, llm: BenchLLM,
                   args: argparse.Namespace, run: Run, sids: list[str],
                   listeners: list[Listener]) -> None:
    run.idle_millicores = await asyncio.to_thread(idle_floor, gw)
    t0 = time.monotonic()
    gate = asyncio.Semaphore(args.start_concurrency)

    async def start(i: int, sid: str) -> None:
        async with gate:
            r = await client.post(f"/api/sessions/{sid}/messages",
                                  json={"content": f"start the benchmark streams of session {i}"})
        if r.status_code != 200:
            run.errors[f"start: HTTP {r.status_code}"] += 1
            return
        for m in r.json()["messages"]:
            if m["role"] == "tool":
                if str(m["content"]).startswith("Notification stream started with ID"):
                    run.started_streams += 1
                else:
                    run.refused += 1

    await asyncio.wait_for(asyncio.gather(*(start(i, s) for i, s in enumerate(sids))),
                           args.phase_timeout)
    want = run.started_streams

    def delivering() -> int:
        return len({e.noti_id for listener in listeners for e in listener.events})

    if not await until(lambda: delivering() >= want, args.phase_timeout):
        run.errors[f"only {delivering()} of {want} streams delivered within the limit"] += 1
    run.start_s = time.monotonic() - t0
    print(f"{want} streams running after {run.start_s:.0f} s; measuring {args.duration:.0f} s",
          flush=True)

    # the steady window
    with CpuMeter(gw, kind=lambda p: kind(gw, p),
                  this_process="benchmark process (listeners + stand-in)") as meter:
        w0 = time.time()
        await asyncio.sleep(args.duration / 2)
        memory = await asyncio.to_thread(uss_by_kind, gw)
        await asyncio.sleep(args.duration / 2)
        w1 = time.time()
    run.window_s = w1 - w0
    run.busy_cores = meter.busy_cores
    run.cpu = meter.by_kind
    run.stream_uss = memory.get("NotificationActor", [])
    run.session_uss = memory.get("SessionActor", [])
    run.llm_uss = memory.get("LLMClient", [])
    for listener in listeners:
        for e in listener.events:
            if w0 <= e.recv < w1:
                run.window_events += 1
                run.lag_session.append(e.recv - e.at)
                sent = SENT.search(e.message)
                if sent:
                    run.lag_model.append(e.recv - float(sent.group(3)))
    with llm._lock:
        for times in llm.generated.values():
            run.round_gaps += [b - a for a, b in zip(times, times[1:], strict=False)
                               if w0 <= a and b < w1]

    # stop every stream, then check that every stored notification arrived exactly once
    for sid in sids:
        r = await client.get(f"/api/sessions/{sid}/notifications")
        for stream in r.json():
            await client.delete(f"/api/sessions/{sid}/notifications/{stream['noti_id']}")
    stored = {}
    for sid in sids:
        r = await client.get(f"/api/sessions/{sid}/notifications")
        stored[sid] = {s["noti_id"]: s["sent"] for s in r.json()}
    run.stored = sum(sum(v.values()) for v in stored.values())
    await until(lambda: all(len(li.events) >= sum(stored[li.sid].values())
                            for li in listeners), args.phase_timeout)
    await asyncio.sleep(1.0)  # anything extra (a repeat) would show now
    with llm._lock:
        run.generated = sum(len(v) for v in llm.generated.values())
        run.llm_calls = llm.calls
    for i, listener in enumerate(listeners):
        want = sum(stored[listener.sid].values())
        ids = [e.id for e in listener.events]
        run.received += len(ids)
        run.reconnects += listener.reconnects
        run.errors.update({f"listener: {k}": v for k, v in listener.errors.items()})
        if ids != list(range(1, want + 1)):
            run.bad_listeners.append(f"session {i}: ids {_span(ids)}, expected 1..{want}")
        per_stream: dict[str, list[int]] = defaultdict(list)
        for e in listener.events:
            sent = SENT.search(e.message)
            per_stream[e.noti_id].append(int(sent.group(2)) if sent else -1)
        for noti_id, n in stored[listener.sid].items():
            got = per_stream.get(noti_id, [])
            if got != list(range(1, n + 1)):
                run.bad_streams.append(f"session {i} stream {noti_id[:8]}: {_span(got)} of {n}")


def _span(values: list[int]) -> str:
    if not values:
        return "none"
    dups = len(values) - len(set(values))
    return f"{len(values)} ({values[0]}..{values[-1]}, {dups} repeated)"


# --- the report -----------------------------------------------------------------------------


def report(args: argparse.Namespace, run: Run, started: datetime, took: float,
           load_before: str) -> str:
    n = run.started_streams
    p99 = pct(run.lag_model, 99)
    lost = run.stored - run.received if run.received <= run.stored else 0
    exact = not run.bad_listeners and not run.bad_streams and run.received == run.stored
    scale_ok = n >= TARGET_STREAMS
    lag_ok = p99 is not None and p99 < TARGET_P99_S
    rate = run.window_events / run.window_s if run.window_s else None
    ideal = n / args.interval if args.interval else None

    def ms(values: list[float], q: float) -> str:
        v = pct(values, q)
        return fmt(v * 1000 if v is not None else None, ".0f")

    def mem(values: list[float]) -> str:
        if not values:
            return "—"
        return (f"{statistics.median(values):.1f} / {max(values):.1f} "
                f"(n={len(values)})")

    def verdict(ok: bool) -> str:
        return "yes" if ok else "**no**"

    rows = [
        ("concurrent streams running (started / asked; refused)",
         f"{n} / {args.sessions * args.streams}; {run.refused}",
         f"≥ {TARGET_STREAMS}", verdict(scale_ok)),
        ("from the first start request until every stream had delivered (s)",
         fmt(run.start_s, ".1f"), "", ""),
        (f"notifications delivered per second, {run.window_s:.0f} s window "
         f"({args.interval:g} s interval: at most {fmt(ideal, '.0f')}/s)",
         fmt(rate, ".1f"), "", ""),
        ("delivery lag, model's answer → SSE client, p50 / p99 (ms)",
         f"{ms(run.lag_model, 50)} / {ms(run.lag_model, 99)}",
         f"p99 < {TARGET_P99_S * 1000:.0f}", verdict(lag_ok)),
        ("delivery lag, stored by the session (`at`) → SSE client, p50 / p99 (ms)",
         f"{ms(run.lag_session, 50)} / {ms(run.lag_session, 99)}", "", ""),
        (f"time between two rounds' sends of one stream, p50 / p99 (ms; interval "
         f"{args.interval * 1000:.0f})",
         f"{ms(run.round_gaps, 50)} / {ms(run.round_gaps, 99)}", "", ""),
        ("notification actor USS (one per session), median / max (MB)", mem(run.stream_uss),
         "", ""),
        ("session actor USS, median / max (MB)", mem(run.session_uss), "", ""),
        ("shared LLMClient actor USS, median / max (MB)", mem(run.llm_uss), "", ""),
        ("notifications: sent by the model / stored / received by the listeners",
         f"{run.generated} / {run.stored} / {run.received}", "received = stored",
         verdict(run.received == run.stored)),
        ("lost / repeated / out of order (listeners and streams with a problem)",
         f"{lost} / {len(run.bad_listeners)} listeners, {len(run.bad_streams)} streams",
         "none", verdict(exact)),
        ("listener reconnects (each resumes with Last-Event-ID)", str(run.reconnects), "", ""),
        ("LLM calls (each through the shared LLMClient actors, streamed)",
         str(run.llm_calls), "", ""),
        ("CPU of one idle actor process (session actors before any stream; millicores)",
         fmt(run.idle_millicores, ".1f"), "", ""),
        ("errors", "; ".join(f"{k} × {v}" for k, v in run.errors.items()) or "0", "0",
         verdict(not run.errors)),
    ]
    cpu = ", ".join(f"{k} {v:.1f} s" for k, v in sorted(run.cpu.items(), key=lambda kv: -kv[1])
                    if v >= 0.05)
    limiting = sorted(((v, k) for k, v in run.cpu.items()
                       if not k.startswith("other")), reverse=True)
    lines = [
        "## Notification streams at scale (`benchmarks/notify_scale.py`)",
        "",
        f"Run {started:%Y-%m-%d %H:%M} UTC, {took / 60:.1f} min in all, on {machine()}; "
        f"Ray {importlib.metadata.version('ray')}. Load average (1 / 5 / 15 min) before the run "
        f"{load_before}, after it {load_average()}.",
        "",
        f"What: {args.sessions} sessions × {args.streams} notification streams, started by one "
        f"chat turn per session (the model calls `start_notification_stream` {args.streams} "
        f"times, `interval_seconds` {args.interval:g}); every round of every stream calls "
        "`send_notification` once with the time the model answered; one `/events` listener per "
        "session (httpx, streaming SSE). Measured over a "
        f"{run.window_s:.0f} s window that starts once every stream has delivered. LLM: the "
        "zero-latency OpenAI stand-in (`testing.standins.OpenAIServer`), in this process. "
        "Gateway: the real app under uvicorn in a subprocess with its embedded Ray (no YOLO "
        "detector). USS = `psutil.Process(pid).memory_full_info().uss` of the actor's process "
        "(found by its title `ray::NotificationActor…`, one per session since issue 17), "
        "MB = 10^6 bytes. After the window "
        "every stream is stopped and every listener is checked for ids 1..n, each once, and "
        "every stream for its notifications 1..sent.",
        "",
        "| measure | value | target | met |",
        "|---|---|---|---|",
        *(f"| {' | '.join(row)} |" for row in rows),
        "",
        f"Where the CPU went in the window: {run.busy_cores:.2f} of {psutil.cpu_count()} cores "
        f"busy; {cpu}.",
    ]
    if run.bad_listeners or run.bad_streams:
        lines += ["", "Problems:", *(f"- {x}" for x in (run.bad_listeners + run.bad_streams)[:10])]
    if run.killed:
        lines += ["", "Had to kill after the gateway stopped: " + ", ".join(run.killed[:8])]
    lines += ["", "What limits it: " + limits_note(args, run, limiting)]
    return "\n".join(lines) + "\n"


def limits_note(args: argparse.Namespace, run: Run, limiting: list[tuple[float, str]]) -> str:
    cores = psutil.cpu_count() or 1
    top = ", ".join(f"{k} ({v / max(run.window_s, 1e-9):.2f} cores)" for v, k in limiting[:3])
    children = len(run.stream_uss) or args.sessions  # one NotificationActor per session
    actors = children + args.sessions + 1
    floor = (f"{actors} actor processes × {run.idle_millicores:.0f} millicores ≈ "
             f"{actors * run.idle_millicores / 1000:.2f} cores"
             if run.idle_millicores is not None else "about 1% of a core per actor process")
    notes = [
        f"CPU. Everything (stand-in, listeners, gateway, Ray, {children} notification actors "
        f"running {run.started_streams} streams, {args.sessions} session actors kept live by "
        f"their listeners, the LLMClient actor) shares these {cores} cores; the busiest in the "
        f"window were {top}. Every Ray actor process costs CPU while it waits (its task loop "
        f"wakes every 10 ms to check for signals), so the actors alone keep {floor} busy "
        "before any round runs. Each round then is two model calls through the shared "
        "LLMClient actor (every streamed delta a Ray item), one tool call, a store transaction "
        "in the notification actor, an actor call to the live session and an SSE write",
        "rounds start `interval` after the previous one ended, so a saturated machine stretches "
        "the time between rounds (row above) instead of piling up work; the lag is then the "
        "time a ready event waits for CPU in the processes on its path",
        "start-up: each session with streams is one more process (about a second of CPU to "
        "start here), so a hundred sessions take minutes to start on 2 cores; memory (USS per "
        "notification actor above) sets how many sessions with streams a node holds",
        "the stand-in and the listeners share this process's GIL, which adds to the measured "
        "lag when this process is busy",
    ]
    return "; ".join(notes) + "."


# --- main -----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--streams", type=int, default=5, help="streams per session (≤ 5)")
    parser.add_argument("--duration", type=float, default=30.0, help="measured window (s)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between rounds")
    parser.add_argument("--start-concurrency", type=int, default=4,
                        help="sessions starting their streams at the same time")
    parser.add_argument("--spare-sessions", type=int, default=0,
                        help="LLMCAM_SPARE_SESSIONS for the gateway (idle spare session actors "
                        "only add processes here)")
    parser.add_argument("--startup-timeout", type=float, default=600.0)
    parser.add_argument("--phase-timeout", type=float, default=600.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.serve:
        serve(args.port)
        return 0
    if not 1 <= args.streams <= 5:
        parser.error("--streams must be 1..5 (a session runs at most 5 streams)")

    started, t0, load_before = datetime.now(UTC), time.monotonic(), load_average()
    run = Run(args.sessions, args.streams)
    exit_on_sigterm()
    with scratch("llmcam-notify-") as tmp:
        gw: Server | None = None
        try:
            with BenchLLM(args.streams, args.interval) as llm:
                env = server_env(**UNBOUNDED_ENV, OPENAI_BASE_URL=llm.base_url,
                                 OPENAI_API_KEY="bench", LLMCAM_DATA=str(tmp / "data"),
                                 LLMCAM_MODEL="bench-model",
                                 LLMCAM_NOTIFY_INTERVAL=str(args.interval),
                                 LLMCAM_SPARE_SESSIONS=str(args.spare_sessions),
                                 LLMCAM_DETECTOR_GPUS="0", RAY_TMPDIR=str(tmp))
                gw = Server("the gateway",
                            [sys.executable, "-m", "benchmarks.notify_scale", "--serve"], env,
                            tmp / "gateway.log")
                print(f"gateway ready after {gw.launch(args.startup_timeout):.1f} s", flush=True)
                asyncio.run(drive(gw, llm, args, run))
        except Exception as exc:
            run.errors[f"run: {type(exc).__name__}: {str(exc)[:300]}"] += 1
        finally:
            if gw is not None:
                gw.stop(60)
                run.killed = gw.killed_after_shutdown
    publish(report(args, run, started, time.monotonic() - t0, load_before), args.out,
            "notify_scale")
    return 0 if not run.errors else 1


if __name__ == "__main__":
    sys.exit(main())
