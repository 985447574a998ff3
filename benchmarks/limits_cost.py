"""What identity and the per-user limits add to one chat turn, per store.

A turn now pays, in the gateway: the caller's identity (a header or a signed cookie), the
turns-per-minute window (one upsert through the `limits` library's fixed window) and, with a
budget, the day's tokens (one read); in the session actor: the user's turn count and the
session's title in the transaction that records the user's message (already there), and one
write of each model call's token counts. This script times exactly those pieces, in process,
against SQLite and a real PostgreSQL server, beside the store write every turn already made
before (`begin_turn`, the baseline in the same run), and writes a table to RESULTS.md between
`<!-- limits_cost -->` markers.

    cd /work/main && .venv/bin/python -m benchmarks.limits_cost [--n 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from starlette.requests import Request

from actors.settings import Settings
from actors.store import Store, open_store
from benchmarks._harness import RESULTS, load_average, machine, publish
from gateway.identity import USER_COOKIE, Identity
from gateway.quota import Quota

MARKER = "limits_cost"


def timed(fn: Callable[[], object], n: int) -> float:
    """Median milliseconds of `fn` over n calls."""
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples)


def request(identity: Identity, cookie: str | None) -> Request:
    headers = [(b"x-forwarded-user", b"alice")]
    if cookie:
        headers.append((b"cookie", f"{USER_COOKIE}={cookie}".encode()))
    return Request({"type": "http", "method": "POST", "path": "/api/sessions/x/messages",
                    "headers": headers, "client": ("127.0.0.1", 5000), "query_string": b""})


def measure(store: Store, n: int) -> dict[str, float]:
    settings = Settings(rate_turns=10**9, token_budget=10**12, secret_key="k" * 32,
                        auth="oidc", oidc_issuer="http://127.0.0.1:1",
                        oidc_client_id="c")
    quota = Quota(settings, store)
    oidc = Identity(settings)
    proxy = Identity(settings.model_copy(update={"auth": "proxy"}))
    cookie = oidc.cookie_value("https://issuer#alice", "alice@example.org")
    caller = oidc.resolve(request(oidc, cookie))
    key = uuid.uuid4().hex
    store.create_session(key, caller.user, "sid")
    epoch = store.claim(key)
    loop = asyncio.new_event_loop()
    turn = iter(range(10**9))
    try:
        return {
            "identity, proxy header": timed(lambda: proxy.resolve(request(proxy, None)), n),
            "identity, oidc cookie": timed(lambda: oidc.resolve(request(oidc, cookie)), n),
            "turns-per-minute window": timed(
                lambda: loop.run_until_complete(quota.hit("turns", caller)), n),
            "token budget read": timed(
                lambda: loop.run_until_complete(quota.check_budget(caller)), n),
            "token counts write (per model call)": timed(
                lambda: store.add_tokens(key, caller.account, 100, 20), n),
            "baseline: begin_turn (every turn's write)": timed(
                lambda: store.begin_turn(key, epoch, f"t{next(turn)}",
                                         {"role": "user", "content": "hi"}, caller.account), n),
        }
    finally:
        loop.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="calls per figure")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    started, load = datetime.now(UTC), load_average()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        sqlite = open_store(str(Path(tmp) / "bench.sqlite3"))
        try:
            results["SQLite"] = measure(sqlite, args.n)
        finally:
            sqlite.close()
        from testing.postgres import PostgresServer

        with PostgresServer() as server:
            pg = open_store(server.url)
            try:
                results["PostgreSQL"] = measure(pg, args.n)
            finally:
                pg.close()
    names = list(results["SQLite"])
    rows = ["| per turn | SQLite ms (p50) | PostgreSQL ms (p50) |", "|---|---|---|"]
    rows += [f"| {name} | {results['SQLite'][name]:.3f} | {results['PostgreSQL'][name]:.3f} |"
             for name in names]
    added = {store: sum(v for k, v in r.items() if not k.startswith(("baseline", "identity,"
                                                                      " proxy")))
             for store, r in results.items()}
    section = "\n".join([
        f"## Identity and per-user limits: cost per turn ({started:%Y-%m-%d %H:%M} UTC)",
        "",
        f"Machine: {machine()}; load average before: {load}. `python -m benchmarks.limits_cost "
        f"--n {args.n}`: each piece timed in process, medians of {args.n} calls.",
        "",
        *rows,
        "",
        "Added to a turn with an oidc user, a budget set and one model call (cookie, window, "
        f"budget read, token write): SQLite {added['SQLite']:.2f} ms, PostgreSQL "
        f"{added['PostgreSQL']:.2f} ms (goal: within 2 ms p50); the turn's own write "
        f"(`begin_turn`, same run) {results['SQLite'][names[-1]]:.2f} / "
        f"{results['PostgreSQL'][names[-1]]:.2f} ms. The token write is in the session actor "
        "after the model answered, not on the way to the first token; each extra model call "
        "of a turn adds one more.",
    ])
    publish(section, args.out, MARKER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
