"""Sessions at scale: virtual session actors with the SQLite and the PostgreSQL store.

Runs the real gateway (`llmcam serve`, embedded Ray) against the zero-latency OpenAI stand-in and
measures, for each store: the time per `POST /api/sessions` over N creates; the first-request
latency of a live session (warm) against the one-process baseline (`benchmarks/baseline_app.py`)
in the same run; the first request of a never-activated and of a passivated session (cold); the
CPU of the whole system with N sessions stored and none live; the most live sessions the node
held and the memory of a session actor; appends/s of the store under 100 concurrent writers (and
the memory the PostgreSQL driver adds to a process, psycopg against asyncpg where asyncpg can be
installed into a scratch venv); and a churn of activations and passivations in a row (gcs_server
memory before/after, every session whole). Writes a table to `benchmarks/RESULTS.md` between
`<!-- sessions_scale -->` and `<!-- /sessions_scale -->`.

    cd /work/main && .venv/bin/python -m benchmarks.sessions_scale [--store sqlite|postgresql|both]
        [--sessions 10000] [--live 300] [--churn 120] [--cold 30] [--writers 100]

Bounded: every phase has a time limit, and the servers it starts (gateway and its Ray,
PostgreSQL, baseline) and their temp dirs are removed on the way out, also on error or SIGTERM.

Over 300 lines on purpose: a benchmark reads top to bottom as one script (its scenario, its
same-run baseline, its table); what scripts share is in _harness.py.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

from actors.session.names import session_key
from actors.store import open_store
from benchmarks._harness import (
    BASELINE_APP,
    LLMCAM_SERVE,
    MB,
    RESULTS,
    ROOT,
    UNBOUNDED_ENV,
    CpuMeter,
    Errors,
    Server,
    exit_on_sigterm,
    load_average,
    log_problems,
    machine,
    pct,
    postgres_processes,
    proc_kind,
    scratch,
    server_env,
    write_results,
)
from testing.standins import OpenAIServer

SECTION = "sessions_scale"
GB = 1_000_000_000
TARGET_CREATE_P50_MS = 5.0
TARGET_WARM_DELTA_MS = 10.0
TARGET_COLD_P50_S = 1.2
TARGET_COLD_P99_S = 3.0
TARGET_IDLE_CORES = 0.1
TARGET_LIVE = 300
TARGET_USS_MB = 45.0
MIN_AVAILABLE = 3 * GB  # the live phase stops before the machine's available memory drops below
WARM_SESSIONS, WARM_ROUNDS = 5, 10
USS_SAMPLE = 20
SCRATCH_VENV = Path(tempfile.gettempdir()) / "ss_asyncpg_venv"


def load1() -> float:
    return os.getloadavg()[0]


def log(msg: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {msg}", flush=True)


# --- processes


def kind(server: Server, p: psutil.Process) -> str:
    """This benchmark's names for the processes of the idle CPU breakdown."""
    found = proc_kind(p, server.proc.pid if server.proc else None)
    if found in ("root", "gone"):
        return "gateway" if found == "root" else found
    if found in ("gcs_server", "raylet"):
        return "gcs_server+raylet"
    if found == "postgres":
        return "PostgreSQL server"
    if found == "ray::SessionActor":
        return "session actors"
    if found.startswith("ray::"):
        return "other Ray workers (detector, Serve, registry, idle pool)"
    return "Ray dashboard/agents/other"


def gcs_rss(server: Server) -> float | None:
    for p in server.tree():
        with contextlib.suppress(psutil.Error):
            if p.name() == "gcs_server":
                return p.memory_info().rss / MB
    return None


# --- results


@dataclass
class StoreResult:
    store: str
    create_ms: list[float] = field(default_factory=list)
    create_planned: int = 0
    create_s: float | None = None
    create_load: float | None = None
    warm_get_ms: list[float] = field(default_factory=list)
    warm_turn_ms: list[float] = field(default_factory=list)
    warm_tools_ms: list[float] = field(default_factory=list)
    warm_load: float | None = None
    cold_new_s: list[float] = field(default_factory=list)
    cold_new_load: float | None = None
    cold_pass_s: list[float] = field(default_factory=list)
    cold_pass_load: float | None = None
    passivate_wait_s: float | None = None
    idle_cores: float | None = None
    idle_by_kind: dict[str, float] = field(default_factory=dict)
    idle_window_s: float | None = None
    idle_machine_busy: float | None = None
    idle_stored: int | None = None
    idle_live: int | None = None
    idle_load: float | None = None
    live_target: int = 0
    live_held: int = 0
    live_stop: str = ""
    live_s: float | None = None
    live_uss_mb: list[float] = field(default_factory=list)
    live_rss_mb: list[float] = field(default_factory=list)
    live_avail_drop_gb: float | None = None
    live_load: float | None = None
    churn_done: int = 0
    churn_planned: int = 0
    churn_s: float | None = None
    churn_activations_total: int = 0
    gcs_start_mb: float | None = None
    gcs_before_mb: float | None = None
    gcs_after_mb: float | None = None
    churn_whole: tuple[int, int] = (0, 0)  # whole, checked
    churn_http_whole: tuple[int, int] = (0, 0)
    churn_load: float | None = None
    appends_per_s: float | None = None
    append_ms: list[float] = field(default_factory=list)
    append_errors: Counter[str] = field(default_factory=Counter)
    appends_load: float | None = None
    errors: Errors = field(default_factory=lambda: Errors(keep=8, width=300))
    notes: list[str] = field(default_factory=list)
    log_problems: list[str] = field(default_factory=list)
    shutdown: list[str] = field(default_factory=list)


