"""Soak: a long run of chat, uploads and notification streams on a two-node Ray cluster, with
faults on a schedule, that checks that nothing is lost and nothing is stored twice.

Everything runs on 127.0.0.1: a throwaway PostgreSQL (`testing.postgres.PostgresServer`), a head
Ray node started by this script (it is the driver, as the tests' Ray is), a second node
(`testing.ray_node.RayNode`, its own process group), the OpenAI stand-in and the Digitraffic
weather-camera stand-in (in this process), and one `llmcam serve` subprocess joined to that Ray
(`RAY_ADDRESS`, `LLMCAM_DB` the PostgreSQL URL, `LLMCAM_IDLE_SECONDS=3` so idle sessions
passivate and come back all the time, `LLMCAM_SPARE_SESSIONS=0`, the per-user limits off).

Load (asyncio + httpx): `--sessions` sessions chat turn after turn with unique texts and a random
pause between turns; every 5th turn the model calls `cap` (a weather camera from the stand-in),
every 7th turn follows an upload (`POST …/files`) and the model calls `detect_objects` or
`list_image_files` on it. `--stream-sessions` of them start a notification stream through a
scripted `start_notification_stream` call; every round of a stream calls `send_notification` with a
message of its own, and one `/events` listener per such session reconnects with `Last-Event-ID`
whenever its connection ends. Clients follow the gateway to its new port when it restarts.

Faults, spread over the run (one cycle of six per 10 minutes): kill a session's actor
(`ray.kill`, with and without Ray's restart), SIGKILL a session's notification child (Ray restarts
it), the LLM failing (503) for a while, the LLM slow for a while, SIGKILL the second node's
process group and start a new node, and restart the gateway (SIGTERM, start one on a new port).

Checks, exact: every user message that got a 200 is in its session's stored history exactly
once and in order (a turn that failed may or may not be stored, never twice); every upload that
got a 201 is listed; every listener's event ids strictly increase; after the streams are stopped a
full replay (`Last-Event-ID: 0`) equals the union of what the listeners saw. Requests are counted
by outcome, and each error is attributed to the fault window it fell in (a fault's window lasts
from its start until `--grace` seconds after it was over). Memory (RSS and USS) of the gateway,
gcs_server, the raylets, each actor class, the rest of Ray and PostgreSQL is sampled every 15 s;
the table gives each kind's start and end and a least-squares slope (MB/hour) after the first
20% of the run. The table goes between `<!-- soak -->` and `<!-- /soak -->` in
`benchmarks/RESULTS.md` (unless `--no-write`).

    cd /work/main && .venv/bin/python -m benchmarks.soak [--minutes 30] [--sessions 6]
        [--stream-sessions 2] [--interval 2] [--no-write] [--out benchmarks/RESULTS.md]

The exit code is 1 when anything was lost, stored twice or out of order, when a stream stopped
by itself, or when a request failed outside every fault window and no retry made up for it.

Bounded: every wait has a time limit; the servers, the Ray nodes and the temp dir are removed on
the way out, also on error or SIGTERM.

Over 300 lines on purpose: a benchmark reads top to bottom as one script (its scenario, its
same-run baseline, its table); what scripts share is in _harness.py.
"""

from __future__ import annotations

import os

# The GCS started here declares a killed node dead after ~3 s (Ray's default: ~15 s), as the
# tests' Ray does.
os.environ.setdefault("RAY_health_check_period_ms", "1000")
os.environ.setdefault("RAY_health_check_failure_threshold", "3")

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import random
import signal
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import ray

from actors.session.names import NAMESPACE, actor_name, session_key
from benchmarks._harness import (
    LLMCAM_SERVE,
    MB,
    RESULTS,
    UNBOUNDED_ENV,
    LongRunLLM,
    Server,
    exit_on_sigterm,
    load_average,
    log_problems,
    machine,
    postgres_processes,
    proc_kind,
    scratch,
    server_env,
    sse_events,
    write_results,
)
from gateway.ray_conn import GCS_CAPS
from testing.postgres import PostgresServer
from testing.ray_node import RayNode
from testing.standins import Call, DigitrafficServer, Text, ToolCalls
from testing.standins.digitraffic_server import make_jpeg
from testing.standins.openai_server import message_text

MARKER = "soak"
STREAM_TAG = "soak-stream-"
WARMUP = 0.2  # share of the run left out of the memory slopes
CYCLE_S = 600.0  # one cycle of every fault kind per this many seconds of run
FAULT_KINDS = ("kill a session actor", "LLM fails (503)", "kill a notification child",
               "kill node 2, start another", "LLM slow", "restart the gateway")
CAMERAS = ("Porvoo", "Oulu", "helsinki konala")
SAFE_TO_RESEND = ("ConnectError", "ConnectTimeout", "429")  # the request recorded nothing
# what a retry of an idempotent request may get past (a 500 is a bug: it is not retried)
RETRYABLE = ("502", "503", "504", "ReadError", "ReadTimeout", "RemoteProtocolError",
             "WriteError", "PoolTimeout")


# --- the model ------------------------------------------------------------------------------


class SoakLLM(LongRunLLM):
    """The OpenAI stand-in, scripted per turn (`script`), plus one rule for streams: a round of
    a stream whose task names `soak-stream-…` calls send_notification with a message of its
    own (`<tag> #<n>`), and answers "ok" to the tool's result."""

    def __init__(self) -> None:
        super().__init__(keep=200)
        self.generated: Counter[str] = Counter()  # stream tag -> notifications asked for

    def reply(self, messages: list[dict[str, Any]]) -> Any:
        head = messages[0] if messages else {}
        text = message_text(head) if head.get("role") == "system" else ""
        if STREAM_TAG in text:
            if messages[-1].get("role") == "tool":
                return Text("ok")
            tag = text.split(STREAM_TAG, 1)[1].split(":", 1)[0]
            with self._lock:
                self.generated[tag] += 1
                n = self.generated[tag]
            return ToolCalls([Call("send_notification", {"msg": f"{tag} #{n} {uuid.uuid4()}"})])
        return super().reply(messages)


