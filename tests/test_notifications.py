"""Notification streams end to end: started by a chat turn (the stand-in model calls the tool),
run by their session's one child actor, delivered over /events, stopped three ways, limited,
retried, running on when their session's actor is killed, resumed once when the child is, and
kept to their own session."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from testing.standins import Call, Fail, OpenAIServer, Text, ToolCalls
from tests.helpers import (
    Gateway,
    Listener,
    assert_valid_conversation,
    chat,
    child_streams,
    kill_session_actor,
    new_sid,
    send,
    session_actor_info,
    start_streams,
    stream_children,
    stream_requests,
    streams_of,
    until,
)

QUIET = 2.5  # seconds (2.5 intervals) in which a stopped stream must make no model call


@pytest.fixture()
async def ac(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    """A client that deletes the sessions it made, so no stream outlives its test."""
    async with gateway.async_client() as c:
        made: list[str] = []
        original = c.post

        async def post(url: str, **kwargs: object) -> httpx.Response:
            response = await original(url, **kwargs)  # type: ignore[arg-type]
            if url == "/api/sessions" and response.status_code == 201:
                made.append(response.json()["session_id"])
            return response

        c.post = post  # type: ignore[method-assign]
        yield c
        for sid in made:
            await c.delete(f"/api/sessions/{sid}")


def tag() -> str:
    return uuid.uuid4().hex[:8]


async def assert_quiet(llm: OpenAIServer, *noti_ids: str) -> None:
    """A stopped stream makes no more model calls: none during the next few intervals."""
    before = {n: len(stream_requests(llm, n)) for n in noti_ids}
    await asyncio.sleep(QUIET)
    assert {n: len(stream_requests(llm, n)) for n in noti_ids} == before


async def test_stream_from_chat_delivers_in_order_and_stops_itself(
        gateway: Gateway, ac: httpx.AsyncClient, fresh_llm: OpenAIServer) -> None:
    sid = await new_sid(ac)
    task = f"watch-harbour-{tag()}"
    fresh_llm.script(task, [*send("boat 1"), *send("boat 2"), *send("boat 3")])
    tab = await Listener(gateway.url, sid).opened()
    try:
        [noti_id] = await start_streams(ac, fresh_llm, sid, [task])
        assert uuid.UUID(noti_id).version == 4
        events = await tab.wait_for(3)
        assert [e["id"] for e in events] == [1, 2, 3]
        assert [e["message"] for e in events] == ["boat 1", "boat 2", "boat 3"]
        assert all(e["noti_id"] == noti_id and e["event"] == "notification" for e in events)
        assert events[0]["at"] <= events[1]["at"] <= events[2]["at"]
        listing = await streams_of(ac, sid)
        assert listing[noti_id]["status"] == "running" and listing[noti_id]["sent"] == 3
        info = (await ac.get(f"/api/sessions/{sid}")).json()
        assert [s["noti_id"] for s in info["notifications"]] == [noti_id]

        # the stream's context: a valid conversation that names its ID first, with the task
        calls = stream_requests(fresh_llm, noti_id)
        first = calls[0]["messages"]
        assert noti_id in first[0]["content"] and task in first[0]["content"]
        assert any(m.get("content") == f"Notification stream started with ID {noti_id}"
                   for m in first if m["role"] == "tool")
        for request in calls:
            assert_valid_conversation(request["messages"])
            tools = {t["function"]["name"] for t in request["tools"]}
            assert {"send_notification", "stop_notification"} <= tools
            assert "start_notification_stream" not in tools

        # its own model stops it
        fresh_llm.script(task, [ToolCalls([Call("stop_notification", {"noti_id": noti_id})])])
        await until(lambda: _status(ac, sid, noti_id, "stopped"), "the stream to stop itself")
        await until(lambda: not stream_children(sid), "its actor to be gone (nothing runs)")
        await assert_quiet(fresh_llm, noti_id)
        assert tab.ids == [1, 2, 3]
    finally:
        await tab.close()


async def _status(c: httpx.AsyncClient, sid: str, noti_id: str, status: str) -> bool:
    return (await streams_of(c, sid))[noti_id]["status"] == status


async def test_stop_by_api_and_by_chat_and_other_sessions_cannot(
        gateway: Gateway, ac: httpx.AsyncClient, fresh_llm: OpenAIServer) -> None:
    sid, other = await new_sid(ac), await new_sid(ac)
    tasks = [f"watch-a-{tag()}", f"watch-b-{tag()}"]
    for task in tasks:
        fresh_llm.script(task, send(f"hello from {task}"))
    tab = await Listener(gateway.url, sid).opened()
    other_tab = await Listener(gateway.url, other).opened()
    try:
        first, second = await start_streams(ac, fresh_llm, sid, tasks)
        await tab.wait_for(2)
        assert {e["noti_id"] for e in tab.events} == {first, second}

        # the other session can neither see nor stop them
        response = await ac.delete(f"/api/sessions/{other}/notifications/{first}")
        assert response.status_code == 404
        marker = f"stop-theirs-{tag()}"
        fresh_llm.script(marker, [ToolCalls([Call("stop_notification", {"noti_id": first})])])
        turn = await chat(ac, other, marker)
        assert "no notification stream" in turn["messages"][2]["content"]
        assert await streams_of(ac, other) == {}
        assert {s["status"] for s in (await streams_of(ac, sid)).values()} == {"running"}

        # by the API
        response = await ac.delete(f"/api/sessions/{sid}/notifications/{first}")
        assert response.status_code == 204
        listing = await streams_of(ac, sid)
        assert listing[first]["status"] == "stopped" and listing[second]["status"] == "running"
        assert listing[first]["sent"] == 1
        assert child_streams(sid) == {second}  # the one child runs only the other now
        response = await ac.delete(f"/api/sessions/{sid}/notifications/{uuid.uuid4()}")
        assert response.status_code == 404

        # by the chat
        marker = f"stop-mine-{tag()}"
        fresh_llm.script(marker, [ToolCalls([Call("stop_notification", {"noti_id": second})])])
        turn = await chat(ac, sid, marker)
        assert turn["messages"][2]["content"] == f"Notification stream {second} stopped."
        assert (await streams_of(ac, sid))[second]["status"] == "stopped"
        await until(lambda: not stream_children(sid), "the child gone with both streams")
        await assert_quiet(fresh_llm, first, second)
        assert other_tab.events == [] and len(tab.events) == 2
    finally:
        await tab.close()
        await other_tab.close()


async def test_sixth_stream_refused_and_deleting_the_session_stops_all(
        gateway: Gateway, ac: httpx.AsyncClient, fresh_llm: OpenAIServer) -> None:
    sid = await new_sid(ac)
    marker = f"six-{tag()}"
    fresh_llm.script(marker, [ToolCalls([
        Call("start_notification_stream", {"task": f"{marker}-task-{i}", "interval_seconds": 1})
        for i in range(6)])])
    turn = await chat(ac, sid, marker)
    results = [m["content"] for m in turn["messages"] if m["role"] == "tool"]
    started = [r for r in results if r.startswith("Notification stream started with ID")]
    refused = [r for r in results if r not in started]
    assert len(started) == 5 and len(refused) == 1
    assert refused[0].startswith("Refused") and "5" in refused[0]
    listing = await streams_of(ac, sid)
    assert len(listing) == 5 and {s["status"] for s in listing.values()} == {"running"}

    # a seventh, later, is refused too
    marker7 = f"seven-{tag()}"
    fresh_llm.script(marker7, [ToolCalls([Call("start_notification_stream", {"task": "x"})])])
    turn = await chat(ac, sid, marker7)
    assert turn["messages"][2]["content"].startswith("Refused")

    # every stream runs rounds, then deleting the session stops them all
    for noti_id in listing:
        await until(lambda n=noti_id: stream_requests(fresh_llm, n), "a round of each stream")
        first = stream_requests(fresh_llm, noti_id)[0]["messages"]
        assert_valid_conversation(first)  # six parallel calls, each answered
        ours = [m for m in first if m.get("content") ==
                f"Notification stream started with ID {noti_id}"]
        assert len(ours) == 1
    assert len(stream_children(sid)) == 1  # five streams, one process
    assert child_streams(sid) == set(listing)
    assert (await ac.delete(f"/api/sessions/{sid}")).status_code == 204
    assert (await ac.get(f"/api/sessions/{sid}")).status_code == 404
    assert (await ac.get(f"/api/sessions/{sid}/notifications")).status_code == 404
    assert (await ac.get(f"/api/sessions/{sid}/events")).status_code == 404
    await until(lambda: not stream_children(sid), "the streams' actor gone")
    await assert_quiet(fresh_llm, *listing)


async def test_failing_round_is_retried_at_the_next_interval(
        gateway: Gateway, ac: httpx.AsyncClient, fresh_llm: OpenAIServer) -> None:
    sid = await new_sid(ac)
    task = f"watch-flaky-{tag()}"
    # the client retries once: two failures make one failed round
    fresh_llm.script(task, [Fail(503, "model down"), Fail(503, "model down"),
                            *send("back again")])
    tab = await Listener(gateway.url, sid).opened()
    try:
        [noti_id] = await start_streams(ac, fresh_llm, sid, [task])
        [event] = await tab.wait_for(1)
        assert event["message"] == "back again" and event["noti_id"] == noti_id
        # two failed calls (one round), then the round that sent, closed by the model's answer
        await until(lambda: len(stream_requests(fresh_llm, noti_id)) >= 4, "the closing call")
        listing = await streams_of(ac, sid)
        assert listing[noti_id]["status"] == "running" and listing[noti_id]["sent"] == 1
    finally:
        await tab.close()


async def test_streams_outlive_their_session_actor_and_resume_once_after_their_own(
        gateway: Gateway, ac: httpx.AsyncClient, fresh_llm: OpenAIServer) -> None:
    sid = await new_sid(ac)
    tasks = [f"watch-durable-{tag()}", f"watch-durable-{tag()}"]
    fresh_llm.script(tasks[0], send("before the crash"))
    tab = await Listener(gateway.url, sid).opened()
    try:
        noti_ids = await start_streams(ac, fresh_llm, sid, tasks)
        await tab.wait_for(1)
        [child] = stream_children(sid)

        # the session's actor crashes: its streams run on in their own actor, and the open
        # /events goes on with the restarted session actor
        first = session_actor_info(sid)
        assert first is not None
        kill_session_actor(sid, restart=True)
        await until(lambda: (lambda a: a is not None and a["Pid"] != first["Pid"])(
            session_actor_info(sid)), "the session's actor restarted")
        fresh_llm.script(tasks[0], send("after a restart"))
        await tab.wait_for(2)
        assert [c["Pid"] for c in stream_children(sid)] == [child["Pid"]]

        # killed for good: the streams still run; the next request rebuilds the session
        kill_session_actor(sid)
        fresh_llm.script(tasks[0], send("while it rests"))
        await until(lambda: _sent(ac, sid, noti_ids[0], 3), "a notification stored meanwhile")
        events = await tab.wait_for(3)

        # the child itself dies: Ray restarts it and it resumes every running stream, once
        os.kill(child["Pid"], signal.SIGKILL)
        await until(lambda: (lambda cs: len(cs) == 1 and cs[0]["Pid"] != child["Pid"]
                             and cs[0]["State"] == "ALIVE")(stream_children(sid)),
                    "the child restarted")
        await until(lambda: child_streams(sid) == set(noti_ids), "both streams resumed")
        fresh_llm.script(tasks[0], send("after the child's crash"))
        events = await tab.wait_for(4)
        assert [(e["id"], e["message"]) for e in events] == [
            (1, "before the crash"), (2, "after a restart"), (3, "while it rests"),
            (4, "after the child's crash")]
        assert {e["noti_id"] for e in events} == {noti_ids[0]}
        listing = await streams_of(ac, sid)
        assert {s["status"] for s in listing.values()} == {"running"}
        assert listing[noti_ids[0]]["sent"] == 4
        # once, not twice: the resumed streams share one actor, and each keeps one schedule
        before = {n: len(stream_requests(fresh_llm, n)) for n in noti_ids}
        await asyncio.sleep(4.5)  # four or five rounds at a 1 s interval, model answers at once
        made = {n: len(stream_requests(fresh_llm, n)) - before[n] for n in noti_ids}
        assert all(2 <= m <= 7 for m in made.values()), made
        assert len(stream_children(sid)) == 1
        assert tab.ids == [1, 2, 3, 4]
    finally:
        await tab.close()


async def _sent(c: httpx.AsyncClient, sid: str, noti_id: str, n: int) -> bool:
    return (await streams_of(c, sid))[noti_id]["sent"] >= n


async def test_stream_tools_in_the_chat(gateway: Gateway, ac: httpx.AsyncClient,
                                        fresh_llm: OpenAIServer) -> None:
    """The chat has start/stop but no send; stopping an unknown ID says so."""
    sid = await new_sid(ac)
    tools = {t["function"]["name"] for t in (await ac.get(f"/api/sessions/{sid}/tools")).json()}
    assert {"start_notification_stream", "stop_notification"} <= tools
    assert "send_notification" not in tools
    marker = f"stop-nothing-{tag()}"
    fresh_llm.script(marker, [ToolCalls([Call("stop_notification", {"noti_id": "nope"})]),
                              Text("nothing to stop")])
    turn = await chat(ac, sid, marker)
    assert "no notification stream with ID nope" in turn["messages"][2]["content"]