@dataclass
class Baseline:
    turn_ms: list[float] = field(default_factory=list)
    tools_ms: list[float] = field(default_factory=list)
    load: float | None = None
    error: str = ""


# --- HTTP helpers


def client(url: str, timeout: float = 60.0) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=httpx.Timeout(timeout, connect=30))


def timed(c: httpx.Client, method: str, path: str, **kw: Any) -> tuple[float, httpx.Response]:
    t = time.perf_counter()
    r = c.request(method, path, **kw)
    return time.perf_counter() - t, r


def chat(c: httpx.Client, sid: str, text: str) -> tuple[float, httpx.Response]:
    return timed(c, "POST", f"/api/sessions/{sid}/messages", json={"content": text})


def chat_ok(r: httpx.Response, text: str) -> bool:
    return r.status_code == 200 and r.json().get("reply") == "echo: " + text


# --- the baseline


def run_baseline(common: dict[str, str], tmp: Path) -> Baseline:
    out = Baseline()
    server = Server("baseline", BASELINE_APP, common, tmp / "baseline.log")
    try:
        server.launch(60)
        with client(server.url) as c:
            sids = [c.post("/api/sessions").json()["session_id"] for _ in range(WARM_SESSIONS)]
            warm_rounds(c, sids, out.turn_ms, out.tools_ms)
        out.load = load1()
    except Exception as exc:
        out.error = f"{type(exc).__name__}: {exc}"[:300]
    finally:
        server.stop()
    return out


def warm_rounds(c: httpx.Client, sids: list[str], turn_ms: list[float], tools_ms: list[float],
                messages_ms: list[float] | None = None, errors: Errors | None = None) -> None:
    """Each session in turn: activate it with a turn, then its rounds back to back (so that it
    stays live however slow the machine is) of GET messages (where `messages_ms` is given),
    GET tools and a turn; milliseconds of each that answered, failures into `errors`."""

    def failed(where: str, r: httpx.Response) -> None:
        if errors is not None:
            errors.add(where, f"HTTP {r.status_code}: {r.text[:200]}")

    for sid in sids:
        _, r = chat(c, sid, "hello")
        if not chat_ok(r, "hello"):
            failed("warm: first turn", r)
        for rnd in range(WARM_ROUNDS):
            if messages_ms is not None:
                dt, r = timed(c, "GET", f"/api/sessions/{sid}/messages")
                if r.status_code == 200:
                    messages_ms.append(dt * 1000)
                else:
                    failed("warm: GET messages", r)
            dt, r = timed(c, "GET", f"/api/sessions/{sid}/tools")
            if r.status_code == 200:
                tools_ms.append(dt * 1000)
            text = f"round {rnd}"
            dt, r = chat(c, sid, text)
            if chat_ok(r, text):
                turn_ms.append(dt * 1000)
            else:
                failed("warm: turn", r)


# --- one store


def gateway(label: str, env: dict[str, str], tmp: Path) -> Server:
    return Server(label, LLMCAM_SERVE, env, tmp / f"{label}.log")


def start(server: Server, res: StoreResult, timeout: float) -> None:
    ready = server.launch(timeout)
    if server.start_note:
        res.notes.append(f"{server.label}: {server.start_note[:200]}")
    settled = server.settle(90)
    log(f"{server.label}: ready after {ready:.1f} s, settled after {settled:.1f} s more")


def stop(server: Server, res: StoreResult) -> None:
    server.stop()
    res.log_problems += [f"{server.label}: {x}" for x in log_problems(server.log)]
    res.shutdown.append(f"{server.label} stopped {server.stopped()}")


def phase_create(c: httpx.Client, res: StoreResult, n: int, limit: float) -> list[str]:
    res.create_planned = n
    sids: list[str] = []
    t0 = time.monotonic()
    while len(sids) < n and time.monotonic() - t0 < limit:
        try:
            dt, r = timed(c, "POST", "/api/sessions")
        except httpx.HTTPError as exc:
            res.errors.add("create", f"{type(exc).__name__}: {exc}")
            continue
        if r.status_code != 201:
            res.errors.add("create", f"HTTP {r.status_code}: {r.text[:200]}")
            continue
        res.create_ms.append(dt * 1000)
        sids.append(r.json()["session_id"])
    res.create_s = time.monotonic() - t0
    res.create_load = load1()
    if len(sids) < n:
        res.notes.append(f"create: {len(sids)} of {n} within the {limit:.0f} s limit")
    return sids


def phase_warm(c: httpx.Client, res: StoreResult, sids: list[str]) -> None:
    warm_rounds(c, sids, res.warm_turn_ms, res.warm_tools_ms, res.warm_get_ms, res.errors)
    res.warm_load = load1()


def first_requests(c: httpx.Client, res: StoreResult, sids: list[str], where: str,
                   limit: float) -> list[float]:
    out: list[float] = []
    t0 = time.monotonic()
    for sid in sids:
        if time.monotonic() - t0 > limit:
            res.notes.append(f"{where}: {len(out)} of {len(sids)} within the {limit:.0f} s limit")
            break
        try:
            dt, r = timed(c, "GET", f"/api/sessions/{sid}/messages")
        except httpx.HTTPError as exc:
            res.errors.add(where, f"{type(exc).__name__}: {exc}")
            continue
        if r.status_code == 200:
            out.append(dt)
        else:
            res.errors.add(where, f"HTTP {r.status_code}: {r.text[:200]}")
    return out


def wait_none_live(server: Server, limit: float) -> tuple[float, int]:
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        n = len(server.actors("SessionActor"))
        if n == 0:
            return time.monotonic() - t0, 0
        time.sleep(1.0)
    return time.monotonic() - t0, len(server.actors("SessionActor"))