# --- outcomes and fault windows -------------------------------------------------------------


@dataclass
class Attempt:
    op: str
    t0: float
    t1: float
    outcome: str
    hidden: bool = False  # a later try of the same operation succeeded
    window: str = ""  # the fault it fell in, filled in at the end


@dataclass
class Ledger:
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    errors: list[Attempt] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)

    def add(self, op: str, t0: float, outcome: str, error: bool, detail: str = "") -> Attempt:
        attempt = Attempt(op, t0, time.monotonic(), outcome)
        self.counts[(op, outcome)] += 1
        if error:
            self.errors.append(attempt)
            if self.counts[(op, outcome)] <= 2:  # the first two of each kind of failure
                self.examples.append(f"{op} {outcome}: {detail[:200]}")
        return attempt


@dataclass
class Fault:
    kind: str
    planned: float  # seconds after the load started
    start: float = 0.0  # monotonic
    end: float = 0.0
    note: str = ""
    failed_requests: int = 0  # requests that failed in its window

    @property
    def done(self) -> bool:
        return self.end > 0


@dataclass
class Target:
    """Where the gateway is now: clients read `url` for each request and wait while it moves."""

    url: str
    up: bool = True

    async def wait_up(self, limit: float) -> bool:
        deadline = time.monotonic() + limit
        while not self.up and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        return self.up


class Api:
    """Requests with an outcome ledger: `retry="any"` tries an idempotent request again after
    a 502/503/504 or a broken connection until it succeeds or `limit` passes; `retry="safe"`
    only when nothing can have been recorded (the connection was never made, or a 429)."""

    def __init__(self, client: httpx.AsyncClient, target: Target, ledger: Ledger) -> None:
        self.client, self.target, self.ledger = client, target, ledger

    async def request(self, op: str, method: str, path: str, *, ok: Iterable[int] = (200,),
                      retry: str = "any", limit: float = 240.0,
                      **kwargs: Any) -> httpx.Response | None:
        ok = tuple(ok)
        deadline = time.monotonic() + limit
        failed: list[Attempt] = []
        while True:
            t0 = time.monotonic()
            response: httpx.Response | None = None
            detail = ""
            try:
                response = await self.client.request(method, self.target.url + path, **kwargs)
                outcome = str(response.status_code)
                if response.status_code not in ok:
                    detail = response.text[:200]
            except httpx.HTTPError as exc:
                outcome, detail = type(exc).__name__, str(exc)
            good = response is not None and response.status_code in ok
            attempt = self.ledger.add(op, t0, outcome, not good, detail)
            if good:
                for earlier in failed:
                    earlier.hidden = True
                return response
            failed.append(attempt)
            again = (retry == "any" and outcome in RETRYABLE) or outcome in SAFE_TO_RESEND
            if not again or time.monotonic() > deadline:
                return response
            await asyncio.sleep(1.0)
            await self.target.wait_up(max(0.0, deadline - time.monotonic()))


# --- sessions, streams, listeners -----------------------------------------------------------


@dataclass
class Session:
    index: int
    sid: str
    sent: list[str] = field(default_factory=list)  # every text POSTed, in order
    ok: list[str] = field(default_factory=list)  # those that got a 200
    uploads: list[str] = field(default_factory=list)  # file names that got a 201
    noti_ids: list[str] = field(default_factory=list)
    turns_busy: int = 0


class EventListener:
    """One /events client (a browser tab): reconnects with Last-Event-ID whenever its
    connection ends, and notes any id that does not come after the one before."""

    def __init__(self, api: Api, session: Session) -> None:
        self.api, self.session = api, session
        self.events: list[tuple[int, str, str]] = []  # (id, noti_id, message)
        self.ids: set[int] = set()
        self.repeated: list[int] = []
        self.backwards: list[int] = []
        self.connects = 0
        self.stopping = False
        self._failed: list[Attempt] = []

    @property
    def last(self) -> int | None:
        return self.events[-1][0] if self.events else None

    async def run(self) -> None:
        path = f"/api/sessions/{self.session.sid}/events"
        timeout = httpx.Timeout(30, read=60)  # a comment line comes at least every 15 s
        while not self.stopping:
            headers = {"Accept": "text/event-stream"}
            if self.last is not None:
                headers["Last-Event-ID"] = str(self.last)
            t0 = time.monotonic()
            detail = ""
            try:
                async with self.api.client.stream("GET", self.api.target.url + path,
                                                  headers=headers, timeout=timeout) as r:
                    if r.status_code != 200:
                        outcome = str(r.status_code)
                        detail = (await r.aread()).decode(errors="replace")[:200]
                    else:
                        self.connects += 1
                        self.api.ledger.counts[("events", "200 connected")] += 1
                        for earlier in self._failed:
                            earlier.hidden = True
                        self._failed.clear()
                        await self._read(r)
                        outcome = "closed by the server"
            except httpx.HTTPError as exc:
                outcome, detail = type(exc).__name__, str(exc)
            if self.stopping:
                return
            self._failed.append(self.api.ledger.add("events", t0, outcome, True, detail))
            await asyncio.sleep(1.0)
            await self.api.target.wait_up(120)

    async def _read(self, response: httpx.Response) -> None:
        async for event in sse_events(response.aiter_lines()):
            if "data" in event and "id" in event:
                data = json.loads(event["data"])
                self._got(int(event["id"]), data.get("noti_id", ""), data.get("message", ""))

    def _got(self, event_id: int, noti_id: str, message: str) -> None:
        last = self.last
        if event_id in self.ids:
            self.repeated.append(event_id)
            return
        if last is not None and event_id < last:
            self.backwards.append(event_id)
        self.ids.add(event_id)
        self.events.append((event_id, noti_id, message))


