"""Idle: what an embedded `llmcam serve` that nobody uses costs, and how soon it is steady.

Starts the server as a user would (`llmcam serve`: embedded Ray, SQLite, the defaults), with
the OpenAI stand-in as its model, and samples its whole process tree (the gateway, Ray's
processes and every actor) every few seconds from the moment it answers /healthz: processes,
CPU (cores over each sample), memory (RSS and PSS summed: PSS counts shared pages once).
Steady = the first moment after which every rolling 10 s CPU figure stays under the goal
(0.05 of a core) or, where the goal is not reached, within 0.03 of a core of the last minute's.
Then the same server after one user: a session created and a chat turn answered, measured
again once that session's actor has passivated (`--idle-seconds`).

    python -m benchmarks.idle [--minutes 3] [--no-write]
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil

from benchmarks._harness import (
    LLMCAM_SERVE,
    MB,
    RESULTS,
    Server,
    cpu_by_process,
    load_average,
    machine,
    publish,
    scratch,
    server_env,
)
from testing.standins import OpenAIServer

GOAL_CORES, GOAL_MB, GOAL_STEADY_S = 0.05, 600.0, 30.0
WINDOW_S = 10.0


@dataclass
class Sample:
    t: float
    procs: int
    cores: float
    rss_mb: float
    pss_mb: float
    by_kind: dict[str, tuple[int, float, float]] = field(default_factory=dict)  # n, cores, PSS


def sample(server: Server, gap: float) -> Sample:
    procs = server.tree()
    before = cpu_by_process(procs)
    time.sleep(gap)
    procs = server.tree()
    after = cpu_by_process(procs)
    by: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    rss = pss = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            key = (p.pid, p.create_time())
            used = (after.get(key, 0.0) - before.get(key, 0.0)) / gap
            mem = p.memory_full_info()
            rss += mem.rss / MB
            pss += mem.pss / MB
            row = by[server.category(p)]
            row[0] += 1
            row[1] += used
            row[2] += mem.pss / MB
    return Sample(time.monotonic(), len(procs), sum(v[1] for v in by.values()), rss, pss,
                  {k: (int(v[0]), v[1], v[2]) for k, v in by.items()})


def steady_after(samples: list[Sample], t0: float) -> float | None:
    """Seconds from t0 after which every rolling WINDOW_S CPU figure stays steady."""
    if not samples:
        return None
    last_minute = [s.cores for s in samples if s.t >= samples[-1].t - 60]
    final = sum(last_minute) / len(last_minute)
    bound = max(GOAL_CORES, final + 0.03)
    steady = None
    for i, s in enumerate(samples):
        window = [x.cores for x in samples[: i + 1] if x.t > s.t - WINDOW_S]
        rolling = sum(window) / len(window)
        if rolling > bound:
            steady = None
        elif steady is None:
            steady = s.t - t0
    return steady


def watch(server: Server, seconds: float, gap: float) -> list[Sample]:
    out = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        out.append(sample(server, gap))
    return out


def summary(samples: list[Sample]) -> tuple[float, float, float, float, dict]:
    tail = [s for s in samples if s.t >= samples[-1].t - 60]
    n = len(tail)
    kinds: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    for s in tail:
        for k, (count, cores, pss) in s.by_kind.items():
            kinds[k][0] += count / n
            kinds[k][1] += cores / n
            kinds[k][2] += pss / n
    return (sum(s.procs for s in tail) / n, sum(s.cores for s in tail) / n,
            sum(s.rss_mb for s in tail) / n, sum(s.pss_mb for s in tail) / n, dict(kinds))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=3.0, help="how long the fresh server is "
                    "watched (the figures are its last minute)")
    ap.add_argument("--after-minutes", type=float, default=2.0,
                    help="how long it is watched again after one user left")
    ap.add_argument("--idle-seconds", type=int, default=20, help="LLMCAM_IDLE_SECONDS")
    ap.add_argument("--gap", type=float, default=2.0, help="seconds per sample")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    load_before = load_average()
    started = datetime.now(UTC)
    with scratch("llmcam-idle-") as tmp, OpenAIServer() as llm:
        env = server_env(LLMCAM_DATA=str(tmp / "data"), OPENAI_BASE_URL=llm.base_url,
                         OPENAI_API_KEY="sk-idle-benchmark",
                         LLMCAM_IDLE_SECONDS=str(args.idle_seconds))
        server = Server("gateway", LLMCAM_SERVE, env, tmp / "gateway.log")
        ready_s = server.launch(180)
        t0 = time.monotonic()
        fresh = watch(server, args.minutes * 60, args.gap)
        with httpx.Client(base_url=server.url, timeout=60) as c:
            sid = c.post("/api/sessions").json()["session_id"]
            reply = c.post(f"/api/sessions/{sid}/messages", json={"content": "hello"})
            assert reply.is_success, reply.text
        time.sleep(args.idle_seconds + 5)  # its actor passivates
        t1 = time.monotonic()
        after = watch(server, args.after_minutes * 60, args.gap)
        server.stop()
    rows = []
    for label, samples, start in (("fresh, nobody used it", fresh, t0),
                                  ("after one user's session passivated", after, t1)):
        procs, cores, rss, pss, kinds = summary(samples)
        steady = steady_after(samples, start)
        rows.append((label, procs, cores, rss, pss, steady, kinds))

    lines = [
        "## Idle cost of an embedded server (`benchmarks/idle.py`)",
        "",
        f"Run {started:%Y-%m-%d %H:%M} UTC on {machine()}. Load average (1 / 5 / 15 min) "
        f"before {load_before}, after {load_average()}.",
        "",
        "What: `llmcam serve` with its defaults (embedded Ray, SQLite, the stand-in as its "
        f"model), answered /healthz {ready_s:.1f} s after its start; its whole process tree "
        f"sampled every {args.gap:.0f} s; figures are the mean of the last minute of each "
        f"phase. Steady: from /healthz, the time after which every {WINDOW_S:.0f} s CPU "
        f"figure stays under {GOAL_CORES} core (or, where not reached, within 0.03 of the "
        "final figure). Memory: RSS summed over the tree, and PSS (shared pages counted once).",
        "",
        "| phase | processes | CPU (cores) | RSS sum (MB) | PSS sum (MB) | steady after (s) |",
        "|---|---|---|---|---|---|",
    ]
    for label, procs, cores, rss, pss, steady, _ in rows:
        lines.append(f"| {label} | {procs:.0f} | {cores:.3f} | {rss:.0f} | {pss:.0f} | "
                     f"{'—' if steady is None else f'{steady:.0f}'} |")
    lines += ["", f"Goals: ≤ {GOAL_CORES} core, ≤ {GOAL_MB:.0f} MB, steady within "
              f"{GOAL_STEADY_S:.0f} s.", ""]
    for label, *_, kinds in rows:
        lines.append(f"- By process, {label} (count, millicores, PSS MB): " + "; ".join(
            f"{k} {v[0]:.0f}, {v[1] * 1000:.1f}, {v[2]:.0f}"
            for k, v in sorted(kinds.items(), key=lambda kv: -kv[1][1])))
    lines.append("")
    publish(lines, args.out, "idle", write=not args.no_write)


if __name__ == "__main__":
    main()
