"""The pure parts of streaming: `merge` of a model's streamed deltas, `TurnLog` (every reader
sees the same tokens), the tool-schema cache and the token count without usage. No Ray, no
server (tests/test_streaming.py has the end-to-end half)."""

from __future__ import annotations

import asyncio
from typing import Any

from actors.llm import merge
from actors.schema import function_tool
from actors.session.turn_log import TurnLog
from actors.turn_loop import SchemaCache
from tests.helpers import tool_call_delta


def test_merge_joins_text_and_each_tool_calls_pieces() -> None:
    deltas = [{"content": "Let "}, {"content": "me look."},
              {"tool_calls": [tool_call_delta(0, "c1", "cap", "")]},
              {"tool_calls": [tool_call_delta(0, None, None, '{"key":')]},
              {"tool_calls": [tool_call_delta(0, None, None, '"Porvoo"}')]},
              {"tool_calls": [tool_call_delta(1, "c2", "list_image_files", "{}")]}]
    assert merge(deltas) == [{"content": "Let me look.", "tool_calls": [
        tool_call_delta(0, "c1", "cap", '{"key":"Porvoo"}'),
        tool_call_delta(1, "c2", "list_image_files", "{}")]}]
    assert deltas[2]["tool_calls"][0]["arguments"] == ""  # the input is left as it was


def test_merge_never_reorders_text_and_tool_calls_or_errors() -> None:
    deltas = [{"tool_calls": [tool_call_delta(0, "c1", "f", "{}")]}, {"content": "after"},
              {"content": " the call"}, {"error": "the LLM backend failed: x"}]
    assert merge(deltas) == [{"tool_calls": [tool_call_delta(0, "c1", "f", "{}")]},
                             {"content": "after the call"}, {"error": "the LLM backend failed: x"}]
    assert merge([]) == []


async def test_tokens_no_reader_took_yet_join_and_every_reader_sees_the_same() -> None:
    turn = TurnLog("t")
    live: list[dict[str, Any]] = []

    async def read(into: list[dict[str, Any]]) -> None:
        async for item in turn.follow():
            into.append(item)

    reader = asyncio.create_task(read(live))
    for k in range(50):
        turn.add({"event": "token", "data": {"text": f"{k} "}})
        if k % 7 == 0:
            await asyncio.sleep(0)  # the reader runs now and then: runs of various lengths
        if k == 20:
            turn.add({"event": "tool_call", "data": {"name": "f", "arguments": "{}"}})
    turn.add({"event": "done", "data": {"reply": "x"}})
    turn.finish()
    await reader
    late: list[dict[str, Any]] = []
    await read(late)  # a reloaded page replays the log from its start
    assert late == live
    words = [e["data"]["text"] for e in live if e["event"] == "token"]
    assert "".join(words) == "".join(f"{k} " for k in range(50))
    assert 2 < len(words) < 50
    assert [e["event"] for e in live].index("tool_call") < len(live) - 1
    assert live[-1]["event"] == "done"


def test_the_schema_list_is_kept_while_the_tools_are_the_same() -> None:
    def one(x: int) -> str:
        """One."""
        return ""

    def two(y: str) -> str:
        """Two."""
        return ""

    a, b = function_tool(one, takes_context=False), function_tool(two, takes_context=False)
    cache = SchemaCache()
    first = cache([a, b])
    assert first == [a.schema(), b.schema()]
    assert cache([a, b]) is first  # same tools: the very same list
    assert cache([a]) == [a.schema()]  # a service removed: built again


def test_merge_keeps_usage_a_chunk_of_its_own_and_last() -> None:
    usage = {"usage": {"prompt_tokens": 12, "completion_tokens": 3}}
    deltas = [{"content": "Hel"}, {"content": "lo"}, usage]
    assert merge(deltas) == [{"content": "Hello"}, usage]
    assert merge([{"tool_calls": [tool_call_delta(0, "c1", "f", "{}")]}, usage]) == [
        {"tool_calls": [tool_call_delta(0, "c1", "f", "{}")]}, usage]


async def test_a_server_that_reports_no_usage_is_counted_at_four_characters_a_token() -> None:
    from actors.context_window import prompt_tokens, text_tokens
    from actors.turn_loop import run_turn

    class Quiet:  # an LLM whose server reports no usage
        def __init__(self) -> None:
            self.requests: list[dict[str, Any]] = []

        async def stream(self, request: dict[str, Any]):
            self.requests.append(request)
            yield {"content": "twelve chars"}

    quiet = Quiet()
    history = [{"role": "system", "content": "s"}, {"role": "user", "content": "hi " * 40}]
    seen = [item async for item in run_turn(quiet, "m", list(history), list, None)]
    usage = next(e["data"] for e in seen if e["event"] == "usage")
    assert usage == {"prompt_tokens": prompt_tokens(history), "completion_tokens":
                     text_tokens("twelve chars"), "estimated": True}
    assert quiet.requests[0]["messages"][:2] == history and "tools" not in quiet.requests[0]
