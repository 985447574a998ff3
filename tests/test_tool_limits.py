"""Limits on what one model message can make a session do: parallel tool calls."""

from __future__ import annotations

import pytest

from testing.standins import Call, ToolCalls
from tests.helpers import Gateway, Gateways, new_session


@pytest.fixture(scope="module")
def limited(gateways: Gateways) -> Gateway:
    return gateways(max_tool_calls=3)


def test_calls_past_the_limit_are_refused_and_answered(limited: Gateway, fresh_llm) -> None:
    calls = [Call("add_numbers", {"a": i, "b": 1}) for i in range(5)]
    fresh_llm.script("many calls", [
        ToolCalls([Call("add_function_tools", {
            "service_name": "maths", "function_names": ["tests.sample_tools.add_numbers"]})]),
        ToolCalls(calls)])
    with limited.client() as c:
        sid = new_session(c)
        response = c.post(f"/api/sessions/{sid}/messages", json={"content": "many calls"})
        assert response.status_code == 200, response.text
        tools = [m for m in response.json()["messages"] if m["role"] == "tool"]
    # every call of the message has its result (a valid conversation), in order
    assert [m["tool_call_id"] for m in tools[1:]] == [call.id for call in calls]
    assert [m["content"] for m in tools[1:4]] == ["1", "2", "3"]
    for refused in tools[4:]:
        assert "at most 3 tools" in refused["content"], refused
    # what the model is sent next is a valid conversation: each call answered once
    last = fresh_llm.requests[-1]["messages"]
    answered = [m["tool_call_id"] for m in last if m.get("role") == "tool"]
    assert answered[-5:] == [call.id for call in calls]