def phase_idle(server: Server, pg: Any, res: StoreResult, window: float) -> None:
    with CpuMeter(server, kind=lambda p: kind(server, p),
                  extra=lambda: postgres_processes(pg)) as meter:
        time.sleep(window)
    res.idle_machine_busy = meter.busy_cores
    res.idle_window_s = meter.wall
    res.idle_by_kind = {k: v / meter.wall for k, v in meter.own_by_kind.items()}
    res.idle_cores = meter.own / meter.wall
    res.idle_load = load1()


def phase_churn(c: httpx.Client, server: Server, res: StoreResult, sids: list[str],
                limit: float) -> list[str]:
    res.churn_planned = len(sids)
    res.gcs_before_mb = gcs_rss(server)
    done: list[str] = []
    t0 = time.monotonic()
    for i, sid in enumerate(sids):
        if time.monotonic() - t0 > limit:
            res.notes.append(f"churn: {len(done)} of {len(sids)} within the {limit:.0f} s limit")
            break
        text = f"churn {i}"
        try:
            _, r = chat(c, sid, text)
        except httpx.HTTPError as exc:
            res.errors.add("churn", f"{type(exc).__name__}: {exc}")
            continue
        if chat_ok(r, text):
            done.append(sid)
        else:
            res.errors.add("churn", f"HTTP {r.status_code}: {r.text[:200]}")
    res.churn_s = time.monotonic() - t0
    res.churn_done = len(done)
    res.churn_load = load1()
    return done


def check_whole(url: str, sids: list[str], want: dict[str, int]) -> tuple[int, int]:
    """Sessions whose stored messages hold at least `want[sid]` user+assistant messages."""
    store = open_store(url)
    try:
        ok = 0
        for sid in sids:
            msgs = [m.body for m in store.messages(session_key(sid))]
            users = [m for m in msgs if m.get("role") == "user"]
            replies = [m for m in msgs if m.get("role") == "assistant"]
            if len(users) >= want[sid] and len(replies) >= want[sid]:
                ok += 1
        return ok, len(sids)
    finally:
        store.close()


def run_store_a(store: str, url: str, pg: Any, common: dict[str, str], tmp: Path,
                args: argparse.Namespace, res: StoreResult) -> None:
    """create, warm, cold (never activated and passivated), idle CPU, churn."""
    data = tmp / f"data-{store}-a"
    (tmp / f"rt-{store[0]}a").mkdir()  # short: Ray's socket paths max 107 bytes
    env = {**common, "LLMCAM_DATA": str(data), "RAY_TMPDIR": str(tmp / f"rt-{store[0]}a"),
           "LLMCAM_IDLE_SECONDS": str(args.idle_seconds), "LLMCAM_SPARE_SESSIONS": "0",
           "LLMCAM_MAX_LIVE_SESSIONS": "1000", "LLMCAM_DB": url}
    server = gateway(f"gateway-{store}-a", env, tmp)
    try:
        start(server, res, args.startup_timeout)
        res.gcs_start_mb = gcs_rss(server)
        with client(server.url) as c:
            log(f"{store}: creating {args.sessions} sessions one after another")
            sids = phase_create(c, res, args.sessions, args.phase_timeout)
            log(f"{store}: created {len(sids)} in {res.create_s:.0f} s, "
                f"p50 {pct(res.create_ms, 50) or 0:.1f} ms")
            need = WARM_SESSIONS + args.cold + args.churn
            if len(sids) < need:
                raise RuntimeError(f"only {len(sids)} sessions created, {need} needed")
            warm = sids[:WARM_SESSIONS]
            cold = sids[WARM_SESSIONS:WARM_SESSIONS + args.cold]
            churn = sids[WARM_SESSIONS + args.cold:need]
            log(f"{store}: warm")
            phase_warm(c, res, warm)
            log(f"{store}: cold, {len(cold)} never-activated sessions")
            res.cold_new_s = first_requests(c, res, cold, "cold (never activated)", 240)
            res.cold_new_load = load1()
            log(f"{store}: waiting for every session actor to passivate")
            res.passivate_wait_s, left = wait_none_live(server, args.idle_seconds + 90)
            res.idle_live = left
            if left:
                res.notes.append(f"idle: {left} session actors still live after "
                                 f"{res.passivate_wait_s:.0f} s")
            res.idle_stored = len(sids)
            time.sleep(3)  # let the exits' own work finish
            log(f"{store}: idle CPU over {args.idle_window:.0f} s")
            phase_idle(server, pg, res, args.idle_window)
            log(f"{store}: idle {res.idle_cores:.3f} cores")
            log(f"{store}: cold, {len(cold)} passivated sessions")
            res.cold_pass_s = first_requests(c, res, cold, "cold (passivated)", 240)
            res.cold_pass_load = load1()
            log(f"{store}: churn, {len(churn)} activations")
            done = phase_churn(c, server, res, churn, args.churn_timeout)
            wait_none_live(server, args.idle_seconds + 60)
            time.sleep(2)
            res.gcs_after_mb = gcs_rss(server)
            res.churn_activations_total = len(warm) + 2 * len(cold) + len(done)
            # the sessions whose churn turn was answered (one cut by the time limit, or refused,
            # was never given a message to keep)
            want = {sid: 1 for sid in churn} | {sid: 1 + WARM_ROUNDS for sid in warm}
            res.churn_whole = check_whole(url, list(done) + warm, want)
            http_ok = 0
            probe = (warm + done)[:5]
            for sid in probe:  # through the gateway too: a cold activation each
                r = c.get(f"/api/sessions/{sid}/messages")
                n_user = sum(1 for m in r.json() if m.get("role") == "user") \
                    if r.status_code == 200 else 0
                http_ok += n_user >= want[sid]
            res.churn_http_whole = (http_ok, len(probe))
    except Exception as exc:
        res.errors.add("phase A", f"{type(exc).__name__}: {exc}")
        res.notes.append("log tail: " + server.log_tail(600).replace("\n", " | "))
    finally:
        stop(server, res)


