"""Confirming a tool call (API.md): a tool in LLMCAM_CONFIRM_TOOLS runs only after the user
allows that call; through the POST's SSE stream, through GET /turn while a JSON POST waits,
declined, timed out, an unknown call, and never inside a notification stream."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from actors.confirm import DECLINED
from testing.standins import Call, OpenAIServer, ToolCalls
from tests.helpers import Gateway, Gateways, new_session, send, started_ids, stream_requests


@pytest.fixture(scope="module")
def gw(gateways: Gateways) -> Gateway:
    return gateways(spare_sessions=0, confirm_seconds=3, confirm_tools=[
        "start_notification_stream", "add_function_tools", "send_notification"])


def sse(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    name = ""
    for line in response.iter_lines():
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            yield name, json.loads(line[5:])


def script_stream_start(llm: OpenAIServer, task: str) -> str:
    marker = f"start-{uuid.uuid4().hex[:8]}"
    llm.script(marker, [ToolCalls([Call("start_notification_stream",
                                        {"task": task, "interval_seconds": 1})])])
    return f"watch it ({marker})"


def test_allowed_through_the_stream_runs_the_tool(gw: Gateway, fresh_llm: OpenAIServer) -> None:
    task = f"harbour-{uuid.uuid4().hex[:6]}"
    fresh_llm.script(task, send("a boat"))
    with gw.client() as c:
        sid = new_session(c)
        seen: list[str] = []
        with c.stream("POST", f"/api/sessions/{sid}/messages",
                      json={"content": script_stream_start(fresh_llm, task)},
                      headers={"Accept": "text/event-stream"}) as response:
            for name, data in sse(response):
                seen.append(name)
                if name == "confirm":
                    assert data["name"] == "start_notification_stream"
                    assert json.loads(data["arguments"])["task"] == task
                    answer = c.post(f"/api/sessions/{sid}/turn/confirm",
                                    json={"call_id": data["call_id"], "allow": True})
                    assert answer.status_code == 204, answer.text
                    again = c.post(f"/api/sessions/{sid}/turn/confirm",
                                   json={"call_id": data["call_id"], "allow": False})
                    assert again.status_code == 404  # answered already
                if name == "tool_result":
                    assert data["content"].startswith("Notification stream started with ID")
                if name in ("done", "error"):
                    break
        assert seen.index("tool_call") < seen.index("confirm") < seen.index("tool_result")
        assert seen[-1] == "done"
        streams = c.get(f"/api/sessions/{sid}/notifications").json()
        assert [s["status"] for s in streams] == ["running"]
        # inside the stream, send_notification (also in the list) is never asked about
        deadline = time.monotonic() + 60
        while c.get(f"/api/sessions/{sid}/notifications").json()[0]["sent"] < 1:
            assert time.monotonic() < deadline, "the stream's call waited for a confirmation"
            time.sleep(0.2)
        assert c.delete(f"/api/sessions/{sid}").status_code == 204


def watch_and_answer(gw: Gateway, sid: str, allow: bool, out: dict[str, Any]) -> None:
    """A second tab: watch the turn in flight (GET /turn) and answer its confirm."""
    deadline = time.monotonic() + 60
    with gw.client() as c:
        while time.monotonic() < deadline:
            with c.stream("GET", f"/api/sessions/{sid}/turn") as response:
                if response.status_code == 204:
                    time.sleep(0.05)
                    continue
                for name, data in sse(response):
                    if name == "confirm":
                        out["confirm"] = data
                        out["status"] = c.post(f"/api/sessions/{sid}/turn/confirm",
                                               json={"call_id": data["call_id"],
                                                     "allow": allow}).status_code
                        return


def test_declined_from_another_tab_while_a_json_post_waits(gw: Gateway,
                                                           fresh_llm: OpenAIServer) -> None:
    with gw.client() as c:
        sid = new_session(c)
        seen: dict[str, Any] = {}
        tab = threading.Thread(target=watch_and_answer, args=(gw, sid, False, seen))
        tab.start()
        turn = c.post(f"/api/sessions/{sid}/messages",
                      json={"content": script_stream_start(fresh_llm, "declined")})
        tab.join(60)
        assert turn.status_code == 200, turn.text
        assert seen["status"] == 204 and seen["confirm"]["name"] == "start_notification_stream"
        results = [m for m in turn.json()["messages"] if m["role"] == "tool"]
        assert [m["content"] for m in results] == [DECLINED]
        assert started_ids(turn.json()) == []
        assert c.get(f"/api/sessions/{sid}/notifications").json() == []  # nothing started


def test_no_answer_in_time_is_declined(gw: Gateway, fresh_llm: OpenAIServer) -> None:
    marker = f"fn-{uuid.uuid4().hex[:6]}"
    fresh_llm.script(marker, [ToolCalls([Call("add_function_tools", {
        "service_name": "sample", "function_names": ["tests.sample_tools.add_numbers"]})])])
    with gw.client() as c:
        sid = new_session(c)
        started = time.monotonic()
        turn = c.post(f"/api/sessions/{sid}/messages", json={"content": f"add ({marker})"})
        assert turn.status_code == 200, turn.text
        assert time.monotonic() - started >= 3  # LLMCAM_CONFIRM_SECONDS
        assert [m["content"] for m in turn.json()["messages"]
                if m["role"] == "tool"] == [DECLINED]
        names = {t["function"]["name"] for t in c.get(f"/api/sessions/{sid}/tools").json()}
        assert "add_numbers" not in names  # the service was not added
        # the model was told, and the conversation goes on
        assert c.post(f"/api/sessions/{sid}/messages",
                      json={"content": "ok"}).status_code == 200


def test_answering_a_call_that_does_not_wait_is_404(gw: Gateway) -> None:
    with gw.client() as c:
        sid = new_session(c)
        response = c.post(f"/api/sessions/{sid}/turn/confirm",
                          json={"call_id": "call_nothing", "allow": True})
        assert response.status_code == 404 and response.json()["detail"]
        assert c.post(f"/api/sessions/{sid}/turn/confirm",
                      json={"call_id": "x"}).status_code == 422
        assert c.post("/api/sessions/nope/turn/confirm",
                      json={"call_id": "x", "allow": True}).status_code == 404


def test_calls_of_other_tools_are_not_asked(gw: Gateway, fresh_llm: OpenAIServer,
                                            tmp_path: Path) -> None:
    marker = f"list-{uuid.uuid4().hex[:6]}"
    fresh_llm.script(marker, [ToolCalls([Call("list_image_files", {})])])
    with gw.client() as c:
        sid = new_session(c)
        turn = c.post(f"/api/sessions/{sid}/messages", json={"content": f"list ({marker})"})
        assert turn.status_code == 200
        assert DECLINED not in [m["content"] for m in turn.json()["messages"]]
    assert stream_requests(fresh_llm, "none") == []
