"""Virtual session actors: an idle session's actor goes away and comes back with everything,
for both stores; a turn that races the handover counts once; a session rests while its
streams deliver; the cap sheds the least recently used idle session and answers 503 only when
every live one is busy."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator

import httpx
import pytest
import ray

from actors.session.names import NAMESPACE, actor_name, session_key
from actors.store import open_store
from testing.standins import Call, OpenAIServer, Text, ToolCalls
from tests.helpers import (
    Gateway,
    Gateways,
    Listener,
    chat,
    fresh_database,
    send,
    start_streams,
    stream_children,
    until,
)

IDLE = 1.0


def live(sid: str) -> bool:
    try:
        ray.get_actor(actor_name(sid), namespace=NAMESPACE)
    except ValueError:
        return False
    return True


def pid_of(sid: str) -> int | None:
    try:
        handle = ray.get_actor(actor_name(sid), namespace=NAMESPACE)
    except ValueError:
        return None
    return ray.get(handle.__ray_call__.remote(lambda self: __import__("os").getpid()))


def png() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def idle_gateway(request: pytest.FixtureRequest, gateways: Gateways) -> Gateway:
    """A gateway whose session actors passivate after one idle second; no spares."""
    db = None
    if request.param == "postgresql":
        db = fresh_database(request.getfixturevalue("postgres"))
    return gateways(idle_seconds=IDLE, spare_sessions=0, db=db)


@pytest.fixture()
async def ac(idle_gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with idle_gateway.async_client() as c:
        yield c


async def test_an_idle_session_comes_back_whole(idle_gateway: Gateway, ac: httpx.AsyncClient,
                                                fresh_llm: OpenAIServer) -> None:
    created = await ac.post("/api/sessions")
    sid = created.json()["session_id"]
    assert not live(sid)  # a session is a row: creating it started no process
    fresh_llm.script("add-maths", [ToolCalls([Call("add_function_tools", {
        "service_name": "maths", "function_names": ["tests.sample_tools.add_numbers"]})]),
        Text("added")])
    await chat(ac, sid, "add-maths please")
    upload = await ac.post(f"/api/sessions/{sid}/files",
                           files={"file": ("red.png", png(), "image/png")})
    assert upload.status_code == 201, upload.text
    [noti_id] = await start_streams(ac, fresh_llm, sid, ["tell me once"])
    fresh_llm.script(f"notification stream {noti_id}", send("one thing happened"))
    listener = await Listener(idle_gateway.url, sid).opened()
    await listener.wait_for(1)
    await listener.close()
    assert (await ac.delete(f"/api/sessions/{sid}/notifications/{noti_id}")).status_code == 204
    before = {path: (await ac.get(f"/api/sessions/{sid}{path}")).json()
              for path in ("/messages", "/tools", "/files", "/notifications")}
    first_pid = pid_of(sid)

    await until(lambda: not live(sid), "the idle actor to passivate", timeout=60)

    after = {path: (await ac.get(f"/api/sessions/{sid}{path}")).json()
             for path in ("/messages", "/tools", "/files", "/notifications")}
    assert after == before
    assert "add_numbers" in {t["function"]["name"] for t in after["/tools"]}
    assert [f["kind"] for f in after["/files"]] == ["upload"]
    assert pid_of(sid) != first_pid  # a new activation, not the old process
    replay = await Listener(idle_gateway.url, sid).opened()
    assert [e["message"] for e in await replay.wait_for(1)] == ["one thing happened"]
    await replay.close()
    reply = await chat(ac, sid, "still there?")
    assert reply["reply"] == "echo: still there?"


async def test_a_turn_racing_the_passivation_is_recorded_once(
        ac: httpx.AsyncClient, fresh_llm: OpenAIServer) -> None:
    sid = (await ac.post("/api/sessions")).json()["session_id"]
    sent, pids = [], set()
    # Around the idle deadline (some turns reach the old actor as it decides to go), and a
    # few well past it (so that it surely went in between).
    for i, pause in enumerate([1.0, 2.5, 0.9, 1.1, 1.2, 2.5, 1.05, 1.15, 0.95, 1.25]):
        await asyncio.sleep(pause * IDLE)
        text = f"race {i}"
        reply = await chat(ac, sid, text)
        assert reply["reply"] == f"echo: {text}"
        sent.append(text)
        pids.add(pid_of(sid))
    history = (await ac.get(f"/api/sessions/{sid}/messages")).json()
    assert [m["content"] for m in history if m["role"] == "user"] == sent
    assert [m["content"] for m in history] == [x for t in sent for x in (t, f"echo: {t}")]
    assert len(pids) > 1  # the actor did passivate between turns


async def test_a_session_rests_while_its_streams_deliver(idle_gateway: Gateway,
                                                        ac: httpx.AsyncClient,
                                                        fresh_llm: OpenAIServer) -> None:
    """A running stream does not keep its session's actor live: the session passivates, the
    stream's child stores and numbers its notifications meanwhile, and /events after the
    reactivation replays exactly those, then goes live; another session hears none of them."""
    sid = (await ac.post("/api/sessions")).json()["session_id"]
    other = (await ac.post("/api/sessions")).json()["session_id"]
    [noti_id] = await start_streams(ac, fresh_llm, sid, ["keep telling me"])
    fresh_llm.script(f"notification stream {noti_id}",
                     [reply for n in range(6) for reply in send(f"tick {n}")])
    await until(lambda: not live(sid), "the session to passivate while its stream runs")

    store = open_store(idle_gateway.settings.db_url, migrate=False)
    try:  # read from the store: a request would wake the session
        await until(lambda: store.streams(session_key(sid))[0]["sent"] >= 3,
                    "three notifications stored while the session rested")
    finally:
        store.close()
    assert not live(sid)  # nothing woke it
    [child] = stream_children(sid)
    listener = await Listener(idle_gateway.url, sid).opened()  # reactivates it: replay, live
    theirs = await Listener(idle_gateway.url, other).opened()
    try:
        events = await listener.wait_for(6)
        assert [e["message"] for e in events] == [f"tick {n}" for n in range(6)]
        assert listener.ids == [1, 2, 3, 4, 5, 6]
        assert [c["Pid"] for c in stream_children(sid)] == [child["Pid"]]  # the same child
        assert theirs.events == []
    finally:
        await listener.close()
        await theirs.close()
    assert (await ac.delete(f"/api/sessions/{sid}/notifications/{noti_id}")).status_code == 204
    await until(lambda: not stream_children(sid), "the child gone with its last stream")
    await until(lambda: not live(sid), "the session to passivate again")


@pytest.fixture(scope="module")
def capped(gateways: Gateways) -> Gateway:
    """At most two live session actors in the cluster; nothing passivates by idleness."""
    return gateways(max_live_sessions=2, spare_sessions=0)


async def test_the_cap_sheds_the_least_recent_idle_session(capped: Gateway,
                                                           fresh_llm: OpenAIServer) -> None:
    async with capped.async_client() as c:
        a, b, x = [(await c.post("/api/sessions")).json()["session_id"] for _ in range(3)]
        await chat(c, a, "a first")
        await asyncio.sleep(1.2)  # the registry learns use at most once a second
        await chat(c, b, "b second")
        await chat(c, x, "x third")  # no room: the least recently used (a) makes way
        await until(lambda: not live(a), "a to be shed")
        assert live(b) and live(x)
        # a comes back whole on its next request (b, now the least recent, makes way)
        messages = (await c.get(f"/api/sessions/{a}/messages")).json()
        assert [m["content"] for m in messages] == ["a first", "echo: a first"]
        assert live(a)
        await until(lambda: not live(b), "b to be shed")

        # Every live one mid-turn: a third session is refused, clearly, until one is done.
        fresh_llm.delay = 4.0
        try:
            turns = [asyncio.create_task(c.post(f"/api/sessions/{s}/messages",
                                                json={"content": f"busy {s[:4]}"}))
                     for s in (a, x)]
            await until(lambda: sum("busy" in str(r["messages"])
                                    for r in fresh_llm.requests) >= 2, "both turns to start")
            refused = await c.get(f"/api/sessions/{b}/messages")
            assert refused.status_code == 503, refused.text
            assert int(refused.headers["Retry-After"]) >= 1
            assert "busy" in refused.json()["detail"]
            assert all(r.status_code == 200 for r in await asyncio.gather(*turns))
        finally:
            fresh_llm.delay = 0
        again = await c.get(f"/api/sessions/{b}/messages")
        assert again.status_code == 200
        assert [m["content"] for m in again.json()] == ["b second", "echo: b second"]


def test_creating_sessions_starts_no_process(capped: Gateway) -> None:
    with capped.client() as c:
        sids = [c.post("/api/sessions").json()["session_id"] for _ in range(50)]
        assert len(set(sids)) == 50
        assert not any(live(s) for s in sids)
        assert all(c.get(f"/api/sessions/{s}").status_code == 200 for s in sids[:2])
