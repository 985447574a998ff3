"""History survives a killed actor (also mid-turn), a restarted gateway, and two gateways."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
import ray

from actors.session.names import NAMESPACE, actor_name
from testing.standins import Call, ToolCalls
from tests.helpers import Gateway, ServeProcess, make_settings, new_session


def session_actor(sid: str):
    return ray.get_actor(actor_name(sid), namespace=NAMESPACE)


def test_actor_name_hides_the_session_id(client: httpx.Client) -> None:
    sid = new_session(client)
    assert client.get(f"/api/sessions/{sid}").is_success  # live now, whether or not it was
    names = [n["name"] for n in ray.util.list_named_actors(all_namespaces=True)
             if n["namespace"] == NAMESPACE]
    assert actor_name(sid) in names  # found by its documented name
    assert not any(sid in name for name in names)
    assert len(actor_name(sid)) == len("session:") + 32


def test_history_survives_kill(client: httpx.Client, fresh_llm) -> None:
    sid = new_session(client)
    for text in ("first", "second"):
        assert client.post(f"/api/sessions/{sid}/messages", json={"content": text}).is_success
    fresh_llm.script("adds-a-service", [ToolCalls([Call("add_function_tools", {
        "service_name": "maths", "function_names": ["tests.sample_tools.add_numbers"]})])])
    assert client.post(f"/api/sessions/{sid}/messages",
                       json={"content": "adds-a-service"}).is_success
    before = client.get(f"/api/sessions/{sid}/messages").json()
    ray.kill(session_actor(sid), no_restart=True)
    after = client.get(f"/api/sessions/{sid}/messages").json()
    assert after == before
    names = {t["function"]["name"] for t in client.get(f"/api/sessions/{sid}/tools").json()}
    assert "add_numbers" in names  # the added service came back too
    reply = client.post(f"/api/sessions/{sid}/messages", json={"content": "third"})
    assert reply.json()["reply"] == "echo: third"
    assert client.get(f"/api/sessions/{sid}").json()["message_count"] == len(before) + 2


async def test_kill_during_a_turn_records_the_message_once(gateway: Gateway, fresh_llm) -> None:
    async with gateway.async_client() as c:
        sid = (await c.post("/api/sessions")).json()["session_id"]
        fresh_llm.delay = 3.0  # the model is slow: the turn is in flight when we kill
        try:
            post = asyncio.create_task(
                c.post(f"/api/sessions/{sid}/messages", json={"content": "killed mid-turn"}))
            deadline = time.monotonic() + 20
            while not any("killed mid-turn" in str(r["messages"]) for r in fresh_llm.requests):
                assert time.monotonic() < deadline, "the turn never reached the model"
                await asyncio.sleep(0.05)
            ray.kill(session_actor(sid), no_restart=True)
            response = await post
        finally:
            fresh_llm.delay = 0
        assert response.status_code == 200, response.text
        assert response.json()["reply"] == "echo: killed mid-turn"
        history = (await c.get(f"/api/sessions/{sid}/messages")).json()
        users = [m for m in history if m["role"] == "user"]
        assert [m["content"] for m in users] == ["killed mid-turn"]
        assert history[-1] == {"role": "assistant", "content": "echo: killed mid-turn"}


@pytest.fixture(scope="module")
def shared_settings(tmp_path_factory: pytest.TempPathFactory, llm):
    return make_settings(tmp_path_factory.mktemp("shared"), llm)


def test_gateway_restart_and_two_gateways(ray_address: str, shared_settings,
                                          tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    first = ServeProcess(ray_address, shared_settings, log).wait_ready()
    try:
        with httpx.Client(base_url=first.url, timeout=60) as c:
            sid = new_session(c)
            assert c.post(f"/api/sessions/{sid}/messages", json={"content": "before"}).is_success
        second = ServeProcess(ray_address, shared_settings, log).wait_ready()
        try:  # two gateways, one session
            with httpx.Client(base_url=second.url, timeout=60) as c2:
                r = c2.post(f"/api/sessions/{sid}/messages", json={"content": "via second"})
                assert r.json()["reply"] == "echo: via second"
            with httpx.Client(base_url=first.url, timeout=60) as c:
                texts = [m["content"] for m in c.get(f"/api/sessions/{sid}/messages").json()]
                assert texts == ["before", "echo: before", "via second", "echo: via second"]
        finally:
            assert second.stop() == 0
    finally:
        assert first.stop() == 0  # SIGTERM: a clean stop
    restarted = ServeProcess(ray_address, shared_settings, log).wait_ready()
    try:
        with httpx.Client(base_url=restarted.url, timeout=60) as c:
            texts = [m["content"] for m in c.get(f"/api/sessions/{sid}/messages").json()]
            assert texts[-1] == "echo: via second" and len(texts) == 4
    finally:
        restarted.stop()
    assert sid not in log.read_text()  # the capability is in no log line

