"""Turns of one session run one after another; a client that goes away loses nothing."""

from __future__ import annotations

import asyncio
import time

import httpx

from tests.helpers import Gateway, new_session


async def test_turns_of_one_session_do_not_interleave(gateway: Gateway, fresh_llm) -> None:
    fresh_llm.delay = 0.3  # each turn takes a while: they overlap unless serialized
    try:
        async with gateway.async_client() as c:
            sid = (await c.post("/api/sessions")).json()["session_id"]
            posts = []
            for i in range(6):  # arrival order is the order we send them in
                posts.append(asyncio.create_task(
                    c.post(f"/api/sessions/{sid}/messages", json={"content": f"turn {i}"})))
                await asyncio.sleep(0.05)
            replies = await asyncio.gather(*posts)
            history = (await c.get(f"/api/sessions/{sid}/messages")).json()
    finally:
        fresh_llm.delay = 0
    assert all(r.status_code == 200 for r in replies)
    texts = [m["content"] for m in history]
    assert texts == [x for i in range(6) for x in (f"turn {i}", f"echo: turn {i}")]


async def test_sessions_run_in_parallel(gateway: Gateway, fresh_llm) -> None:
    """Four sessions' turns are all at the model at once while the model is still thinking."""
    async with gateway.async_client() as c:
        sids = [(await c.post("/api/sessions")).json()["session_id"] for _ in range(4)]
        for s in sids:  # live before the clock starts: a process start is not what this checks
            assert (await c.get(f"/api/sessions/{s}")).status_code == 200
        fresh_llm.delay = 8.0
        try:
            posts = [asyncio.create_task(c.post(f"/api/sessions/{s}/messages",
                                                json={"content": f"parallel {s[:6]}"}))
                     for s in sids]
            deadline = time.monotonic() + 60
            while len([r for r in fresh_llm.requests if "parallel" in str(r["messages"])]) < 4:
                assert not any(p.done() for p in posts), "a turn finished before all started"
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            assert not any(p.done() for p in posts)  # all four in flight together
            await asyncio.gather(*posts)
        finally:
            fresh_llm.delay = 0


def test_disconnected_sse_client_does_not_lose_the_turn(client: httpx.Client, fresh_llm) -> None:
    sid = new_session(client)
    fresh_llm.chunk_delay = 0.2  # a slowly streamed reply
    try:
        with client.stream("POST", f"/api/sessions/{sid}/messages",
                           json={"content": "one two three four five six seven eight"},
                           headers={"Accept": "text/event-stream"}) as response:
            for line in response.iter_lines():
                if line.startswith("event: token"):
                    break  # the browser tab closes after the first token
        deadline = time.monotonic() + 30
        while True:
            history = client.get(f"/api/sessions/{sid}/messages").json()
            if len(history) == 2:
                break
            assert time.monotonic() < deadline, history
            time.sleep(0.2)
    finally:
        fresh_llm.chunk_delay = 0
    assert history[1]["content"] == "echo: one two three four five six seven eight"
