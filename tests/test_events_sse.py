"""GET /api/sessions/{sid}/events: the SSE contract (ids, replay after Last-Event-ID, comments),
read by a real streaming HTTP client from a real gateway. Helpers here serve the other
notification tests too."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import ray
from ray._private import state as ray_state

from actors.session.names import NAMESPACE, actor_name, session_key
from actors.store import open_store
from gateway import sse as sse_module
from testing.standins import Call, OpenAIServer, Text, ToolCalls
from tests.conftest import Gateway

STARTED = re.compile(r"Notification stream started with ID ([0-9a-f-]{36})")
WAIT = 90.0  # seconds any one condition may take on a loaded 2-core machine


# helpers shared by the notification tests ---------------------------------------------------
async def until(condition: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Poll (bounded) until `condition()` is truthy; an async condition is awaited."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


class Listener:
    """One /events client (like a browser tab): collects events and comment lines."""

    def __init__(self, base_url: str, sid: str, last_event_id: int | str | None = None) -> None:
        self.url = f"{base_url}/api/sessions/{sid}/events"
        self.headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            self.headers["Last-Event-ID"] = str(last_event_id)
        self.events: list[dict[str, Any]] = []
        self.comments: list[str] = []
        self.status: int | None = None
        self.content_type = ""
        self.cache_control = ""
        self.ended = False
        self._opened = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        timeout = httpx.Timeout(30, read=None)
        try:
            async with httpx.AsyncClient(timeout=timeout) as client:
                async with client.stream("GET", self.url, headers=self.headers) as response:
                    self.status = response.status_code
                    self.content_type = response.headers.get("content-type", "")
                    self.cache_control = response.headers.get("cache-control", "")
                    self._opened.set()
                    fields: dict[str, str] = {}
                    async for line in response.aiter_lines():
                        if line.startswith(":"):
                            self.comments.append(line)
                        elif line == "":
                            if "data" in fields:
                                self.events.append({"id": int(fields["id"]),
                                                    "event": fields.get("event", "message"),
                                                    **json.loads(fields["data"])})
                            fields = {}
                        else:
                            name, _, value = line.partition(":")
                            value = value.removeprefix(" ")
                            fields[name] = (fields[name] + "\n" + value
                                            if name == "data" and name in fields else value)
        finally:
            self.ended = True
            self._opened.set()

    async def opened(self) -> Listener:
        await asyncio.wait_for(self._opened.wait(), WAIT)
        return self

    @property
    def ids(self) -> list[int]:
        return [e["id"] for e in self.events]

    @property
    def messages(self) -> list[str]:
        return [e["message"] for e in self.events]

    async def wait_for(self, count: int) -> list[dict[str, Any]]:
        await until(lambda: len(self.events) >= count or self.ended,
                    f"{count} events (have {len(self.events)})")
        assert len(self.events) >= count, f"stream ended after {self.events}"
        return self.events

    async def close(self) -> None:
        self._task.cancel()
        try:
            await self._task
        except (asyncio.CancelledError, httpx.HTTPError):
            pass


async def new_sid(c: httpx.AsyncClient) -> str:
    response = await c.post("/api/sessions")
    assert response.status_code == 201, response.text
    return response.json()["session_id"]


async def chat(c: httpx.AsyncClient, sid: str, content: str) -> dict[str, Any]:
    response = await c.post(f"/api/sessions/{sid}/messages", json={"content": content})
    assert response.status_code == 200, response.text
    return response.json()


def send(msg: str) -> list[Any]:
    """One stream round that sends `msg`: the call, then the model's closing answer."""
    return [ToolCalls([Call("send_notification", {"msg": msg})]), Text("sent it")]


def started_ids(turn: dict[str, Any]) -> list[str]:
    return [m.group(1) for msg in turn["messages"] if msg["role"] == "tool"
            for m in [STARTED.search(msg["content"] or "")] if m]


async def start_streams(c: httpx.AsyncClient, llm: OpenAIServer, sid: str,
                        tasks: list[str]) -> list[str]:
    """Start one stream per task through a chat turn; the stand-in model calls the tool."""
    marker = f"start-{uuid.uuid4().hex[:8]}"
    llm.script(marker, [ToolCalls([Call("start_notification_stream",
                                        {"task": t, "interval_seconds": 1}) for t in tasks])])
    turn = await chat(c, sid, f"please watch ({marker})")
    ids = started_ids(turn)
    assert len(ids) == len(tasks), turn["messages"]
    return ids


async def streams_of(c: httpx.AsyncClient, sid: str) -> dict[str, dict[str, Any]]:
    response = await c.get(f"/api/sessions/{sid}/notifications")
    assert response.status_code == 200, response.text
    return {s["noti_id"]: s for s in response.json()}


def stream_requests(llm: OpenAIServer, noti_id: str) -> list[dict[str, Any]]:
    """The model calls that stream `noti_id` made (its first message names it)."""
    mark = f"notification stream {noti_id}"
    return [r for r in llm.requests
            if r["messages"] and r["messages"][0].get("role") == "system"
            and mark in str(r["messages"][0].get("content"))]


def session_actor_info(sid: str) -> dict[str, Any] | None:
    """The live session actor, from the GCS (no dashboard needed)."""
    name = actor_name(sid)
    alive = [a for a in ray_state.actors().values()
             if a.get("Name") == name and a.get("State") == "ALIVE"]
    return alive[0] if alive else None


def stream_children(sid: str) -> list[dict[str, Any]]:
    """The session's notification actors that are not dead (at most one, by design)."""
    name = f"notify:{session_key(sid)}"
    return [a for a in ray_state.actors().values()
            if a.get("ActorClassName") == "NotificationActor" and a.get("Name") == name
            and a.get("State") != "DEAD"]


