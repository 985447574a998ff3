"""The turn in flight over HTTP: `GET /api/sessions/{sid}/turn` replays it from its start and
follows it live (204 when there is none); `DELETE` stops it (404 when there is none), keeping
what was said, marked as stopped, and the next message is answered at once."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from testing.standins import Call, OpenAIServer, Text, ToolCalls
from tests.helpers import Gateway, collect, events, new_session, text_of

SLOW = 0.08  # seconds between two streamed words of the slow model
WORDS = " ".join(f"word{i}" for i in range(40))


def test_no_turn_in_flight(client: httpx.Client) -> None:
    sid = new_session(client)
    watched = client.get(f"/api/sessions/{sid}/turn", headers={"Accept": "text/event-stream"})
    assert watched.status_code == 204 and watched.content == b""
    stopped = client.delete(f"/api/sessions/{sid}/turn")
    assert stopped.status_code == 404 and stopped.json()["detail"] == "no turn is in flight"
    assert client.get("/api/sessions/not-a-session/turn").status_code == 404
    assert client.delete("/api/sessions/not-a-session/turn").status_code == 404


def kinds(events: list[tuple[str, Any]]) -> list[str]:
    """Event names, a run of tokens counted as one."""
    out: list[str] = []
    for name, _ in events:
        if not (name == "token" and out and out[-1] == "token"):
            out.append(name)
    return out


async def test_a_second_reader_sees_the_turn_from_its_start(
        gateway: Gateway, fresh_llm: OpenAIServer) -> None:
    fresh_llm.script("replay me", [Text(WORDS, chunk_delay=SLOW)])
    async with gateway.async_client() as c:
        sid = (await c.post("/api/sessions")).json()["session_id"]
        started = asyncio.Event()
        post = asyncio.create_task(collect(c, "POST", f"/api/sessions/{sid}/messages", started,
                                           json={"content": "replay me"}))
        await asyncio.wait_for(started.wait(), 60)
        await asyncio.sleep(5 * SLOW)  # a few words in: the watcher joins mid-turn
        watched = await collect(c, "GET", f"/api/sessions/{sid}/turn")
        posted = await post
        after = await c.get(f"/api/sessions/{sid}/turn")
    assert posted[-1] == ("done", {"reply": WORDS})
    assert watched[-1] == ("done", {"reply": WORDS})
    assert text_of(watched) == text_of(posted) == WORDS  # from its first word, nothing twice
    # the same events in the same order (text already waiting may come as fewer token events)
    assert kinds(watched) == kinds(posted)
    assert after.status_code == 204  # the turn is over


async def test_stop_keeps_what_was_said_and_the_next_turn_answers(
        gateway: Gateway, fresh_llm: OpenAIServer) -> None:
    fresh_llm.script("talk a lot", [Text(WORDS * 3, chunk_delay=SLOW)])
    async with gateway.async_client() as c:
        sid = (await c.post("/api/sessions")).json()["session_id"]
        started = asyncio.Event()
        post = asyncio.create_task(collect(c, "POST", f"/api/sessions/{sid}/messages", started,
                                           json={"content": "talk a lot"}))
        await asyncio.wait_for(started.wait(), 60)
        await asyncio.sleep(6 * SLOW)
        stop = await c.delete(f"/api/sessions/{sid}/turn")
        posted = await asyncio.wait_for(post, 30)
        assert stop.status_code == 204, stop.text
        kind, done = posted[-1]
        said = text_of(posted)
        assert kind == "done" and done["stopped"] is True and done["reply"] == said
        assert 0 < len(said) < len(WORDS * 3) and (WORDS * 3).startswith(said)
        assert (await c.delete(f"/api/sessions/{sid}/turn")).status_code == 404
        assert (await c.get(f"/api/sessions/{sid}/turn")).status_code == 204

        loop = asyncio.get_running_loop()
        began = loop.time()
        nxt = await c.post(f"/api/sessions/{sid}/messages", json={"content": "and now?"})
        assert nxt.status_code == 200 and nxt.json()["reply"] == "echo: and now?"
        assert loop.time() - began < 10
        history = (await c.get(f"/api/sessions/{sid}/messages")).json()
    turns = [(m["role"], m.get("content")) for m in history if m["role"] != "system"]
    assert turns[0] == ("user", "talk a lot")
    assert turns[1][0] == "assistant" and turns[1][1].startswith(said.strip())
    assert turns[1][1].endswith("_(stopped)_")
    assert turns[2:] == [("user", "and now?"), ("assistant", "echo: and now?")]


async def test_stop_while_a_tool_round_runs_leaves_a_valid_conversation(
        gateway: Gateway, fresh_llm: OpenAIServer) -> None:
    """Stopped while the model thinks after a tool call: every tool call keeps its answer."""
    fresh_llm.script("add then wait", [ToolCalls([Call("list_image_files", {})]),
                                       Text("never said")])
    async with gateway.async_client() as c:
        sid = (await c.post("/api/sessions")).json()["session_id"]
        seen: list[str] = []

        async def watch() -> list[tuple[str, dict[str, Any]]]:
            async with c.stream("POST", f"/api/sessions/{sid}/messages",
                                headers={"Accept": "text/event-stream"},
                                json={"content": "add then wait"}) as response:
                got = []
                async for item in events(response):
                    got.append(item)
                    seen.append(item[0])
                    if item[0] == "tool_result":
                        fresh_llm.delay = 30.0  # the model's next answer takes long
                return got

        post = asyncio.create_task(watch())
        for _ in range(600):
            if "tool_result" in seen:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        stop = await c.delete(f"/api/sessions/{sid}/turn")
        posted = await asyncio.wait_for(post, 20)
        fresh_llm.delay = 0.0
        history = (await c.get(f"/api/sessions/{sid}/messages")).json()
    assert stop.status_code == 204
    assert posted[-1][0] == "done" and posted[-1][1]["stopped"] is True
    calls = {c["id"] for m in history for c in (m.get("tool_calls") or [])}
    answered = {m["tool_call_id"] for m in history if m["role"] == "tool"}
    assert calls and calls == answered
    assert "never said" not in json.dumps(history)
