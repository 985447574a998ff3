"""Churn memory: activations and passivations in a row, and the memory of the GCS, the raylet
and the gateway after every hundred (issue 16: bounded memory under churn).

Each activation is a real one: `llmcam serve` (embedded Ray, SQLite, no spares) with
`LLMCAM_IDLE_SECONDS=1`, one chat turn to a session whose actor is not live (a process start),
after which the actor passivates by itself and leaves a dead actor's record in the GCS. Ray
keeps `RAY_maximum_gcs_destroyed_actor_cached_count` of those records (the gateway sets 1000);
`--cap` lowers it for this run so that the plateau shows within a run this machine can afford.

    python -m benchmarks.churn_memory [--activations 600] [--cap 200] [--no-write]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil

from benchmarks._harness import (
    LLMCAM_SERVE,
    MB,
    RESULTS,
    Server,
    load_average,
    machine,
    publish,
    scratch,
    server_env,
)
from testing.standins import OpenAIServer


def rss(server: Server, match: str) -> float:
    for p in server.tree():
        with contextlib.suppress(psutil.Error):
            if match == "gateway" and server.proc and p.pid == server.proc.pid:
                return p.memory_info().rss / MB
            if p.name() == match:
                return p.memory_info().rss / MB
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--activations", type=int, default=600)
    ap.add_argument("--cap", type=int, default=200,
                    help="RAY_maximum_gcs_destroyed_actor_cached_count for this run")
    ap.add_argument("--sessions", type=int, default=40, help="sessions the turns cycle over")
    ap.add_argument("--concurrency", type=int, default=3)
    ap.add_argument("--every", type=int, default=100, help="memory sample every N activations")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    load_before, started = load_average(), datetime.now(UTC)
    rows: list[tuple[int, float, float, float, float]] = []
    errors: list[str] = []
    with scratch("llmcam-churn-") as tmp, OpenAIServer() as llm:
        env = server_env(LLMCAM_DATA=str(tmp / "data"), OPENAI_BASE_URL=llm.base_url,
                         OPENAI_API_KEY="sk-churn", LLMCAM_IDLE_SECONDS="1",
                         LLMCAM_SPARE_SESSIONS="0", LLMCAM_RATE_TURNS="100000",
                         LLMCAM_RATE_SESSIONS="100000", LLMCAM_USER_LIVE_SESSIONS="1000",
                         RAY_maximum_gcs_destroyed_actor_cached_count=str(args.cap))
        server = Server("gateway", LLMCAM_SERVE, env, tmp / "gateway.log")
        server.launch(180)
        server.settle(60)
        t0 = time.monotonic()
        with httpx.Client(base_url=server.url, timeout=120) as c:
            sids = [c.post("/api/sessions").json()["session_id"] for _ in range(args.sessions)]
            rows.append((0, 0.0, rss(server, "gcs_server"), rss(server, "raylet"),
                         rss(server, "gateway")))
            done = 0
            lock = threading.Lock()
            free = list(sids)
            cond = threading.Condition(lock)

            def one(i: int) -> None:
                nonlocal done
                with cond:  # a session whose actor is gone (not in use, idle time passed)
                    while not free:
                        cond.wait()
                    sid = free.pop(0)
                try:
                    r = c.post(f"/api/sessions/{sid}/messages", json={"content": f"churn {i}"})
                    if r.status_code != 200:
                        errors.append(f"HTTP {r.status_code}: {r.text[:120]}")
                except httpx.HTTPError as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                time.sleep(1.8)  # the actor passivates (idle 1 s, checked every 0.25 s)
                with cond:
                    free.append(sid)
                    done += 1
                    cond.notify()

            with ThreadPoolExecutor(args.concurrency) as pool:
                for batch in range(0, args.activations, args.every):
                    list(pool.map(one, range(batch, min(batch + args.every, args.activations))))
                    rows.append((min(batch + args.every, args.activations),
                                 time.monotonic() - t0, rss(server, "gcs_server"),
                                 rss(server, "raylet"), rss(server, "gateway")))
                    print(rows[-1], flush=True)
        server.stop()

    base = rows[0]
    lines = [
        "## Churn memory: activations in a row (`benchmarks/churn_memory.py`)",
        "",
        f"Run {started:%Y-%m-%d %H:%M} UTC on {machine()}. Load average before {load_before}, "
        f"after {load_average()}.",
        "",
        f"What: `llmcam serve` (embedded Ray, SQLite, no spares, `LLMCAM_IDLE_SECONDS=1`); "
        f"{args.activations} chat turns, {args.concurrency} at a time, over {args.sessions} "
        "sessions, each to a session whose actor had passivated (every turn a cold activation, "
        "every activation a passivation after it); the GCS keeps at most "
        f"{args.cap} dead actors' records in this run (the gateway's own setting is 1000). RSS "
        "in MB after each hundred.",
        "",
        "| activations | s | gcs_server RSS | raylet RSS | gateway RSS |",
        "|---|---|---|---|---|",
    ]
    for n, s, g, r, w in rows:
        lines.append(f"| {n} | {s:.0f} | {g:.1f} | {r:.1f} | {w:.1f} |")
    grow = [(b[2] - a[2]) / max(1, b[0] - a[0]) * 1000 for a, b in itertools.pairwise(rows)]
    lines += ["", "- gcs_server growth per 1,000 activations, each hundred: "
              + ", ".join(f"{g:.0f} MB" for g in grow),
              f"- errors: {len(errors)}" + (f" (first: {errors[0]})" if errors else ""),
              f"- from start to end: gcs_server {rows[-1][2] - base[2]:+.1f} MB, raylet "
              f"{rows[-1][3] - base[3]:+.1f} MB, gateway {rows[-1][4] - base[4]:+.1f} MB", ""]
    publish(lines, args.out, "churn_memory", write=not args.no_write)


if __name__ == "__main__":
    main()
