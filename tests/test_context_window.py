"""`context_window.fit`: what one model call carries under `LLMCAM_MAX_CONTEXT_TOKENS` — the
system message, then the newest whole turns that fit (tool calls never split from their
results), the last turn always; the history itself untouched. Pure: no Ray, no server."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from actors.context_window import (
    Sizes,
    fit,
    message_tokens,
    prompt_tokens,
    text_tokens,
    tools_tokens,
)
from tests.helpers import SYSTEM, conversation

Message = dict[str, Any]
TOOLS = [{"type": "function", "function": {
    "name": "cap", "description": "Capture an image from a camera. " * 4,
    "parameters": {"type": "object", "properties": {"key": {"type": "string"}},
                   "required": ["key"]}}}]


def user_starts(messages: list[Message]) -> list[int]:
    return [i for i, m in enumerate(messages) if m["role"] == "user"]


def check(result: list[Message], messages: list[Message], limit: int,
          tools: list[dict[str, Any]] | None = None) -> int:
    """Everything `fit` promises; returns where the kept turns start in `messages`."""
    assert result[0] is messages[0] and result[0]["role"] == "system"
    assert result[1]["role"] == "user"  # a valid conversation: a user message comes first
    called: set[str] = set()
    for message in result:  # every result follows its call, every call is answered
        if message["role"] == "tool":
            assert message["tool_call_id"] in called
        called |= {c["id"] for c in message.get("tool_calls") or ()}
    answered = {m["tool_call_id"] for m in result if m["role"] == "tool"}
    assert called == answered
    # a suffix of whole turns, the newest one always
    start = len(messages) - (len(result) - 1)
    assert result[1:] == messages[start:] and start in user_starts(messages)
    last = user_starts(messages)[-1]
    assert start <= last
    if start < last:  # more than the last turn: then within the limit
        assert prompt_tokens(result, tools) <= limit
    earlier = [i for i in user_starts(messages) if i < start]
    if earlier:  # and the next older turn would not have fit
        assert prompt_tokens([messages[0], *messages[earlier[-1]:]], tools) > limit
    return start


def test_a_long_conversation_is_cut_to_whole_newest_turns_within_the_limit() -> None:
    messages = conversation(200)
    assert len(messages) >= 200
    before = copy.deepcopy(messages)
    total = prompt_tokens(messages, TOOLS)
    starts = []
    for limit in (1, 300, 1000, 3000, 6000, total // 2, total - 1):
        result = fit(messages, limit, TOOLS)
        starts.append(check(result, messages, limit, TOOLS))
        assert result is not messages
    assert starts == sorted(starts, reverse=True)  # more room, more (older) turns
    assert starts[0] == user_starts(messages)[-1] and starts[-1] > 1
    assert messages == before  # the stored history is not changed
    assert fit(messages, total, TOOLS) == messages  # everything fits: everything goes
    assert fit(messages, None) == messages and fit(messages, 0) == messages
    assert fit(messages, None) is not messages


def test_the_tool_schemas_count_against_the_limit() -> None:
    messages = conversation(200)
    limit = 4000
    without = fit(messages, limit)
    big_tools = TOOLS * 20
    with_tools = fit(messages, limit, big_tools)
    check(without, messages, limit)
    check(with_tools, messages, limit, big_tools)
    assert len(with_tools) < len(without)
    assert tools_tokens(big_tools) == text_tokens(json.dumps(big_tools, ensure_ascii=False))


def test_the_last_turn_is_kept_even_when_it_alone_is_over_the_limit() -> None:
    messages = conversation(60)
    calls = [{"id": "big", "type": "function", "function": {"name": "cap", "arguments": "{}"}}]
    messages += [{"role": "assistant", "content": None, "tool_calls": calls},
                 {"role": "tool", "tool_call_id": "big", "content": "x" * 40_000}]
    result = fit(messages, 500, TOOLS)
    assert result == [messages[0], *messages[user_starts(messages)[-1]:]]
    check(result, messages, 500, TOOLS)


def test_leading_system_messages_stay_and_a_preamble_goes_with_the_oldest_turn() -> None:
    turns = conversation(40)
    messages = [turns[0], {"role": "system", "content": "Second system message."},
                {"role": "assistant", "content": "Hello! " * 50}, *turns[1:]]
    result = fit(messages, 800)
    assert result[:2] == messages[:2] and result[2]["role"] == "user"
    assert prompt_tokens(result) <= 800
    assert fit(messages, prompt_tokens(messages)) == messages
    only_system = [SYSTEM, {"role": "system", "content": "x" * 9000}]
    assert fit(only_system, 10) == only_system


def test_results_answering_a_call_that_was_left_out_go_with_it() -> None:
    """A repair may add a result after later messages: it never travels without its call."""
    calls = [{"id": "old", "type": "function", "function": {"name": "cap", "arguments": "{}"}}]
    messages = [SYSTEM, {"role": "user", "content": "first " * 400},
                {"role": "assistant", "content": None, "tool_calls": calls},
                {"role": "user", "content": "second"},
                {"role": "tool", "tool_call_id": "old", "content": "late"},
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": "third"}]
    result = fit(messages, 200)
    assert [m["role"] for m in result] == ["system", "user", "assistant", "user"]
    assert all(m["role"] != "tool" for m in result)
    assert fit(messages, 10_000) == messages


def test_the_estimate_is_four_characters_a_token_and_an_image_is_not_its_base64() -> None:
    message = {"role": "user", "content": "x" * 100}
    assert message_tokens(message) == text_tokens(json.dumps(message)) == -(-len(
        json.dumps(message)) // 4)
    image = {"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + "A" * 400_000}}]}
    assert 700 < message_tokens(image) < 1000
    assert prompt_tokens([message, image], TOOLS) == (
        message_tokens(message) + message_tokens(image) + tools_tokens(TOOLS))


@pytest.mark.parametrize("size", [200, 2000])
def test_a_turns_size_cache_gives_the_same_cut(size: int) -> None:
    """A turn's later rounds reuse the sizes of its first (only new messages are sized); the
    cut is the same as without the cache. (How fast `fit` is: benchmarks, not here.)"""
    messages = conversation(size)
    sizes: Sizes = {}
    first = fit(messages, 32_000, TOOLS, sizes=sizes)
    assert fit(messages, 32_000, TOOLS, sizes=sizes) == first == fit(messages, 32_000, TOOLS)
    messages.append({"role": "assistant", "content": "a new round"})
    assert fit(messages, 32_000, TOOLS, sizes=sizes) == fit(messages, 32_000, TOOLS)