async def read_replay(api: Api, sid: str, expect: int, limit: float) -> list[tuple[int, str, str]]:
    """Every stored event of a session (`Last-Event-ID: 0`): read until `expect` came and then
    a quiet 3 s, or 3 s of quiet, or `limit`."""
    events: list[tuple[int, str, str]] = []
    headers = {"Accept": "text/event-stream", "Last-Event-ID": "0"}
    deadline = time.monotonic() + limit
    path = f"/api/sessions/{sid}/events"
    for _ in range(5):
        events.clear()
        t0 = time.monotonic()
        try:
            async with api.client.stream("GET", api.target.url + path, headers=headers,
                                         timeout=httpx.Timeout(30, read=None)) as r:
                if r.status_code != 200:
                    api.ledger.add("replay", t0, str(r.status_code), True)
                    await asyncio.sleep(1)
                    continue
                api.ledger.add("replay", t0, "200", False)

                async def until_quiet(lines: AsyncIterator[str]) -> AsyncIterator[str]:
                    while time.monotonic() < deadline:
                        quiet = 3.0 if len(events) >= expect else 30.0
                        try:
                            yield await asyncio.wait_for(anext(lines), quiet)
                        except (TimeoutError, StopAsyncIteration):
                            return

                async for event in sse_events(until_quiet(r.aiter_lines())):
                    if "data" in event and "id" in event:
                        data = json.loads(event["data"])
                        events.append((int(event["id"]), data.get("noti_id", ""),
                                       data.get("message", "")))
                return events
        except httpx.HTTPError as exc:
            api.ledger.add("replay", t0, type(exc).__name__, True, str(exc))
            await asyncio.sleep(1)
    return events


# --- the cluster ----------------------------------------------------------------------------


class Cluster:
    """The second node and the gateway (restarted on a new port by a fault)."""

    def __init__(self, env: dict[str, str], tmp: Path, node: RayNode,
                 startup_timeout: float) -> None:
        self.env, self.tmp, self.node = env, tmp, node
        self.startup_timeout = startup_timeout
        self.gateways: list[Server] = []
        self.target = Target("")

    @property
    def gateway(self) -> Server:
        return self.gateways[-1]

    def start_gateway(self) -> float:
        """A new `llmcam serve` on a fresh port (started again once if its start fails);
        seconds until it answered /healthz."""
        server = Server("llmcam serve", LLMCAM_SERVE, self.env,
                        self.tmp / f"gateway-{len(self.gateways) + 1}.log")
        self.gateways.append(server)
        ready = server.launch(self.startup_timeout)
        self.target.url = server.url
        return ready

    def stop(self) -> list[str]:
        killed = []
        for server in self.gateways:
            server.stop()
            killed += server.killed_after_shutdown
        return killed


# --- memory ---------------------------------------------------------------------------------


@dataclass
class Sample:
    t: float  # seconds after the load started
    by_kind: dict[str, tuple[float, float, int, frozenset[int]]]  # rss, uss, n, pids


def kind_of(p: psutil.Process, gateway_pid: int | None, node2: set[int]) -> str:
    """This benchmark's names for the processes of the memory table."""
    found = proc_kind(p, gateway_pid)
    where = " (node 2)" if p.pid in node2 else " (head)"
    if found in ("root", "gone", "gcs_server"):
        return "gateway" if found == "root" else found
    if found == "raylet":
        return "raylet" + where
    if found == "postgres":
        return "PostgreSQL"
    title = found.removeprefix("ray::")
    if found.startswith("ray::") and title and title != "IDLE" and not title.endswith("Agent"):
        return found
    return "Ray other" + where


def sample(t: float, cluster: Cluster, pg: PostgresServer) -> Sample:
    me = psutil.Process()
    procs = list({p.pid: p for p in [*me.children(recursive=True),
                                     *postgres_processes(pg)]}.values())
    gw = cluster.gateway.proc.pid if cluster.gateways and cluster.gateway.proc else None
    node2 = set(cluster.node.processes())
    acc: dict[str, list[Any]] = defaultdict(lambda: [0.0, 0.0, 0, set()])
    for p in procs:
        kind = kind_of(p, gw, node2)
        if kind == "gone":
            continue
        with contextlib.suppress(psutil.Error):
            info = p.memory_full_info()
            entry = acc[kind]
            entry[0] += info.rss / MB
            entry[1] += info.uss / MB
            entry[2] += 1
            entry[3].add(p.pid)
    return Sample(t, {k: (v[0], v[1], v[2], frozenset(v[3])) for k, v in acc.items()})


