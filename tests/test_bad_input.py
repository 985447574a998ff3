"""Bad input gets a clear error and loses nothing."""

from __future__ import annotations

import json

import httpx
import pytest

from testing.standins import Call, Text, ToolCalls
from tests.helpers import new_session

UNKNOWN = "0123456789abcdef0123456789abcdef0123456789a"


@pytest.mark.parametrize("method,path", [
    ("GET", "/api/sessions/{x}"), ("DELETE", "/api/sessions/{x}"),
    ("GET", "/api/sessions/{x}/messages"), ("GET", "/api/sessions/{x}/tools"),
    ("GET", "/api/sessions/{x}/notifications"), ("GET", "/api/sessions/{x}/files"),
    ("GET", "/api/sessions/{x}/files/a.jpg"), ("GET", "/api/sessions/{x}/events"),
    ("DELETE", "/api/sessions/{x}/notifications/abc"),
])
def test_unknown_session_is_404(client: httpx.Client, method: str, path: str) -> None:
    response = client.request(method, path.format(x=UNKNOWN))
    assert response.status_code == 404
    assert isinstance(response.json()["detail"], str)


def test_post_to_unknown_session_is_404(client: httpx.Client) -> None:
    response = client.post(f"/api/sessions/{UNKNOWN}/messages", json={"content": "hi"})
    assert response.status_code == 404 and response.json()["detail"] == "unknown session"


@pytest.mark.parametrize("body", [
    b"{not json", b'{"content": ""}', b'{"content": 5}', b"{}", b'{"text": "hi"}',
    json.dumps({"content": "x" * 32001}).encode(),
])
def test_malformed_message_is_422_and_nothing_recorded(client: httpx.Client,
                                                       body: bytes) -> None:
    sid = new_session(client)
    response = client.post(f"/api/sessions/{sid}/messages", content=body,
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"]
    assert client.get(f"/api/sessions/{sid}/messages").json() == []


def test_longest_message_is_accepted(client: httpx.Client) -> None:
    sid = new_session(client)
    response = client.post(f"/api/sessions/{sid}/messages", json={"content": "y" * 32000})
    assert response.status_code == 200


def test_huge_body_is_413(client: httpx.Client) -> None:
    sid = new_session(client)
    body = json.dumps({"content": "z" * (2 * 1024 * 1024)}).encode()
    response = client.post(f"/api/sessions/{sid}/messages", content=body,
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and "1 MB" in response.json()["detail"]

    def chunks():  # no Content-Length: refused while streaming in
        for _ in range(40):
            yield b"x" * 65536

    response = client.post(f"/api/sessions/{sid}/messages", content=chunks(),
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert client.get(f"/api/sessions/{sid}/messages").json() == []


def test_llm_down_is_502_and_message_kept(client: httpx.Client, fresh_llm) -> None:
    sid = new_session(client)
    fresh_llm.fail_all = 500
    try:
        response = client.post(f"/api/sessions/{sid}/messages", json={"content": "anyone there?"})
    finally:
        fresh_llm.fail_all = None
    assert response.status_code == 502
    assert "LLM" in response.json()["detail"]
    history = client.get(f"/api/sessions/{sid}/messages").json()
    assert history == [{"role": "user", "content": "anyone there?"}]
    # the session goes on, and the kept message is part of the next turn's context
    response = client.post(f"/api/sessions/{sid}/messages", json={"content": "now?"})
    assert response.status_code == 200
    sent = fresh_llm.requests[-1]["messages"]
    assert [m["content"] for m in sent if m["role"] == "user"] == ["anyone there?", "now?"]


def test_llm_down_over_sse_is_an_error_event(client: httpx.Client, fresh_llm) -> None:
    sid = new_session(client)
    fresh_llm.fail_all = 503
    try:
        with client.stream("POST", f"/api/sessions/{sid}/messages", json={"content": "sse?"},
                           headers={"Accept": "text/event-stream"}) as response:
            lines = list(response.iter_lines())
    finally:
        fresh_llm.fail_all = None
    assert "event: error" in lines
    data = json.loads(lines[lines.index("event: error") + 1].removeprefix("data:"))
    assert "LLM" in data["detail"]


def test_unreachable_llm_is_502(client: httpx.Client, gateway, ray_address, tmp_path) -> None:
    from tests.helpers import Gateway, make_settings

    class Nowhere:
        base_url = "http://127.0.0.1:9/v1"  # nothing listens on the discard port

    with Gateway(make_settings(tmp_path, Nowhere)) as gw, gw.client() as c:
        sid = new_session(c)
        response = c.post(f"/api/sessions/{sid}/messages", json={"content": "hello?"})
        assert response.status_code == 502
        assert c.get(f"/api/sessions/{sid}").json()["message_count"] == 1


def test_failing_and_mistyped_tool_calls_reach_the_model(client: httpx.Client, fresh_llm) -> None:
    sid = new_session(client)
    fresh_llm.script("bad tools", [
        ToolCalls([
            Call("add_function_tools", {"service_name": "m", "function_names": "not-a-list"}),
            Call("remove_tools", "{this is not json"),
            Call("no_such_tool", {}),
            Call("list_image_files", {"unexpected": 1}),
        ]),
        Text("recovered"),
    ])
    body = client.post(f"/api/sessions/{sid}/messages", json={"content": "bad tools"}).json()
    assert body["reply"] == "recovered"
    results = [m["content"] for m in body["messages"] if m["role"] == "tool"]
    assert len(results) == 4
    assert "invalid arguments for add_function_tools" in results[0]
    assert "function_names" in results[0]
    assert "not valid JSON" in results[1]
    assert "no tool named 'no_such_tool'" in results[2]
    assert "unexpected" in results[3]
    # the model saw each error as that call's result
    sent = fresh_llm.requests[-1]["messages"]
    assert [m["content"] for m in sent if m["role"] == "tool"] == results


def test_round_limit_ends_the_turn_clearly(client: httpx.Client, fresh_llm) -> None:
    sid = new_session(client)
    fresh_llm.script("loop forever", [ToolCalls([Call("list_image_files", {})])] * 15)
    body = client.post(f"/api/sessions/{sid}/messages", json={"content": "loop forever"}).json()
    assert "stopped after 10 rounds" in body["reply"]
    calls = [m for m in body["messages"] if m["role"] == "assistant" and m.get("tool_calls")]
    assert len(calls) == 10
