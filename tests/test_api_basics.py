"""The session and message parts of the HTTP contract, as a browser or script sees them."""

from __future__ import annotations

import json

import httpx

from testing.standins import Call, Text, ToolCalls
from tests.helpers import Gateway, new_session


def test_create_session_sets_cookie_and_reads_back(client: httpx.Client) -> None:
    response = client.post("/api/sessions")
    assert response.status_code == 201
    sid = response.json()["session_id"]
    assert len(sid) >= 22  # at least 128 random bits, url-safe
    cookie = response.headers["set-cookie"]
    assert f"llmcam_session={sid}" in cookie and "HttpOnly" in cookie
    assert "samesite=lax" in cookie.lower()
    current = client.get("/api/sessions/current")  # httpx keeps the cookie
    assert current.status_code == 200 and current.json()["session_id"] == sid
    info = client.get(f"/api/sessions/{sid}").json()
    assert info["message_count"] == 0 and info["notifications"] == []
    assert info["created_at"] > 0


def test_current_without_cookie_is_404(gateway: Gateway) -> None:
    with gateway.client() as c:
        response = c.get("/api/sessions/current")
    assert response.status_code == 404 and response.json()["detail"]


def test_chat_json_turn(client: httpx.Client, fresh_llm) -> None:
    sid = new_session(client)
    response = client.post(f"/api/sessions/{sid}/messages", json={"content": "hello there"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["reply"] == "echo: hello there"
    assert [m["role"] for m in body["messages"]] == ["user", "assistant"]
    assert body["messages"][0]["content"] == "hello there"
    history = client.get(f"/api/sessions/{sid}/messages").json()
    assert [m["content"] for m in history] == ["hello there", "echo: hello there"]
    assert fresh_llm.requests[-1]["model"] == "test-model"


def test_tool_call_runs_and_result_goes_back(client: httpx.Client, fresh_llm) -> None:
    sid = new_session(client)
    fresh_llm.script("list my pictures", [ToolCalls([Call("list_image_files", {})])])
    body = client.post(f"/api/sessions/{sid}/messages",
                       json={"content": "list my pictures"}).json()
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["user", "assistant", "tool", "assistant"]
    assert body["messages"][1]["tool_calls"][0]["function"]["name"] == "list_image_files"
    assert "No capture files" in body["messages"][2]["content"]
    assert body["reply"].startswith("done: No capture files")
    # the model got the tool result in its second request
    assert fresh_llm.requests[-1]["messages"][-1]["role"] == "tool"


def test_sse_event_sequence(client: httpx.Client, fresh_llm) -> None:
    sid = new_session(client)
    fresh_llm.script("stream please", [ToolCalls([Call("list_detection_files", {})]),
                                       Text("all good here")])
    events: list[tuple[str, dict]] = []
    with client.stream("POST", f"/api/sessions/{sid}/messages",
                       json={"content": "stream please"},
                       headers={"Accept": "text/event-stream"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in response.iter_lines():
            if line.startswith("event:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and name:
                events.append((name, json.loads(line.split(":", 1)[1])))
    names = [n for n, _ in events]
    assert names[0] == "tool_call" and names[1] == "tool_result"
    assert names[-1] == "done" and events[-1][1] == {"reply": "all good here"}
    # the text comes as tokens (a zero-latency model's words arrive together: coalesced into
    # one chunk; tests/test_streaming.py checks that a slow reply streams word by word)
    assert "".join(d["text"] for n, d in events if n == "token") == "all good here"
    assert "".join(d["text"] for n, d in events if n == "token") == "all good here"
    assert events[0][1]["name"] == "list_detection_files"


def test_tools_listing_is_openai_schema(client: httpx.Client) -> None:
    sid = new_session(client)
    tools = client.get(f"/api/sessions/{sid}/tools").json()
    names = {t["function"]["name"] for t in tools}
    assert {"add_api_tools", "add_function_tools", "remove_tools", "list_image_files",
            "start_notification_stream", "stop_notification"} <= names
    assert "execute_bash_command" not in names  # the shell is off unless enabled
    for tool in tools:
        assert set(tool) == {"type", "function"}
        assert set(tool["function"]) == {"name", "description", "parameters"}
        assert tool["function"]["parameters"]["type"] == "object"


def test_delete_session_forgets_everything(client: httpx.Client) -> None:
    sid = new_session(client)
    assert client.post(f"/api/sessions/{sid}/messages", json={"content": "x"}).is_success
    assert client.delete(f"/api/sessions/{sid}").status_code == 204
    for path in ("", "/messages", "/tools", "/files", "/notifications"):
        assert client.get(f"/api/sessions/{sid}{path}").status_code == 404
    assert client.post(f"/api/sessions/{sid}/messages", json={"content": "y"}).status_code == 404
    assert client.get("/api/sessions/current").status_code == 404  # its cookie names nothing now
    assert client.delete(f"/api/sessions/{sid}").status_code == 404


def test_health_and_docs(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    schema = client.get("/openapi.json").json()
    assert "/api/sessions/{sid}/messages" in schema["paths"]
    assert client.get("/docs").status_code == 200