def slope_mb_per_h(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MB) points, in MB per hour."""
    if len(points) < 3:
        return None
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    sxx = sum((t - mx) ** 2 for t, _ in points)
    if sxx == 0:
        return None
    return sum((t - mx) * (v - my) for t, v in points) / sxx * 3600


def memory_rows(samples: list[Sample], duration: float) -> list[tuple[str, ...]]:
    """Per kind: processes, USS and RSS at start and end, and the USS slope after warm-up over
    the last stretch in which the kind's processes stayed the same (a restart is a step, not a
    leak), or of the USS per process over all samples after warm-up where the processes came
    and went."""
    if not samples:
        return []
    first, last = samples[0], samples[-1]
    kinds = sorted({k for s in samples for k in s.by_kind},
                   key=lambda k: -last.by_kind.get(k, (0, 0, 0, frozenset()))[1])
    warm = [s for s in samples if s.t >= WARMUP * duration]
    rows = []
    for kind in kinds:
        a = first.by_kind.get(kind, (0.0, 0.0, 0, frozenset()))
        b = last.by_kind.get(kind, (0.0, 0.0, 0, frozenset()))
        series = [s for s in warm if kind in s.by_kind]
        stretch: list[Sample] = []
        for s in reversed(series):
            if s.by_kind[kind][3] != b[3]:
                break
            stretch.insert(0, s)
        span = warm[-1].t - warm[0].t if len(warm) > 1 else 0.0
        use = stretch if len(stretch) >= 4 and span and \
            (stretch[-1].t - stretch[0].t) >= 0.3 * span else series
        if len({s.by_kind[kind][2] for s in use}) > 1:  # processes came and went: per one
            slope = slope_mb_per_h([(s.t, s.by_kind[kind][1] / s.by_kind[kind][2])
                                    for s in use])
            per = ", per process"
        else:
            slope = slope_mb_per_h([(s.t, s.by_kind[kind][1]) for s in use])
            per = ""
        over = f" ({(use[-1].t - use[0].t) / 60:.1f} min{per})" if len(use) > 1 else ""
        rows.append((kind, f"{a[2]} → {b[2]}", f"{a[1]:.0f} → {b[1]:.0f}",
                     f"{a[0]:.0f} → {b[0]:.0f}",
                     (f"{slope:+.0f}{over}" if slope is not None else "—")))
    return rows


# --- the run --------------------------------------------------------------------------------


@dataclass
class Run:
    minutes: float
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    load_before: str = field(default_factory=load_average)
    ledger: Ledger = field(default_factory=Ledger)
    faults: list[Fault] = field(default_factory=list)
    sessions: list[Session] = field(default_factory=list)
    listeners: list[EventListener] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    t0: float = 0.0  # monotonic, when the load started
    load_s: float = 0.0
    setup_s: float = 0.0
    gateway_ready_s: list[float] = field(default_factory=list)
    problems: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    lost: int = 0
    uploads_lost: int = 0
    duplicated: int = 0
    disordered: int = 0
    failed_turns_stored: int = 0
    streams_ended: list[str] = field(default_factory=list)
    generated: int = 0
    stored_events: int = 0
    seen_events: int = 0
    sent_counted: int = 0
    llm_calls: int = 0
    failure: str = ""
    killed: list[str] = field(default_factory=list)
    log_problems: list[str] = field(default_factory=list)

    def problem(self, what: str, text: str) -> None:
        self.problems[what].append(text)

    def unexplained(self) -> list[Attempt]:
        return [a for a in self.ledger.errors if not a.window and not a.hidden]

    @property
    def passed(self) -> bool:
        return not (self.failure or self.lost or self.duplicated or self.disordered
                    or self.streams_ended or self.unexplained())


def plan(duration: float) -> list[Fault]:
    """The faults, evenly over the middle of the run (none in its first 8% and last 15%)."""
    cycles = max(1, round(duration / CYCLE_S))
    kinds = [k for _ in range(cycles) for k in FAULT_KINDS]
    first, last = 0.08 * duration, 0.85 * duration
    step = (last - first) / max(1, len(kinds) - 1)
    return [Fault(kind, first + i * step) for i, kind in enumerate(kinds)]


async def inject(fault: Fault, run: Run, cluster: Cluster, llm: SoakLLM, rng: random.Random,
                 args: argparse.Namespace, count: int) -> None:
    fault.start = time.monotonic()
    hold = min(45.0, max(10.0, 0.04 * args.minutes * 60))
    try:
        if fault.kind == "kill a session actor":
            restart = count % 2 == 1
            fault.note = await asyncio.to_thread(_kill_session_actor, run.sessions, rng, restart)
        elif fault.kind == "kill a notification child":
            streaming = [s for s in run.sessions if s.noti_ids]
            fault.note = await asyncio.to_thread(_kill_child, rng.choice(streaming)) \
                if streaming else "no stream to kill"
        elif fault.kind == "LLM fails (503)":
            llm.fail_all = 503
            await asyncio.sleep(hold)
            llm.fail_all = None
            fault.note = f"every model call answered 503 for {hold:.0f} s"
        elif fault.kind == "LLM slow":
            llm.delay = args.slow_delay
            await asyncio.sleep(hold)
            llm.delay = 0.0
            fault.note = f"every model call {args.slow_delay:g} s late for {hold:.0f} s"
        elif fault.kind == "kill node 2, start another":
            t = time.monotonic()
            await asyncio.to_thread(cluster.node.kill)
            await asyncio.to_thread(cluster.node.start, args.startup_timeout)
            fault.note = f"SIGKILL, a new node alive {time.monotonic() - t:.0f} s later"
        elif fault.kind == "restart the gateway":
            cluster.target.up = False
            t = time.monotonic()
            await asyncio.to_thread(cluster.gateway.stop)
            stopped = time.monotonic() - t
            ready = await asyncio.to_thread(cluster.start_gateway)
            run.gateway_ready_s.append(ready)
            cluster.target.up = True
            fault.note = (f"SIGTERM, stopped in {stopped:.0f} s; the new one (port "
                          f"{cluster.gateway.port}) ready {ready:.0f} s later")
    except Exception as exc:
        fault.note = f"the fault itself failed: {type(exc).__name__}: {str(exc)[:200]}"
        llm.fail_all, llm.delay = None, 0.0
        if fault.kind == "restart the gateway":
            raise
    finally:
        fault.end = time.monotonic()


def _kill_session_actor(sessions: list[Session], rng: random.Random, restart: bool) -> str:
    order = list(sessions)
    rng.shuffle(order)
    order.sort(key=lambda s: -s.turns_busy)  # one with a turn in flight, if any
    for s in order:
        try:
            handle = ray.get_actor(actor_name(s.sid), namespace=NAMESPACE)
        except ValueError:
            continue  # passivated just now
        ray.kill(handle, no_restart=not restart)
        how = "Ray restarts it" if restart else "no restart: the next request rebuilds it"
        busy = "a turn in flight" if s.turns_busy else "idle"
        return f"ray.kill of session {s.index}'s actor ({busy}; {how})"
    return "no session actor was live"


def _kill_child(s: Session) -> str:
    from ray._private import state as ray_state

    name = f"notify:{session_key(s.sid)}"
    for info in ray_state.actors().values():
        if info.get("Name") == name and info.get("State") == "ALIVE" and info.get("Pid"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(info["Pid"]), signal.SIGKILL)
                return f"SIGKILL to session {s.index}'s notification child (Ray restarts it)"
    with contextlib.suppress(ValueError):
        ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=False)
        return f"ray.kill (restart) of session {s.index}'s notification child"
    return f"session {s.index} had no live notification child"


async def chatter(api: Api, llm: SoakLLM, s: Session, rng: random.Random,
                  stop: asyncio.Event, args: argparse.Namespace, image: bytes) -> None:
    turn = 0
    base = f"/api/sessions/{s.sid}"
    while not stop.is_set():
        turn += 1
        text = f"soak {s.index}.{turn} {uuid.uuid4().hex[:12]}"
        if turn % 5 == 0:
            llm.script(text, [ToolCalls([Call("cap", {"key": rng.choice(CAMERAS)})])])
        elif turn % 7 == 0:
            r = await api.request("upload", "POST", f"{base}/files", ok=(201,),
                                  files={"file": ("soak.jpg", image, "image/jpeg")})
            if r is not None and r.status_code == 201:
                name = r.json()["name"]
                s.uploads.append(name)
                call = Call("detect_objects", {"image_path": name}) if turn % 2 \
                    else Call("list_image_files", {})
                llm.script(text, [ToolCalls([call])])
        s.sent.append(text)
        s.turns_busy += 1
        try:
            r = await api.request("turn", "POST", f"{base}/messages", retry="safe",
                                  json={"content": text})
        finally:
            s.turns_busy -= 1
        if r is not None and r.status_code == 200 and isinstance(r.json().get("reply"), str):
            s.ok.append(text)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), rng.uniform(0.2, args.think))


async def start_stream(api: Api, llm: SoakLLM, s: Session, interval: float) -> None:
    for attempt in range(5):
        text = f"soak {s.index}.stream{attempt} {uuid.uuid4().hex[:12]}: watch the cameras"
        task = f"{STREAM_TAG}{s.index}: send one notification every round"
        llm.script(text, [ToolCalls([Call("start_notification_stream",
                                          {"task": task, "interval_seconds": interval})])])
        s.sent.append(text)
        r = await api.request("turn", "POST", f"/api/sessions/{s.sid}/messages",
                              retry="safe", json={"content": text})
        if r is None or r.status_code != 200:
            continue
        s.ok.append(text)
        for m in r.json().get("messages", []):
            content = str(m.get("content") or "")
            if m.get("role") == "tool" and "Notification stream started with ID" in content:
                s.noti_ids.append(content.rsplit(" ", 1)[-1].strip())
        if s.noti_ids:
            return
    raise RuntimeError(f"session {s.index}: its notification stream did not start")


async def sampler(run: Run, cluster: Cluster, pg: PostgresServer, t0: float,
                  stop: asyncio.Event, every: float) -> None:
    while True:
        run.samples.append(await asyncio.to_thread(sample, time.monotonic() - t0, cluster, pg))
        if stop.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)


async def faults(run: Run, cluster: Cluster, llm: SoakLLM, rng: random.Random,
                 args: argparse.Namespace, t0: float, stop: asyncio.Event) -> None:
    counts: Counter[str] = Counter()
    for fault in run.faults:
        wait = t0 + fault.planned - time.monotonic()
        if wait > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
        if stop.is_set():
            return
        print(f"{time.monotonic() - t0:6.0f} s  fault: {fault.kind}", flush=True)
        await inject(fault, run, cluster, llm, rng, args, counts[fault.kind])
        counts[fault.kind] += 1
        print(f"{time.monotonic() - t0:6.0f} s  … {fault.note}", flush=True)


async def soak(args: argparse.Namespace, run: Run, cluster: Cluster, llm: SoakLLM,
               pg: PostgresServer) -> None:
    rng = random.Random(args.seed)
    limits = httpx.Limits(max_connections=args.sessions * 2 + 16, max_keepalive_connections=0)
    timeout = httpx.Timeout(args.request_timeout, connect=10)
    image = make_jpeg("soak", 640, 360)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        api = Api(client, cluster.target, run.ledger)
        for i in range(args.sessions):
            r = await api.request("create", "POST", "/api/sessions", ok=(201,))
            if r is None or r.status_code != 201:
                raise RuntimeError(f"no session: {r.status_code if r else 'no answer'}")
            run.sessions.append(Session(i, r.json()["session_id"]))
        for s in run.sessions[:args.stream_sessions]:
            run.listeners.append(EventListener(api, s))
        listening = [asyncio.create_task(li.run()) for li in run.listeners]
        for s in run.sessions[:args.stream_sessions]:
            await start_stream(api, llm, s, args.interval)
        duration = args.minutes * 60
        run.faults = plan(duration)
        stop_load, stop_sampling = asyncio.Event(), asyncio.Event()
        t0 = time.monotonic()
        run.t0 = t0
        print(f"load: {args.sessions} sessions, {args.stream_sessions} streams, "
              f"{len(run.faults)} faults over {args.minutes:g} min", flush=True)
        chatting = [asyncio.create_task(chatter(api, llm, s, rng, stop_load, args, image))
                    for s in run.sessions]
        sampling = asyncio.create_task(sampler(run, cluster, pg, t0, stop_sampling,
                                               args.sample_every))
        faulting = asyncio.create_task(faults(run, cluster, llm, rng, args, t0, stop_load))
        try:
            await asyncio.sleep(duration)
            stop_load.set()
            print(f"{time.monotonic() - t0:6.0f} s  load stopped; finishing", flush=True)
            await _finish(faulting, args.startup_timeout + 120)
            await _finish(asyncio.gather(*chatting), args.request_timeout + 60)
            run.load_s = time.monotonic() - t0
            stop_sampling.set()  # the last sample: the end of the load, streams still running
            await _finish(sampling, 60)
            await check(api, run, llm)
        finally:
            stop_load.set()
            for li in run.listeners:
                li.stopping = True
            for task in [*chatting, *listening, faulting]:
                task.cancel()
            await asyncio.gather(*chatting, *listening, faulting, return_exceptions=True)
            stop_sampling.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sampling, 60)
            for a in run.ledger.errors:  # the latest fault whose window it overlaps
                fault = max((f for f in run.faults if f.done and
                             a.t0 <= f.end + args.grace and a.t1 >= f.start),
                            key=lambda f: f.start, default=None)
                if fault is not None:
                    a.window = fault.kind
                    fault.failed_requests += 1


async def _finish(awaitable: Any, limit: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(asyncio.ensure_future(awaitable)), limit)


async def check(api: Api, run: Run, llm: SoakLLM) -> None:
    """Stop the streams, then compare what the clients got with what is stored."""
    # the streams: every one still running, then stopped
    sent: dict[str, int] = {}
    for s in run.sessions:
        if not s.noti_ids:
            continue
        r = await api.request("check", "GET", f"/api/sessions/{s.sid}/notifications")
        streams = r.json() if r is not None and r.status_code == 200 else []
        for st in streams:
            if st["status"] != "running":
                run.streams_ended.append(f"session {s.index}: stream {st['noti_id'][:8]} "
                                         f"{st['status']} before the end")
            await api.request("check", "DELETE",
                              f"/api/sessions/{s.sid}/notifications/{st['noti_id']}",
                              ok=(204, 404))
    await asyncio.sleep(3)  # a round that was under way stores its event
    for s in run.sessions:
        if s.noti_ids:
            r = await api.request("check", "GET", f"/api/sessions/{s.sid}/notifications")
            if r is not None and r.status_code == 200:
                sent[s.sid] = sum(int(st.get("sent", 0)) for st in r.json())
    # every listener against a full replay
    for li in run.listeners:
        s = li.session
        replay = await read_replay(api, s.sid, sent.get(s.sid, 0), 180)
        top = max((e[0] for e in replay), default=0)
        deadline = time.monotonic() + 90
        while (li.last or 0) < top and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)  # anything extra (a repeat) would show now
        li.stopping = True
        run.stored_events += len(replay)
        run.seen_events += len(li.events)
        run.sent_counted += sent.get(s.sid, 0)
        if sent.get(s.sid) is not None and sent[s.sid] != len(replay):
            run.problem("counts", f"session {s.index}: the streams count {sent[s.sid]} sent, "
                        f"the replay has {len(replay)}")
        ids = [e[0] for e in replay]
        if len(set(ids)) != len(ids):
            run.duplicated += len(ids) - len(set(ids))
            run.problem("duplicated", f"session {s.index}: the replay repeats ids")
        if ids != sorted(ids):
            run.disordered += 1
            run.problem("out of order", f"session {s.index}: the replay's ids go back")
        messages = Counter(e[2] for e in replay)
        twice = [m for m, n in messages.items() if n > 1]
        if twice:
            run.duplicated += sum(messages[m] - 1 for m in twice)
            run.problem("duplicated", f"session {s.index}: stored twice: {twice[:3]}")
        if li.repeated:
            run.duplicated += len(li.repeated)
            run.problem("duplicated", f"session {s.index}: the listener got ids "
                        f"{li.repeated[:5]} again")
        if li.backwards:
            run.disordered += len(li.backwards)
            run.problem("out of order", f"session {s.index}: the listener's ids went back "
                        f"to {li.backwards[:5]}")
        stored = {e[0]: e for e in replay}
        seen = {e[0]: e for e in li.events}
        missing = sorted(set(stored) - set(seen))
        phantom = sorted(set(seen) - set(stored))
        differ = [i for i in set(stored) & set(seen) if stored[i] != seen[i]]
        if missing:
            run.lost += len(missing)
            run.problem("lost", f"session {s.index}: stored, never seen by its listener: "
                        f"ids {missing[:8]}")
        if phantom:
            run.lost += len(phantom)
            run.problem("lost", f"session {s.index}: seen by its listener, not in the replay: "
                        f"ids {phantom[:8]}")
        if differ:
            run.duplicated += len(differ)
            run.problem("duplicated", f"session {s.index}: ids {differ[:5]} carried other "
                        "events live than in the replay")
    if not any(s.ok for s in run.sessions):
        run.failure = "no turn was answered"
    with llm._lock:
        run.generated = sum(llm.generated.values())
        run.llm_calls = llm.calls
    # every history and every upload
    for s in run.sessions:
        r = await api.request("check", "GET", f"/api/sessions/{s.sid}/messages")
        if r is None or r.status_code != 200:
            run.failure = f"session {s.index}: its history could not be read"
            continue
        users = [str(m.get("content")) for m in r.json() if m.get("role") == "user"]
        counts = Counter(users)
        known = set(s.sent)
        for text, n in counts.items():
            if text not in known:
                run.problem("unknown", f"session {s.index}: a user message nobody sent: "
                            f"{text[:60]!r}")
            elif n > 1:
                run.duplicated += n - 1
                run.problem("duplicated", f"session {s.index}: {text!r} stored {n} times")
        missing = [t for t in s.ok if t not in counts]
        if missing:
            run.lost += len(missing)
            run.problem("lost", f"session {s.index}: answered 200, not stored: {missing[:3]}")
        first = {}
        for i, text in enumerate(users):
            first.setdefault(text, i)
        positions = [first[t] for t in s.ok if t in first]
        if positions != sorted(positions):
            run.disordered += 1
            run.problem("out of order", f"session {s.index}: the answered turns are stored "
                        "in another order")
        ok = set(s.ok)
        run.failed_turns_stored += sum(1 for t in s.sent if t not in ok and t in counts)
        r = await api.request("check", "GET", f"/api/sessions/{s.sid}/files")
        if r is None or r.status_code != 200:
            run.failure = f"session {s.index}: its files could not be listed"
            continue
        names = Counter(f["name"] for f in r.json())
        gone = [n for n in s.uploads if n not in names]
        if gone:
            run.lost += len(gone)
            run.uploads_lost += len(gone)
            run.problem("lost", f"session {s.index}: uploads answered 201, not listed: "
                        f"{gone[:3]}")


# --- the report -----------------------------------------------------------------------------


def report(run: Run, args: argparse.Namespace) -> str:
    turns = sum(len(s.sent) for s in run.sessions)
    answered = sum(len(s.ok) for s in run.sessions)
    uploads = sum(len(s.uploads) for s in run.sessions)
    unexplained = run.unexplained()
    hidden = [a for a in run.ledger.errors if a.hidden]
    reconnects = sum(max(0, li.connects - 1) for li in run.listeners)
    slopes = memory_rows(run.samples, args.minutes * 60)
    lines = [
        "## Soak with faults (`benchmarks/soak.py`)",
        "",
        f"Run {run.started:%Y-%m-%d %H:%M} UTC on {machine()}; Ray "
        f"{importlib.metadata.version('ray')}. Load average (1 / 5 / 15 min) before "
        f"{run.load_before}, after {load_average()}. The load ran {run.load_s / 60:.1f} min "
        f"(asked: {args.minutes:g}, then the turns and the fault under way finished); setup "
        f"{run.setup_s:.0f} s.",
        "",
        f"What: PostgreSQL store, a head Ray node and a second one, one `llmcam serve` joined "
        f"to them (`LLMCAM_IDLE_SECONDS={args.idle_seconds:g}`, no spare sessions); "
        f"{args.sessions} sessions chatting turn after turn (pauses of 0.2–{args.think:g} s, "
        "every 5th turn a `cap` capture from the weather-camera stand-in, every 7th an upload "
        f"and `detect_objects` or `list_image_files` on it); {args.stream_sessions} of them "
        f"with a notification stream (every {args.interval:g} s a `send_notification`) and an "
        "`/events` listener that reconnects with `Last-Event-ID`. LLM: the OpenAI stand-in.",
        "",
        "| check | value | verdict |",
        "|---|---|---|",
        f"| user messages answered 200, stored exactly once and in order | {answered} of "
        f"{turns} sent ({turns - answered} failed, {run.failed_turns_stored} of those stored "
        f"anyway, once) | {_yes(not run.lost and not run.duplicated and not run.disordered)} |",
        f"| uploads answered 201, listed | {uploads} | "
        f"{_yes(not run.uploads_lost)} |",
        f"| notifications: asked by the model / counted `sent` / in the replay / seen by "
        f"listeners | {run.generated} / {run.sent_counted} / {run.stored_events} / "
        f"{run.seen_events} | {_yes(run.stored_events == run.seen_events)} |",
        f"| listener reconnects (each with `Last-Event-ID`) | {reconnects} | |",
        f"| **lost** (history, uploads, events) | {run.lost} | {_yes(run.lost == 0)} |",
        f"| **duplicated** | {run.duplicated} | {_yes(run.duplicated == 0)} |",
        f"| out of order | {run.disordered} | {_yes(run.disordered == 0)} |",
        f"| streams that ended by themselves | {len(run.streams_ended)} | "
        f"{_yes(not run.streams_ended)} |",
        f"| failed requests: in a fault window / made up for by a retry / **unexplained** | "
        f"{sum(1 for a in run.ledger.errors if a.window)} / {len(hidden)} / "
        f"{len(unexplained)} | {_yes(not unexplained)} |",
        f"| LLM calls | {run.llm_calls} | |",
    ]
    if run.failure:
        lines.append(f"| the run itself | failed: {run.failure} | **no** |")
    lines += ["", "Faults (time after the load started; each one's window lasts until "
              f"{args.grace:g} s after it was over):", "",
              "| at (s) | fault | took (s) | what happened | failed requests in its window |",
              "|---|---|---|---|---|"]
    for f in run.faults:
        if f.done:
            lines.append(f"| {f.start - run.t0:.0f} | {f.kind} | {f.end - f.start:.0f} | "
                         f"{f.note} | {f.failed_requests} |")
        else:
            lines.append(f"| {f.planned:.0f} | {f.kind} | — | not reached | |")
    lines += ["", "Requests by outcome (per operation; `events` are listener connections, each "
              "followed by a reconnect):", "", "| operation | outcomes |", "|---|---|"]
    ops: dict[str, list[str]] = defaultdict(list)
    for (op, outcome), n in sorted(run.ledger.counts.items()):
        ops[op].append(f"{outcome} × {n}")
    lines += [f"| {op} | {', '.join(v)} |" for op, v in ops.items()]
    windows: dict[str, Counter[str]] = defaultdict(Counter)
    for a in run.ledger.errors:
        key = a.window or ("outside, made up for by a retry" if a.hidden
                           else "**outside every fault window**")
        windows[key][f"{a.op} {a.outcome}"] += 1
    lines += ["", "Failed requests by the fault window they fell in:", "",
              "| window | failed requests |", "|---|---|"]
    lines += [f"| {k} | {', '.join(f'{o} × {n}' for o, n in v.most_common())} |"
              for k, v in windows.items()] or ["| — | none |"]
    lines += ["", "Memory (MB = 10^6 bytes; USS and RSS summed over the kind's processes, "
              f"sampled every {args.sample_every:g} s, {len(run.samples)} samples; slope: "
              "least squares of USS after the first 20% of the run, over the last stretch with "
              "the same processes where there is one, else of the USS per process):", "",
              "| processes | count start → end | USS start → end | RSS start → end | "
              "USS slope (MB/h) |", "|---|---|---|---|---|"]
    lines += [f"| {' | '.join(row)} |" for row in slopes]
    if args.minutes < 10:
        lines += ["", f"Over {args.minutes:g} minutes the slopes are mostly start-up (the "
                  "detector loading its model, Ray's workers warming up); they mean something "
                  "over the default 30 minutes."]
    if unexplained:
        lines += ["", "Unexplained failures (s after the load started):",
                  *(f"- {a.op} {a.outcome} at {a.t0 - run.t0:.0f}–{a.t1 - run.t0:.0f} s"
                    for a in unexplained[:10])]
    if run.problems:
        lines += ["", "Problems:"]
        for what, items in run.problems.items():
            lines += [f"- {what}: {x}" for x in items[:5]]
    if run.streams_ended:
        lines += ["", "Streams:", *(f"- {x}" for x in run.streams_ended)]
    if run.ledger.examples:
        lines += ["", "First failures, as answered:",
                  *(f"- `{x.replace('|', '/').replace(chr(10), ' ')}`"
                    for x in run.ledger.examples[:12])]
    if run.log_problems:
        lines += ["", f"Gateway logs: {len(run.log_problems)} warning/error lines; the first:",
                  *(f"- `{x[:160].replace('|', '/')}`" for x in run.log_problems[:4])]
    if run.killed:
        lines += ["", "Had to kill after the gateway stopped: " + ", ".join(run.killed[:8])]
    lines += ["", "Verdict: " + verdict(run)]
    return "\n".join(lines) + "\n"


def _yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def verdict(run: Run) -> str:
    worst = ""
    if run.samples:
        rows = {r[0]: r[4] for r in memory_rows(run.samples, run.minutes * 60)}
        worst = ", ".join(f"{k} {rows[k]}" for k in ("gateway", "gcs_server", "raylet (head)")
                          if k in rows)
    return (f"{'PASS' if run.passed else 'FAIL'}: lost={run.lost} duplicated={run.duplicated} "
            f"out_of_order={run.disordered} unexplained_errors={len(run.unexplained())} "
            f"streams_ended={len(run.streams_ended)}"
            + (f"; USS slope MB/h: {worst}" if worst else "")
            + (f"; run failed: {run.failure}" if run.failure else ""))


# --- main -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="how long the load runs")
    parser.add_argument("--sessions", type=int, default=6)
    parser.add_argument("--stream-sessions", type=int, default=2,
                        help="sessions (of --sessions) with a notification stream and a listener")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between rounds")
    parser.add_argument("--think", type=float, default=5.0,
                        help="longest pause between two turns of a session (s)")
    parser.add_argument("--idle-seconds", type=float, default=3.0, help="LLMCAM_IDLE_SECONDS")
    parser.add_argument("--slow-delay", type=float, default=3.0,
                        help="seconds each model call waits during the slow-LLM fault")
    parser.add_argument("--grace", type=float, default=20.0,
                        help="seconds after a fault during which errors are put down to it")
    parser.add_argument("--sample-every", type=float, default=15.0, help="memory samples (s)")
    parser.add_argument("--request-timeout", type=float, default=180.0)
    parser.add_argument("--startup-timeout", type=float, default=240.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    parser.add_argument("--keep-temp", action="store_true", help="keep logs and data")
    args = parser.parse_args(argv)
    if not 0 <= args.stream_sessions <= args.sessions:
        parser.error("--stream-sessions must be between 0 and --sessions")

    exit_on_sigterm()
    run = Run(args.minutes)
    t_setup = time.monotonic()
    cluster: Cluster | None = None
    with scratch("llmcam-soak-", keep=args.keep_temp) as tmp:
        try:
            with contextlib.ExitStack() as stack:
                print("setup: PostgreSQL, stand-ins, head Ray, node 2, gateway", flush=True)
                pg = stack.enter_context(PostgresServer())
                llm = stack.enter_context(SoakLLM())
                cameras = stack.enter_context(DigitrafficServer())
                # the caps on the GCS's records that `llmcam serve` gives its own Ray (and
                # ray_cluster.yaml a cluster's): each passivation leaves some; the raylets (ours
                # and the second node's) hand PYTHONPATH on to the workers: they import actors/
                for name, value in GCS_CAPS.items():
                    os.environ.setdefault(name, value)
                os.environ["PYTHONPATH"] = server_env()["PYTHONPATH"]
                ray.init(address="local", _node_ip_address="127.0.0.1", namespace=NAMESPACE,
                         include_dashboard=False, num_cpus=2, logging_level="WARNING",
                         _temp_dir=str(tmp / "ray"))
                stack.callback(ray.shutdown)
                gcs = ray.get_runtime_context().gcs_address
                node = stack.enter_context(RayNode(gcs, {"node2": 1}, num_cpus=1))
                node.start(timeout=args.startup_timeout)
                env = server_env(
                    **UNBOUNDED_ENV, RAY_ADDRESS=gcs, LLMCAM_DB=pg.url,
                    LLMCAM_DATA=str(tmp / "data"), OPENAI_BASE_URL=llm.base_url,
                    OPENAI_API_KEY="soak", LLMCAM_MODEL="soak-model",
                    LLMCAM_VISION_MODEL="soak-vision", LLMCAM_YOLO_MODEL="yolov8n.yaml",
                    LLMCAM_DETECTOR_GPUS="0", LLMCAM_WEATHERCAM_URL=cameras.base_url,
                    LLMCAM_ALLOW_HOSTS="127.0.0.1", LLMCAM_IDLE_SECONDS=str(args.idle_seconds),
                    LLMCAM_SPARE_SESSIONS="0", LLMCAM_NOTIFY_INTERVAL=str(args.interval),
                    LLMCAM_MAX_REPLAY="1000000")  # the final replay reads every event
                cluster = Cluster(env, tmp, node, args.startup_timeout)
                run.gateway_ready_s.append(cluster.start_gateway())
                run.setup_s = time.monotonic() - t_setup
                print(f"setup: done in {run.setup_s:.0f} s; gateway at {cluster.target.url}",
                      flush=True)
                try:
                    asyncio.run(soak(args, run, cluster, llm, pg))
                finally:
                    run.killed = cluster.stop()
                    for server in cluster.gateways:
                        run.log_problems += log_problems(server.log)
        except BaseException as exc:  # SIGTERM or a failure: report what was seen
            run.failure = f"{type(exc).__name__}: {str(exc)[:300]}"
            print(f"run failed: {run.failure}", file=sys.stderr, flush=True)
            if cluster is not None and cluster.gateways:
                print(f"--- gateway log tail ---\n{cluster.gateway.log_tail()}",
                      file=sys.stderr)
    section = report(run, args)
    print(section)
    print(f"VERDICT {verdict(run)}", flush=True)
    if not args.no_write:
        write_results(args.out, MARKER, section)
        print(f"written to {args.out}")
    return 0 if run.passed else 1


if __name__ == "__main__":
    sys.exit(main())
