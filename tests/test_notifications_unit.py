"""A stream's context and interval rules, pure (tests/test_notifications.py runs streams end to
end)."""

from __future__ import annotations

from actors.session.streams import stream_context, stream_interval
from tests.helpers import (
    assert_valid_conversation,
)


def test_stream_context_and_interval_rules() -> None:
    """Pure rules: the child's context answers every open call (its own with its ID), and the
    interval is the request or the default, never under a second."""
    history = [
        {"role": "user", "content": "watch both"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {
                "name": "start_notification_stream", "arguments": '{"task": "b\\u00e5ts"}'}},
            {"id": "c2", "type": "function", "function": {
                "name": "start_notification_stream", "arguments": '{"task": "cars"}'}}]},
    ]
    context = stream_context(history, "n-1", "båts")
    assert context[0]["role"] == "system" and "n-1" in context[0]["content"]
    assert "båts" in context[0]["content"]
    replies = {m["tool_call_id"]: m["content"] for m in context if m["role"] == "tool"}
    assert replies["c1"] == "Notification stream started with ID n-1"
    assert "not available" in replies["c2"]
    assert_valid_conversation([*context, {"role": "user", "content": "Round 1"}])
    assert history[1]["tool_calls"][0]["id"] == "c1" and len(history) == 2  # not changed
    assert stream_interval(None, 30) == 30 and stream_interval(5, 30) == 5
    assert stream_interval(0, 30) == 1 and stream_interval(-3, 30) == 1
    assert stream_interval(float("nan"), 30) == 30