def child_streams(sid: str) -> set[str] | None:
    """The streams the session's notification actor runs now; None when it has none."""
    try:
        child = ray.get_actor(f"notify:{session_key(sid)}", namespace=NAMESPACE)
        return set(ray.get(child.status.remote(), timeout=30)["streams"])
    except (ValueError, ray.exceptions.RayActorError):
        return None


def kill_session_actor(sid: str, restart: bool = False) -> None:
    """Kill the session's actor as a crash would: Ray restarts it (`restart`), or it stays
    dead until the next request rebuilds it."""
    ray.kill(ray.get_actor(actor_name(sid), namespace=NAMESPACE), no_restart=not restart)


def assert_valid_conversation(messages: list[dict[str, Any]]) -> None:
    """What the OpenAI API insists on: every tool call answered, no answer without a call."""
    pending: set[str] = set()
    for m in messages:
        assert m["role"] in ("system", "user", "assistant", "tool"), m
        if m["role"] == "tool":
            assert m["tool_call_id"] in pending, f"tool result without a call: {m}"
            pending.discard(m["tool_call_id"])
        else:
            assert not pending, f"unanswered tool calls {pending} before {m}"
        if m["role"] == "assistant":
            pending |= {call["id"] for call in m.get("tool_calls") or []}
    assert messages[-1]["role"] in ("user", "tool")


# the SSE contract ---------------------------------------------------------------------------
@pytest.fixture()
async def ac(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway.async_client() as c:
        yield c


def store_events(gateway: Gateway, sid: str, messages: list[str]) -> None:
    """Events as a stream would have stored them, written straight into the store."""
    key = session_key(sid)
    with sqlite3.connect(gateway.settings.db_url) as db:
        (epoch,) = db.execute("SELECT epoch FROM sessions WHERE key=?", (key,)).fetchone()
    store = open_store(gateway.settings.db_url)
    try:
        for message in messages:
            store.add_event(key, epoch, "stored-stream", message)
    finally:
        store.close()


async def test_unknown_session_and_bad_last_event_id(ac: httpx.AsyncClient) -> None:
    response = await ac.get("/api/sessions/no-such-session/events")
    assert response.status_code == 404 and response.json()["detail"]
    sid = await new_sid(ac)
    response = await ac.get(f"/api/sessions/{sid}/events", headers={"Last-Event-ID": "x1"})
    assert response.status_code == 422 and response.json()["detail"]


async def test_replay_all_and_after_last_event_id(gateway: Gateway,
                                                  ac: httpx.AsyncClient) -> None:
    sid = await new_sid(ac)
    store_events(gateway, sid, ["one", "two", "three"])
    everything = await Listener(gateway.url, sid).opened()
    after_one = await Listener(gateway.url, sid, last_event_id=1).opened()
    after_all = await Listener(gateway.url, sid, last_event_id=3).opened()
    try:
        assert everything.status == 200
        assert everything.content_type.startswith("text/event-stream")
        assert everything.cache_control == "no-store"
        await everything.wait_for(3)
        await after_one.wait_for(2)
        assert everything.ids == [1, 2, 3]
        assert everything.messages == ["one", "two", "three"]
        assert {e["event"] for e in everything.events} == {"notification"}
        first = everything.events[0]
        assert set(first) == {"id", "event", "noti_id", "message", "at"}
        assert first["noti_id"] == "stored-stream" and first["at"] > 0
        assert after_one.ids == [2, 3]
        assert after_all.events == [] and not after_all.ended
    finally:
        for listener in (everything, after_one, after_all):
            await listener.close()
        await ac.delete(f"/api/sessions/{sid}")


async def test_comment_lines_keep_the_stream_alive(gateway: Gateway, ac: httpx.AsyncClient,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sse_module, "PING_SECONDS", 0.3)  # the gateway runs in-process
    assert 0 < sse_module.PING_SECONDS <= 15
    sid = await new_sid(ac)
    listener = await Listener(gateway.url, sid).opened()
    try:
        await until(lambda: len(listener.comments) >= 2, "two comment lines")
        assert listener.events == []
    finally:
        await listener.close()
        await ac.delete(f"/api/sessions/{sid}")


async def test_live_events_reach_every_tab_and_a_reconnect_loses_none(
        gateway: Gateway, ac: httpx.AsyncClient, fresh_llm: OpenAIServer) -> None:
    sid = await new_sid(ac)
    task = f"tick-{uuid.uuid4().hex[:8]}"
    fresh_llm.script(task, [r for i in range(1, 7) for r in send(f"tick {i}")])
    tab1 = await Listener(gateway.url, sid).opened()
    tab2 = await Listener(gateway.url, sid).opened()
    flaky = await Listener(gateway.url, sid).opened()
    try:
        [noti_id] = await start_streams(ac, fresh_llm, sid, [task])
        await flaky.wait_for(2)
        await flaky.close()  # the tab drops its connection and comes back
        seen = list(flaky.events)
        back = await Listener(gateway.url, sid, last_event_id=seen[-1]["id"]).opened()
        await tab1.wait_for(6)
        await tab2.wait_for(6)
        await back.wait_for(6 - len(seen))
        expected = [f"tick {i}" for i in range(1, 7)]
        for tab in (tab1, tab2):
            assert tab.ids == [1, 2, 3, 4, 5, 6] and tab.messages == expected
            assert {e["noti_id"] for e in tab.events} == {noti_id}
        rejoined = seen + back.events
        assert [e["id"] for e in rejoined] == [1, 2, 3, 4, 5, 6]  # no gap, no repeat
        assert [e["message"] for e in rejoined] == expected
        await back.close()
    finally:
        for listener in (tab1, tab2):
            await listener.close()
        await ac.delete(f"/api/sessions/{sid}")
