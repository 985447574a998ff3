"""GET /api/sessions/{sid}/events: the SSE contract (ids, replay after Last-Event-ID, comments),
read by a real streaming HTTP client from a real gateway. Helpers here serve the other
notification tests too."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from actors.session.names import session_key
from actors.store import open_store
from gateway import sse as sse_module
from testing.standins import OpenAIServer
from tests.helpers import Gateway, Listener, new_sid, send, start_streams, until

# helpers shared by the notification tests ---------------------------------------------------


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
