"""Many users, each bounded (API.md "Users, limits and costs"), through HTTP against real
gateways: who the caller is (proxy mode: a header believed only from a trusted peer), sessions
that belong to their user, every per-user limit (429 with Retry-After, a detail naming it,
nothing recorded; the same count through two gateways), token accounting and the day's budget,
the context limit, retention, the events cap, and the CLI's refusal to listen openly without
LLMCAM_AUTH.

Over 300 lines on purpose: one feature's tests (who is calling, and every per-user limit),
beside the fixtures only they use."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from actors.session.names import session_key
from actors.store import open_store
from testing.standins import Call, OpenAIServer, ToolCalls
from tests.helpers import (
    ROOT,
    Gateway,
    Gateways,
    Listener,
    assert_valid_conversation,
    make_settings,
    send,
    session_actor_info,
    started_ids,
    stream_requests,
    until,
)

SMALL = {"spare_sessions": 0}  # these gateways need no actors started ahead


def user() -> str:
    """A user name no other test (nor earlier run in this Ray) has used."""
    return f"u-{uuid.uuid4().hex[:10]}"


def as_user(gw: Gateway, name: str | None, **kwargs: Any) -> httpx.Client:
    headers = {"X-Forwarded-User": name} if name else {}
    return gw.client(headers=headers, **kwargs)


def created(c: httpx.Client) -> str:
    response = c.post("/api/sessions")
    assert response.status_code == 201, response.text
    return response.json()["session_id"]


def assert_limited(response: httpx.Response, variable: str) -> None:
    assert response.status_code == 429, response.text
    assert int(response.headers["Retry-After"]) >= 1
    assert variable in response.json()["detail"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("users")


@pytest.fixture(scope="module")
def proxy_gw(gateways: Gateways, data_dir: Path) -> Gateway:
    return gateways(data=data_dir, auth="proxy", rate_sessions=4, rate_turns=3,
                    user_listeners=2, **SMALL)


@pytest.fixture(scope="module")
def proxy_gw2(ray_address: str, llm: OpenAIServer, data_dir: Path,
              proxy_gw: Gateway) -> Iterator[Gateway]:
    """A second gateway on the same store: the limits count across both."""
    with Gateway(proxy_gw.settings) as gw:
        yield gw


# who is calling ---------------------------------------------------------------------------------
def test_proxy_header_names_the_user_only_from_a_trusted_peer(proxy_gw: Gateway) -> None:
    alice = user()
    with as_user(proxy_gw, alice) as c:
        me = c.get("/api/me")
        assert me.status_code == 200, me.text
        body = me.json()
        assert body["user"] == alice and body["auth"] == "proxy"
        assert body["limits"]["LLMCAM_RATE_TURNS"] == 3
        assert set(body["usage"]) == {"tokens_today", "turns_today"}
    with as_user(proxy_gw, None) as c:  # no header: 401, with words
        response = c.get("/api/me")
        assert response.status_code == 401 and response.json()["detail"]
        assert c.post("/api/sessions").status_code == 401
        assert c.get("/healthz").status_code == 200  # not an /api request
    # 127.0.0.2 is loopback but not in LLMCAM_TRUSTED_PROXIES (127.0.0.1/32): header ignored
    untrusted = httpx.HTTPTransport(local_address="127.0.0.2")
    with as_user(proxy_gw, alice, transport=untrusted) as c:
        response = c.get("/api/me")
        assert response.status_code == 401, response.text
        assert c.post("/api/sessions").status_code == 401


def test_sessions_belong_to_their_user(proxy_gw: Gateway) -> None:
    alice, bob = user(), user()
    with as_user(proxy_gw, alice) as a, as_user(proxy_gw, bob) as b:
        first, second = created(a), created(a)
        assert a.post(f"/api/sessions/{second}/messages",
                      json={"content": "a title for this chat " * 8}).status_code == 200
        listed = a.get("/api/sessions").json()
        assert [s["session_id"] for s in listed] == [second, first]  # most recent first
        assert listed[0]["title"] == ("a title for this chat " * 8)[:80]
        assert listed[0]["message_count"] == 2 and listed[1]["message_count"] == 0
        assert b.get("/api/sessions").json() == []
        for method, path in [("GET", ""), ("GET", "/messages"), ("GET", "/files"),
                             ("GET", "/tools"), ("GET", "/notifications"), ("DELETE", "")]:
            response = b.request(method, f"/api/sessions/{second}{path}")
            assert response.status_code == 404, (method, path, response.text)
        response = b.post(f"/api/sessions/{second}/messages", json={"content": "mine now"})
        assert response.status_code == 404
        assert a.get(f"/api/sessions/{second}/messages").json()[-2]["content"].startswith("a ")
        assert len(a.get(f"/api/sessions/{second}/messages").json()) == 2  # bob added nothing


# limits ------------------------------------------------------------------------------------------
def test_sessions_per_minute_count_across_two_gateways(proxy_gw: Gateway,
                                                       proxy_gw2: Gateway) -> None:
    carol = user()
    with as_user(proxy_gw, carol) as one, as_user(proxy_gw2, carol) as two:
        created(one), created(two), created(one), created(two)  # four: the limit
        for c in (one, two):
            assert_limited(c.post("/api/sessions"), "LLMCAM_RATE_SESSIONS")
        assert len(one.get("/api/sessions").json()) == 4  # nothing half done
    with as_user(proxy_gw2, user()) as other:  # another user is not affected
        created(other)


def test_turns_per_minute_refuse_without_recording(proxy_gw: Gateway, proxy_gw2: Gateway,
                                                   fresh_llm: OpenAIServer) -> None:
    dave = user()
    with as_user(proxy_gw, dave) as one, as_user(proxy_gw2, dave) as two:
        sid = created(one)
        for c in (one, two, one):
            assert c.post(f"/api/sessions/{sid}/messages",
                          json={"content": "hi"}).status_code == 200
        calls = len(fresh_llm.requests)
        response = two.post(f"/api/sessions/{sid}/messages", json={"content": "one too many"},
                            headers={"Accept": "text/event-stream"})
        assert_limited(response, "LLMCAM_RATE_TURNS")
        assert len(one.get(f"/api/sessions/{sid}/messages").json()) == 6
        assert len(fresh_llm.requests) == calls  # the model was not asked
        assert one.get("/api/me").json()["usage"]["turns_today"] == 3


async def test_listeners_per_user_across_sessions(proxy_gw: Gateway,
                                                  proxy_gw2: Gateway) -> None:
    erin = user()
    headers = {"X-Forwarded-User": erin}
    with as_user(proxy_gw, erin) as c:
        sids = [created(c) for _ in range(3)]
    tabs = [await listen(proxy_gw, sids[0], headers).opened(),
            await listen(proxy_gw2, sids[1], headers).opened()]  # two gateways, one count
    try:
        assert [tab.status for tab in tabs] == [200, 200]
        async with httpx.AsyncClient(base_url=proxy_gw.url, headers=headers) as ac:
            assert_limited(await ac.get(f"/api/sessions/{sids[2]}/events"),
                           "LLMCAM_USER_LISTENERS")
            assert_limited(await ac.get(f"/api/sessions/{sids[2]}/turn"),
                           "LLMCAM_USER_LISTENERS")
            await tabs.pop().close()  # a tab closes: its place is free again

            async def free() -> bool:
                return (await ac.get(f"/api/sessions/{sids[2]}/turn")).status_code == 204

            await until(free, "the closed tab's place")
        other = await listen(proxy_gw, sids[0], {"X-Forwarded-User": user()}).opened()
        assert other.status == 404  # another user: not their session (and not their count)
    finally:
        for tab in tabs:
            await tab.close()


def listen(gw: Gateway, sid: str, headers: dict[str, str]) -> Listener:
    tab = Listener(gw.url, sid)
    tab.headers.update(headers)  # before its task first runs
    return tab


def bounded(ray_address: str, llm: OpenAIServer, tmp: Path, **limits: Any) -> Gateway:
    return Gateway(make_settings(tmp, llm, auth="proxy", **SMALL, **limits))


async def test_live_sessions_per_user(ray_address: str, llm: OpenAIServer,
                                      tmp_path: Path) -> None:
    alice = user()
    headers = {"X-Forwarded-User": alice}
    with bounded(ray_address, llm, tmp_path, user_live_sessions=2) as gw:
        with as_user(gw, alice) as c:
            sids = [created(c) for _ in range(3)]
            busy = [await listen(gw, sid, headers).opened() for sid in sids[:2]]  # both live
            try:
                assert [tab.status for tab in busy] == [200, 200]
                # a third needs one of alice's two to go, and both are busy: 429, not 503
                assert_limited(c.get(f"/api/sessions/{sids[2]}"), "LLMCAM_USER_LIVE_SESSIONS")
                with as_user(gw, user()) as bob:  # another user still gets a session
                    assert bob.get(f"/api/sessions/{created(bob)}").status_code == 200
                await busy.pop().close()  # sids[1] is idle now: it makes room for sids[2]

                def third() -> bool:
                    return c.get(f"/api/sessions/{sids[2]}").status_code == 200

                await until(third, "alice's third session")
                # passivated (its process exits just after it said so), not deleted
                await until(lambda: session_actor_info(sids[1]) is None, "sids[1] passivated")
                assert c.get(f"/api/sessions/{sids[1]}/messages").status_code in (200, 429)
            finally:
                for tab in busy:
                    await tab.close()


def start_stream_turn(c: httpx.Client, llm: OpenAIServer, sid: str, task: str,
                      interval: float = 1) -> dict[str, Any]:
    marker = f"start-{uuid.uuid4().hex[:8]}"
    llm.script(marker, [ToolCalls([Call("start_notification_stream",
                                        {"task": task, "interval_seconds": interval})])])
    response = c.post(f"/api/sessions/{sid}/messages", json={"content": f"watch ({marker})"})
    assert response.status_code == 200, response.text
    return response.json()


async def test_streams_per_user_minimum_interval_and_expiry(
        ray_address: str, fresh_llm: OpenAIServer, tmp_path: Path) -> None:
    alice = user()
    with bounded(ray_address, fresh_llm, tmp_path, user_streams=1, min_stream_interval=3,
                 stream_hours=8 / 3600) as gw, as_user(gw, alice) as c:
        first, second = created(c), created(c)
        task = f"watch-{uuid.uuid4().hex[:6]}"
        [noti_id] = started_ids(start_stream_turn(c, fresh_llm, first, task))
        refused = start_stream_turn(c, fresh_llm, second, f"{task}-2")
        assert started_ids(refused) == []
        assert "LLMCAM_USER_STREAMS" in refused["messages"][-2]["content"]
        assert c.get(f"/api/sessions/{second}/notifications").json() == []
        # asked for 1 s, it runs at the 3 s minimum: at most 3 rounds in the next 6.5 s
        await until(lambda: stream_requests(fresh_llm, noti_id), "the first round")
        start = len(stream_requests(fresh_llm, noti_id))
        await asyncio.sleep(6.5)
        assert len(stream_requests(fresh_llm, noti_id)) - start <= 2

        def status() -> str:
            return c.get(f"/api/sessions/{first}/notifications").json()[0]["status"]

        await until(lambda: status() == "expired", "the stream to expire after 8 s")
        calls = len(stream_requests(fresh_llm, noti_id))
        await asyncio.sleep(3.5)
        assert len(stream_requests(fresh_llm, noti_id)) == calls  # no round after expiry
        # an expired stream no longer counts: the user may start another
        assert len(started_ids(start_stream_turn(c, fresh_llm, second, f"{task}-3"))) == 1
        c.delete(f"/api/sessions/{second}")


async def test_token_budget_stops_turns_and_pauses_streams(
        ray_address: str, fresh_llm: OpenAIServer, tmp_path: Path) -> None:
    alice = user()
    with bounded(ray_address, fresh_llm, tmp_path, token_budget=1) as gw, \
            as_user(gw, alice) as c:
        sid = created(c)
        task = f"budget-{uuid.uuid4().hex[:6]}"
        turn = start_stream_turn(c, fresh_llm, sid, task)  # within budget: 0 spent so far
        [noti_id] = started_ids(turn)
        info = c.get(f"/api/sessions/{sid}").json()
        assert info["usage"]["prompt_tokens"] > 0 and info["usage"]["completion_tokens"] > 0
        me = c.get("/api/me").json()
        assert me["usage"]["tokens_today"] == sum(info["usage"].values())
        assert me["usage"]["turns_today"] == 1
        response = c.post(f"/api/sessions/{sid}/messages", json={"content": "more"})
        assert_limited(response, "LLMCAM_TOKEN_BUDGET")
        assert len(c.get(f"/api/sessions/{sid}/messages").json()) == len(turn["messages"])
        await asyncio.sleep(3)  # the stream skips its rounds: no model call at all
        assert stream_requests(fresh_llm, noti_id) == []
        assert c.get(f"/api/sessions/{sid}/notifications").json()[0]["status"] == "running"
        assert c.delete(f"/api/sessions/{sid}").status_code == 204
        with as_user(gw, user()) as bob:  # the budget is alice's alone
            other = created(bob)
            assert bob.post(f"/api/sessions/{other}/messages",
                            json={"content": "hi"}).status_code == 200


PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c4944415408d763"
    "f8cfc000000301010018dd8db00000000049454e44ae426082")


async def test_session_past_its_ttl_is_deleted_whole(ray_address: str, llm: OpenAIServer,
                                                     tmp_path: Path) -> None:
    with bounded(ray_address, llm, tmp_path, session_ttl_seconds=3) as gw, \
            as_user(gw, user()) as c:
        sid = created(c)
        upload = c.post(f"/api/sessions/{sid}/files", files={"file": ("a.png", PNG)})
        assert upload.status_code == 201, upload.text
        name = upload.json()["name"]
        assert c.get(f"/api/sessions/{sid}/files/{name}").status_code == 200
        keep = created(c)

        def keep_using() -> None:  # a session in use is not swept
            assert c.post(f"/api/sessions/{keep}/messages",
                          json={"content": "still here"}).status_code == 200

        keep_using()
        deadline = time.monotonic() + 60
        # (listing the sessions reads the store: it does not use the session)
        while sid in [s["session_id"] for s in c.get("/api/sessions").json()]:
            assert time.monotonic() < deadline, "the session outlived its TTL"
            keep_using()
            await asyncio.sleep(0.5)
        assert c.get(f"/api/sessions/{sid}").status_code == 404
        assert c.get(f"/api/sessions/{sid}/files/{name}").status_code == 404
        assert c.get(f"/api/sessions/{sid}/messages").status_code == 404
        assert c.get(f"/api/sessions/{keep}").status_code == 200
        store = open_store(str(tmp_path / "llmcam.sqlite3"), migrate=False)
        try:
            assert store.files(session_key(sid)) == [] and store.messages(session_key(sid)) == []
        finally:
            store.close()


async def test_events_beyond_the_cap_drop_the_oldest(ray_address: str, fresh_llm: OpenAIServer,
                                                     tmp_path: Path) -> None:
    with bounded(ray_address, fresh_llm, tmp_path, max_events=3) as gw, \
            as_user(gw, user()) as c:
        sid = created(c)
        task = f"cap-{uuid.uuid4().hex[:6]}"
        fresh_llm.script(task, [*send("e1"), *send("e2"), *send("e3"), *send("e4"),
                                *send("e5")])
        start_stream_turn(c, fresh_llm, sid, task)

        def sent() -> int:
            return c.get(f"/api/sessions/{sid}/notifications").json()[0]["sent"]

        await until(lambda: sent() >= 5, "five notifications")
        tab = listen(gw, sid, {"X-Forwarded-User": c.headers["X-Forwarded-User"]})
        try:
            events = await (await tab.opened()).wait_for(3)
            await asyncio.sleep(0.5)
            assert [e["message"] for e in tab.events][:3] == ["e3", "e4", "e5"]
            assert [e["id"] for e in events][:3] == [3, 4, 5]  # numbering goes on
        finally:
            await tab.close()
            c.delete(f"/api/sessions/{sid}")


def test_long_conversation_is_cut_to_the_context_limit(ray_address: str,
                                                       fresh_llm: OpenAIServer,
                                                       tmp_path: Path) -> None:
    limit = 4000
    with bounded(ray_address, fresh_llm, tmp_path, max_context_tokens=limit) as gw, \
            as_user(gw, user()) as c:
        sid = created(c)
        for i in range(100):  # 200 messages, a tool-call group every tenth turn
            if i % 10 == 5:
                marker = f"tools-{uuid.uuid4().hex[:6]}"
                fresh_llm.script(marker, [ToolCalls([Call("list_image_files", {}),
                                                     Call("list_detection_files", {})])])
                content = f"turn {i} {marker} " + "x" * 80
            else:
                content = f"turn {i} " + "y" * 120
            assert c.post(f"/api/sessions/{sid}/messages",
                          json={"content": content}).status_code == 200
        stored = c.get(f"/api/sessions/{sid}/messages").json()
        assert len(stored) >= 200
        sent = fresh_llm.requests[-1]
        messages = sent["messages"]
        assert messages[0]["role"] == "system"
        assert messages[1]["role"] == "user"
        assert messages[-1]["content"].startswith("turn 99 ")
        assert_valid_conversation(messages)
        assert len(messages) < len(stored)
        weight = len(json.dumps(messages)) + len(json.dumps(sent.get("tools", [])))
        assert weight / 4 <= limit * 1.05, weight / 4
        assert len(c.get(f"/api/sessions/{sid}/messages").json()) == len(stored)  # all kept


def test_serve_refuses_an_open_address_without_llmcam_auth(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMCAM_", "RAY_ADDRESS"))}
    env["LLMCAM_DATA"] = str(tmp_path)
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--host", "0.0.0.0",
                           "--port", "9"], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "LLMCAM_AUTH" in lines[0], done.stderr