def run_store_live(store: str, url: str, common: dict[str, str], tmp: Path,
                   args: argparse.Namespace, res: StoreResult) -> None:
    res.live_target = args.live
    (tmp / f"rt-{store[0]}b").mkdir()
    env = {**common, "LLMCAM_DATA": str(tmp / f"data-{store}-b"),
           "RAY_TMPDIR": str(tmp / f"rt-{store[0]}b"), "LLMCAM_IDLE_SECONDS": "0",
           "LLMCAM_SPARE_SESSIONS": "0", "LLMCAM_MAX_LIVE_SESSIONS": str(args.live + 50),
           "LLMCAM_DB": url}
    server = gateway(f"gateway-{store}-live", env, tmp)
    try:
        start(server, res, args.startup_timeout)
        avail0 = psutil.virtual_memory().available
        with client(server.url, timeout=120) as c:
            sids = [c.post("/api/sessions").json()["session_id"] for _ in range(args.live)]
        log(f"{store}: activating up to {args.live} sessions (one chat each, 4 at a time)")
        stop_flag = threading.Event()
        held: list[str] = []
        lock = threading.Lock()
        t0 = time.monotonic()
        local = threading.local()

        def one(i_sid: tuple[int, str]) -> None:
            i, sid = i_sid
            if stop_flag.is_set():
                return
            if psutil.virtual_memory().available < MIN_AVAILABLE:
                res.live_stop = res.live_stop or (
                    f"stopped: available memory under {MIN_AVAILABLE / GB:.0f} GB")
                stop_flag.set()
                return
            if time.monotonic() - t0 > args.live_timeout:
                res.live_stop = res.live_stop or f"stopped: {args.live_timeout:.0f} s limit"
                stop_flag.set()
                return
            if not hasattr(local, "c"):
                local.c = client(server.url, timeout=120)
            text = f"live {i}"
            try:
                _, r = chat(local.c, sid, text)
            except httpx.HTTPError as exc:
                res.errors.add("live", f"{type(exc).__name__}: {exc}")
                return
            if chat_ok(r, text):
                with lock:
                    held.append(sid)
            else:
                res.errors.add("live", f"HTTP {r.status_code}: {r.text[:200]}")
            if (i + 1) % 50 == 0:
                log(f"{store}: {len(held)} live, available "
                    f"{psutil.virtual_memory().available / GB:.1f} GB")

        with ThreadPoolExecutor(4) as pool:
            try:
                list(pool.map(one, enumerate(sids)))
            except BaseException:
                stop_flag.set()  # the queued ones return at once
                raise
        res.live_s = time.monotonic() - t0
        time.sleep(3)
        actors = server.actors("SessionActor")
        res.live_held = len(actors)
        res.live_stop = res.live_stop or ("all activated" if len(held) == args.live
                                          else f"{args.live - len(held)} failed")
        res.live_avail_drop_gb = (avail0 - psutil.virtual_memory().available) / GB
        step = max(1, len(actors) // USS_SAMPLE)
        for p in actors[::step][:USS_SAMPLE]:
            with contextlib.suppress(psutil.Error):
                m = p.memory_full_info()
                res.live_uss_mb.append(m.uss / MB)
                res.live_rss_mb.append(m.rss / MB)
        res.live_load = load1()
        log(f"{store}: {res.live_held} session actors live, USS median "
            f"{statistics.median(res.live_uss_mb) if res.live_uss_mb else 0:.1f} MB")
    except Exception as exc:
        res.errors.add("live", f"{type(exc).__name__}: {exc}")
        res.notes.append("log tail: " + server.log_tail(600).replace("\n", " | "))
    finally:
        stop(server, res)


# --- the store under concurrent writers


def appends(url: str, writers: int, seconds: float, res: StoreResult) -> None:
    barrier = threading.Barrier(writers + 1, timeout=120)
    counts = [0] * writers
    lat: list[list[float]] = [[] for _ in range(writers)]
    stop_at = [0.0]
    body = {"role": "user", "content": "x" * 200}

    def writer(i: int) -> None:
        st = None
        try:
            st = open_store(url)
            key = f"bench-{i}-{uuid.uuid4().hex[:8]}"
            st.create_session(key)
            epoch = st.claim(key)
        except Exception as exc:
            res.append_errors[f"open: {type(exc).__name__}: {str(exc)[:80]}"] += 1
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait()
            return
        try:
            barrier.wait()
            while time.monotonic() < stop_at[0]:
                t = time.perf_counter()
                try:
                    st.append(key, epoch, None, [body])
                except Exception as exc:
                    res.append_errors[f"{type(exc).__name__}: {str(exc)[:80]}"] += 1
                    continue
                lat[i].append(time.perf_counter() - t)
                counts[i] += 1
        finally:
            st.close()

    threads = [threading.Thread(target=writer, args=(i,), daemon=True) for i in range(writers)]
    for t in threads:
        t.start()
    stop_at[0] = time.monotonic() + 1e9
    barrier.wait()
    t0 = time.monotonic()
    stop_at[0] = t0 + seconds
    for t in threads:
        t.join(seconds + 120)
    wall = time.monotonic() - t0
    res.appends_per_s = sum(counts) / wall
    res.append_ms = [x * 1000 for xs in lat for x in xs]
    res.appends_load = load1()


MEM_PROBE = r"""
import json, sys, psutil
p = psutil.Process()
def m():
    i = p.memory_full_info(); return [i.rss / 1e6, i.uss / 1e6]
out = {"bare": m()}
url = sys.argv[1]
if sys.argv[2] == "psycopg":
    import psycopg, psycopg_pool
    out["imported"] = m()
    pool = psycopg_pool.ConnectionPool(url, min_size=1, max_size=2, open=True)
    pool.wait()
    with pool.connection() as c:
        c.execute("SELECT 1").fetchall()
    out["pool open"] = m()
    pool.close()
else:
    import asyncio, asyncpg
    out["imported"] = m()
    async def go():
        pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
        async with pool.acquire() as c:
            await c.fetch("SELECT 1")
        out["pool open"] = m()
        await pool.close()
    asyncio.run(go())
print(json.dumps(out))
"""

ASYNCPG_APPENDS = r"""
import asyncio, json, sys, time, uuid, asyncpg
url, writers, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
body = json.dumps({"role": "user", "content": "x" * 200})
async def writer(i, start, counts):
    conn = await asyncpg.connect(url)
    key = f"apg-{i}-{uuid.uuid4().hex[:8]}"
    await conn.execute("INSERT INTO sessions (key, created_at) VALUES ($1, $2) "
                       "ON CONFLICT (key) DO NOTHING", key, time.time())
    epoch = await conn.fetchval("UPDATE sessions SET epoch = epoch + 1 WHERE key=$1 "
                                "RETURNING epoch", key)
    await start.wait()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        async with conn.transaction():
            e = await conn.fetchval("SELECT epoch FROM sessions WHERE key=$1 FOR UPDATE", key)
            assert e == epoch
            last = await conn.fetchval("SELECT COALESCE(MAX(seq), 0) FROM messages "
                                       "WHERE key=$1", key)
            await conn.execute("INSERT INTO messages (key, seq, turn_id, body) "
                               "VALUES ($1, $2, $3, $4)", key, last + 1, None, body)
        counts[i] += 1
    await conn.close()
async def main():
    start, counts = asyncio.Event(), [0] * writers
    tasks = [asyncio.create_task(writer(i, start, counts)) for i in range(writers)]
    await asyncio.sleep(3)
    t0 = time.monotonic(); start.set()
    await asyncio.gather(*tasks)
    print(json.dumps({"appends_per_s": sum(counts) / (time.monotonic() - t0)}))
asyncio.run(main())
"""


def driver_memory(url: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    pythons = {"psycopg": str(ROOT / ".venv" / "bin" / "python")}
    apg = SCRATCH_VENV / "bin" / "python"
    if not apg.exists():
        with contextlib.suppress(Exception):
            subprocess.run([sys.executable, "-m", "venv", str(SCRATCH_VENV)], check=True,
                           timeout=120, capture_output=True)
            subprocess.run([str(apg), "-m", "pip", "install", "-q", "asyncpg", "psutil"],
                           check=True, timeout=180, capture_output=True)
    if apg.exists():
        pythons["asyncpg"] = str(apg)
    else:
        out["asyncpg_note"] = "asyncpg could not be installed into a scratch venv: not measured"
    for name, py in pythons.items():
        try:
            r = subprocess.run([py, "-c", MEM_PROBE, url, name], capture_output=True, text=True,
                               timeout=60, check=True)
            out[name] = json.loads(r.stdout.strip().splitlines()[-1])
        except Exception as exc:
            out[name] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
    if "asyncpg" in pythons:
        out["asyncpg_version"] = subprocess.run(
            [pythons["asyncpg"], "-c", "import asyncpg; print(asyncpg.__version__)"],
            capture_output=True, text=True, timeout=30).stdout.strip()
    return out


def asyncpg_appends(url: str, writers: int, seconds: float) -> dict[str, Any]:
    apg = SCRATCH_VENV / "bin" / "python"
    if not apg.exists():
        return {"error": "asyncpg not installed"}
    try:
        r = subprocess.run([str(apg), "-c", ASYNCPG_APPENDS, url, str(writers), str(seconds)],
                           capture_output=True, text=True, timeout=seconds + 120, check=True)
        out = json.loads(r.stdout.strip().splitlines()[-1])
        out["load"] = load1()
        return out
    except Exception as exc:
        err = getattr(exc, "stderr", "") or ""
        return {"error": f"{type(exc).__name__}: {exc} {err[-200:]}"[:400]}


# --- the report


def f(v: float | None, spec: str = ".1f") -> str:
    return "—" if v is None else format(v, spec)


def yes(ok: bool | None) -> str:
    return "n/a" if ok is None else ("yes" if ok else "**no**")


def report(args: argparse.Namespace, results: dict[str, StoreResult], base: Baseline,
           drv: dict[str, Any], apg: dict[str, Any], started: datetime, took: float,
           load_before: str) -> str:
    stores = list(results)
    names = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
    b50 = pct(base.turn_ms, 50)
    bt50 = pct(base.tools_ms, 50)

    def cells(fn: Any) -> list[str]:
        return [fn(results[s]) for s in stores]

    def met_all(fn: Any) -> str:
        vals = [fn(results[s]) for s in stores]
        return " / ".join(yes(v) for v in vals)

    def loads(attr: str) -> str:
        return " / ".join(f(getattr(results[s], attr), ".1f") for s in stores)

    def p(xs: list[float], q: float, spec: str = ".1f", scale: float = 1.0) -> str:
        v = pct(xs, q)
        return f(v * scale if v is not None else None, spec)

    def live_uss(r: StoreResult) -> str:
        if not r.live_uss_mb:
            return "—"
        return (f"{statistics.median(r.live_uss_mb):.1f} / {max(r.live_uss_mb):.1f} "
                f"(RSS {statistics.median(r.live_rss_mb):.0f}; n={len(r.live_uss_mb)})")

    def idle(r: StoreResult) -> str:
        if r.idle_cores is None:
            return "—"
        return f"{r.idle_cores:.3f} ({r.idle_stored} stored, {r.idle_live} live)"

    def gcs(r: StoreResult) -> str:
        return (f"{f(r.gcs_start_mb, '.0f')} → {f(r.gcs_before_mb, '.0f')} → "
                f"{f(r.gcs_after_mb, '.0f')}")

    def per_act(r: StoreResult) -> float | None:
        if r.gcs_after_mb is None or r.gcs_before_mb is None or not r.churn_done:
            return None
        return (r.gcs_after_mb - r.gcs_before_mb) / r.churn_done * 1000  # kB per activation

    def cold(what: str, name: str) -> list[str]:
        """The row of the first requests whose seconds are the field `<name>_s`."""

        def seconds(r: StoreResult) -> list[float]:
            return getattr(r, f"{name}_s")

        return [what, *cells(lambda r: f"{p(seconds(r), 50, '.2f')} / "
                             f"{p(seconds(r), 99, '.2f')} (n={len(seconds(r))})"),
                f"p50 ≤ {TARGET_COLD_P50_S} s, p99 ≤ {TARGET_COLD_P99_S:.0f} s",
                met_all(lambda r: None if not seconds(r) else
                        pct(seconds(r), 50) <= TARGET_COLD_P50_S
                        and pct(seconds(r), 99) <= TARGET_COLD_P99_S), loads(f"{name}_load")]

    def warm_ok(r: StoreResult) -> bool | None:
        w = pct(r.warm_turn_ms, 50)
        return None if w is None or b50 is None else w - b50 <= TARGET_WARM_DELTA_MS

    rows: list[list[str]] = [
        ["create: `POST /api/sessions` one after another, p50 / p99 (ms)",
         *cells(lambda r: f"{p(r.create_ms, 50, '.2f')} / {p(r.create_ms, 99, '.2f')} "
                f"(n={len(r.create_ms)}, {f(r.create_s, '.0f')} s)"),
         f"p50 ≤ {TARGET_CREATE_P50_MS:.0f} ms",
         met_all(lambda r: None if not r.create_ms
                 else pct(r.create_ms, 50) <= TARGET_CREATE_P50_MS), loads("create_load")],
        ["warm: one chat turn of a live session, p50 / p99 (ms); baseline p50 "
         f"{f(b50, '.1f')}",
         *cells(lambda r: f"{p(r.warm_turn_ms, 50)} / {p(r.warm_turn_ms, 99)} (Δ p50 "
                f"{f(pct(r.warm_turn_ms, 50) - b50 if r.warm_turn_ms and b50 else None, '+.1f')})"),
         f"p50 ≤ baseline + {TARGET_WARM_DELTA_MS:.0f} ms", met_all(warm_ok), loads("warm_load")],
        ["warm: `GET …/messages` of a live session, p50 / p99 (ms)",
         *cells(lambda r: f"{p(r.warm_get_ms, 50)} / {p(r.warm_get_ms, 99)}"), "", "", ""],
        [f"warm: `GET …/tools` of a live session, p50 (ms); baseline {f(bt50, '.1f')}",
         *cells(lambda r: p(r.warm_tools_ms, 50)), "", "", ""],
        cold("cold: first request (`GET …/messages`) of a never-activated session, p50 / p99 "
             "(s)", "cold_new"),
        cold("cold: first request of a passivated session, p50 / p99 (s)", "cold_pass"),
        [f"idle CPU of the whole system, none live, over {args.idle_window:.0f} s (cores)",
         *cells(idle), f"≤ {TARGET_IDLE_CORES} core",
         met_all(lambda r: None if r.idle_cores is None or r.idle_live
                 else r.idle_cores <= TARGET_IDLE_CORES), loads("idle_load")],
        ["most live session actors the node held (target asked / held; why it stopped)",
         *cells(lambda r: f"{r.live_target} / {r.live_held} ({r.live_stop or '—'}; "
                f"{f(r.live_s, '.0f')} s; machine's available memory fell "
                f"{f(r.live_avail_drop_gb, '.1f')} GB)"),
         f"≥ {TARGET_LIVE} on 24 GB",
         met_all(lambda r: None if not r.live_target else r.live_held >= TARGET_LIVE),
         loads("live_load")],
        ["session actor USS with all live, median / max (MB)", *cells(live_uss),
         f"≤ {TARGET_USS_MB:.0f} MB",
         met_all(lambda r: None if not r.live_uss_mb
                 else statistics.median(r.live_uss_mb) <= TARGET_USS_MB
                 and max(r.live_uss_mb) <= TARGET_USS_MB), loads("live_load")],
        [f"store appends/s, {args.writers} writer threads (own store handle each), "
         "p50 / p99 per append (ms)",
         *cells(lambda r: f"{f(r.appends_per_s, '.0f')} ({p(r.append_ms, 50)} / "
                f"{p(r.append_ms, 99)}; errors {sum(r.append_errors.values())})"),
         "", "", loads("appends_load")],
        ["churn: activations done (planned) in s, one after another",
         *cells(lambda r: f"{r.churn_done} ({r.churn_planned}) in {f(r.churn_s, '.0f')} s; "
                f"{r.churn_activations_total} activations in this gateway's life"),
         "", "", loads("churn_load")],
        ["churn: gcs_server RSS at start → before → after the churn (MB); growth per activation",
         *cells(lambda r: f"{gcs(r)}; {f(per_act(r), '.1f')} kB"), "bounded", "see below",
         loads("churn_load")],
        ["churn: every session whole afterwards (store check; through HTTP)",
         *cells(lambda r: f"{r.churn_whole[0]} of {r.churn_whole[1]}; "
                f"{r.churn_http_whole[0]} of {r.churn_http_whole[1]}"),
         "all", met_all(lambda r: None if not r.churn_whole[1]
                        else r.churn_whole[0] == r.churn_whole[1]
                        and r.churn_http_whole[0] == r.churn_http_whole[1]), ""],
        ["errors (HTTP, wrong replies, timeouts)",
         *cells(lambda r: str(r.errors.total())), "0",
         met_all(lambda r: not r.errors), ""],
    ]
    head = ["measure", *(names[s] for s in stores), "target", "met", "load avg 1 min"]
    lines = [
        "## Sessions at scale (`benchmarks/sessions_scale.py`)",
        "",
        f"Run {started:%Y-%m-%d %H:%M} UTC, {took / 60:.1f} min in all, on {machine()}; "
        f"Ray {importlib.metadata.version('ray')}, psycopg "
        f"{importlib.metadata.version('psycopg')}. Load average (1 / 5 / 15 min) before the "
        f"run {load_before}, after it {load_average()}; the machine was shared with other "
        "work (the last column gives the 1-minute load average when each figure was taken, "
        "SQLite / PostgreSQL): every timing here is noisy.",
        "",
        f"What: the real gateway (`python -m gateway.cli serve`, embedded Ray, "
        f"`LLMCAM_SPARE_SESSIONS=0` so that no spare actor is live and every first request is "
        f"a real activation) against the zero-latency OpenAI stand-in; one sync httpx client, "
        f"requests one after another unless said. Per store, a first gateway "
        f"(`LLMCAM_IDLE_SECONDS={args.idle_seconds:g}`) takes the creates, the warm figures "
        f"({WARM_SESSIONS} sessions × {WARM_ROUNDS} rounds of GET messages, GET tools, one "
        f"turn), the cold figures ({args.cold} never-activated sessions, then the same "
        f"{args.cold} again once passivated), the idle CPU (after every session actor had "
        "exited by itself) and the churn (each churn session gets one chat turn, a cold "
        "activation; it passivates by itself after the idle time); a second gateway "
        "(`LLMCAM_IDLE_SECONDS=0`, cap above the target) activates sessions with one chat "
        f"turn each, 4 at a time, up to {args.live} or until the machine's available memory "
        f"falls under {MIN_AVAILABLE / GB:.0f} GB. The baseline is "
        "`benchmarks/baseline_app.py` (the original one-process design), same stand-in, same "
        "client, same run. Store appends use `actors.store.open_store(url)` directly in this "
        "process, before any gateway starts. USS = `memory_full_info().uss`, MB = 10^6 bytes.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
    ]
    for s in stores:
        r = results[s]
        if r.idle_by_kind:
            parts = ", ".join(f"{k} {v * 1000:.1f}" for k, v in
                              sorted(r.idle_by_kind.items(), key=lambda kv: -kv[1]))
            lines.append(f"- Idle CPU, {names[s]}, by process (millicores): {parts}; the "
                         f"whole machine was {f(r.idle_machine_busy, '.2f')} cores busy.")
    # the driver
    def mem_line(name: str) -> str:
        d = drv.get(name) or {}
        if "error" in d or "bare" not in d:
            return f"{name}: not measured ({d.get('error', 'no data')})"
        bare, imp, opened = d["bare"], d["imported"], d["pool open"]
        return (f"{name}: +{imp[0] - bare[0]:.1f} MB RSS / +{imp[1] - bare[1]:.1f} MB USS on "
                f"import, +{opened[0] - bare[0]:.1f} / +{opened[1] - bare[1]:.1f} MB with a "
                "pool and one connection open")
    lines.append("- PostgreSQL driver, memory it adds to a fresh Python process: "
                 + "; ".join(mem_line(n) for n in ("psycopg", "asyncpg")) + "."
                 + (f" asyncpg {drv['asyncpg_version']} from a scratch venv."
                    if drv.get("asyncpg_version") else f" {drv.get('asyncpg_note', '')}"))
    pg_rate = results["postgresql"].appends_per_s if "postgresql" in results else None
    if apg:
        if "appends_per_s" in apg:
            lines.append(
                f"- asyncpg, same 3-statement fenced append (SELECT … FOR UPDATE, MAX(seq), "
                f"INSERT) from {args.writers} asyncio tasks with a connection each in one "
                f"process: {apg['appends_per_s']:.0f} appends/s (load {apg['load']:.1f}), "
                f"against psycopg's {f(pg_rate, '.0f')}"
                " through the store (threads, a pool each, `check_connection` on checkout).")
        else:
            lines.append(f"- asyncpg appends: not measured ({apg.get('error')}).")
    if base.error:
        lines.append(f"- Baseline failed: {base.error}")
    for s in stores:
        r = results[s]
        if r.errors:
            lines.append(f"- Errors, {names[s]}: "
                         + "; ".join(f"{k} × {v}" for k, v in r.errors.counts.items()))
            lines += [f"  - `{e}`" for e in r.errors.examples[:4]]
        if r.append_errors:
            lines.append(f"- Append errors, {names[s]}: "
                         + "; ".join(f"{k} × {v}" for k, v in r.append_errors.items()))
        for n in r.notes:
            lines.append(f"- {names[s]}: {n[:400]}")
        if r.log_problems:
            lines.append(f"- {names[s]}: the gateways' logs had {len(r.log_problems)} "
                         "warning/error lines, the first: "
                         + "; ".join(f"`{x[:200]}`" for x in r.log_problems[:3]))
        lines.append(f"- {names[s]}: " + "; ".join(r.shutdown) + ".")
    # churn extrapolation
    for s in stores:
        r = results[s]
        if r.churn_done and r.churn_s:
            per = r.churn_s / r.churn_done
            pa = per_act(r)
            lines.append(
                f"- Churn, {names[s]}: {per:.2f} s per activation here, so the issue's 10,000 "
                f"in a row would take about {10_000 * per / 3600:.1f} h on this machine (not "
                f"run); at the measured gcs_server growth ({f(pa, '.1f')} kB per "
                "activation) 10,000 would add about "
                f"{f(pa * 10 if pa is not None else None, '.0f')} MB, unless Ray's cap on dead "
                "actors' records (`RAY_maximum_gcs_destroyed_actor_cached_count`, 100,000 by "
                "default, so not reached by 10,000) is lowered.")
    lines += ["", "Limits of these figures: " + "; ".join([
        "one 2-core machine runs the client, the stand-in, the gateway, Ray, every actor and "
        "PostgreSQL, and it was shared with other work: the load average column says how "
        "busy it was",
        "a cold activation is a process start (Ray does not reuse pooled workers for new "
        "actors), so cold latency is CPU-bound here and scales with the load",
        "the test PostgreSQL runs with fsync and synchronous_commit off (testing/postgres.py), "
        "SQLite with WAL and synchronous=NORMAL: appends/s are the stores' and drivers' "
        "overhead, not a disk's",
        "appends are from threads of one Python process (one GIL), which caps both stores' "
        "figures",
        "the live phase stops at the target, the memory floor or its time limit, whichever "
        "comes first: the node's true ceiling is the figure held or more",
        "churn is scaled down from the issue's 10,000 (about a second of CPU per activation "
        "here) and extrapolated",
    ]) + "."]
    return "\n".join(lines) + "\n"


# --- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=["sqlite", "postgresql", "both"], default="both")
    sizes = {"--sessions": 10_000, "--live": 300, "--churn": 120, "--cold": 30, "--writers": 100,
             "--append-seconds": 10.0, "--idle-seconds": 5.0, "--idle-window": 25.0,
             "--phase-timeout": 300.0, "--churn-timeout": 300.0, "--live-timeout": 420.0,
             "--startup-timeout": 180.0}
    for option, default in sizes.items():
        parser.add_argument(option, type=type(default), default=default)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--keep-temp", action="store_true")
    args = parser.parse_args(argv)

    exit_on_sigterm()
    started, t_start = datetime.now(UTC), time.monotonic()
    load_before = load_average()
    stores = ["sqlite", "postgresql"] if args.store == "both" else [args.store]
    results: dict[str, StoreResult] = {}
    drv: dict[str, Any] = {}
    apg: dict[str, Any] = {}
    interrupted = ""
    with scratch("sessions_scale-", keep=args.keep_temp) as tmp, OpenAIServer() as llm:
        common = server_env(**UNBOUNDED_ENV, OPENAI_BASE_URL=llm.base_url, OPENAI_API_KEY="x",
                            LLMCAM_MODEL="m", LLMCAM_YOLO_MODEL="yolov8n.yaml",
                            LLMCAM_DETECTOR_GPUS="0", LLMCAM_DETECTOR_REPLICAS="1")
        log("baseline: warm latency")
        base = run_baseline(common, tmp)
        log(f"baseline: turn p50 {pct(base.turn_ms, 50) or 0:.1f} ms {base.error}")
        try:
            run_stores(stores, tmp, common, args, results, drv, apg)
        except BaseException as exc:  # SIGTERM or a failure: report what was measured
            interrupted = f"{type(exc).__name__}: {exc}"[:200]
            log(f"interrupted: {interrupted}")
    section = report(args, results, base, drv, apg, started, time.monotonic() - t_start,
                     load_before)
    if interrupted:
        section += (f"\nThe run was interrupted ({interrupted}): figures shown as — or "
                    "with fewer samples were not (fully) measured.\n")
    print(section)
    if not any(r.create_ms or r.appends_per_s for r in results.values()):
        print(f"nothing measured: {args.out} left as it was", file=sys.stderr)
        return 1
    write_results(args.out, SECTION, section)
    print(f"written to {args.out}")
    return 1 if interrupted or any(r.errors for r in results.values()) else 0


def run_stores(stores: list[str], tmp: Path, common: dict[str, str], args: argparse.Namespace,
               results: dict[str, StoreResult], drv: dict[str, Any],
               apg: dict[str, Any]) -> None:
    for store in stores:
        res = results[store] = StoreResult(store)
        with contextlib.ExitStack() as stack:
            pg = None
            if store == "postgresql":
                from testing.postgres import PostgresServer

                pg = stack.enter_context(PostgresServer())
                url = pg.url
            else:
                url = str(tmp / "data-sqlite-a" / "llmcam.sqlite3")
            log(f"{store}: appends, {args.writers} writers for {args.append_seconds:g} s")
            append_url = url if store == "postgresql" else str(tmp / "appends.sqlite3")
            try:
                appends(append_url, args.writers, args.append_seconds, res)
                log(f"{store}: {res.appends_per_s:.0f} appends/s")
            except Exception as exc:
                res.errors.add("appends", f"{type(exc).__name__}: {exc}")
            if pg is not None:
                log("postgresql: driver memory, asyncpg comparison")
                drv.update(driver_memory(url))
                apg.update(asyncpg_appends(url, args.writers, args.append_seconds))
            run_store_a(store, url, pg, common, tmp, args, res)
            if store == "sqlite":
                url_live = str(tmp / "data-sqlite-b" / "llmcam.sqlite3")
            else:
                url_live = url
            run_store_live(store, url_live, common, tmp, args, res)


if __name__ == "__main__":
    sys.exit(main())
