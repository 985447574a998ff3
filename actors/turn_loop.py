"""The function-calling loop: ask the model, run the tools it calls, until it answers.

Each turn is an async generator of events (`token`, `tool_call`, `tool_result`, `done`,
`error`); every message it adds comes out as a `messages` event before the next step relies
on it. After each model call's message comes an internal `usage` event (not sent to the page):
{"prompt_tokens", "completion_tokens", "estimated"}.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from pydantic import ValidationError

from actors.confirm import DECLINED, Confirmations
from actors.context_window import Sizes, fit
from actors.errors import LLMFailed
from actors.llm import LLM, call_usage
from actors.metrics import record
from actors.schema import Tool, validation_message

Event = dict[str, Any]
MAX_TOOL_RESULT = 20_000

__all__ = ["LLMFailed", "SchemaCache", "event", "repair", "run_tool", "run_turn"]


def event(kind: str, **data: Any) -> Event:
    return {"event": kind, "data": data}


async def run_tool(tool: Tool | None, name: str, raw_arguments: str, ctx: Any) -> str:
    """A tool's result, or the error as text for the model to read: the turn goes on."""
    if tool is None:
        return f"Error: there is no tool named {name!r}."
    try:
        arguments = json.loads(raw_arguments or "{}")
    except json.JSONDecodeError as exc:
        return f"Error: the arguments for {name} are not valid JSON ({exc.msg})."
    if not isinstance(arguments, dict):
        return f"Error: the arguments for {name} must be a JSON object."
    try:
        result = await tool.run(ctx, arguments)
    except ValidationError as exc:
        return f"Error: invalid arguments for {name}: {validation_message(exc)}"
    except Exception as exc:  # a failing tool must not end the turn
        return f"Error: {name} failed: {type(exc).__name__}: {exc}"
    if len(result) > MAX_TOOL_RESULT:
        result = result[:MAX_TOOL_RESULT] + "\n[output truncated]"
    return result


class SchemaCache:
    """The tool schemas sent with every round, built again only when the toolset changes (a
    service added or removed): the same tools give the very same list."""

    def __init__(self) -> None:
        self._tools: tuple[Tool, ...] = ()
        self._schemas: list[dict[str, Any]] = []

    def __call__(self, tools: list[Tool]) -> list[dict[str, Any]]:
        if len(tools) != len(self._tools) or any(
                a is not b for a, b in zip(tools, self._tools, strict=True)):
            self._tools = tuple(tools)
            self._schemas = [tool.schema() for tool in tools]
        return self._schemas


async def _complete(llm: LLM, model: str, messages: list[dict[str, Any]],
                    tools: list[dict[str, Any]]) -> AsyncIterator[Event | dict[str, Any]]:
    """Stream one completion: yields token events, then the assembled assistant message, then
    a `usage` event: the server's token counts, or where it reported none, about four
    characters a token (prompt: the request's messages and tools; completion: the reply's text
    and its tool calls' names and arguments). Both are recorded as `llmcam_llm_tokens`."""
    request: dict[str, Any] = {"model": model, "messages": messages}
    if tools:
        request["tools"] = tools
    content: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    reported: dict[str, int] | None = None
    async for chunk in llm.stream(request):
        if "usage" in chunk:
            reported = chunk["usage"]
            continue
        if chunk.get("content"):
            content.append(chunk["content"])
            yield event("token", text=chunk["content"])
        for part in chunk.get("tool_calls") or []:
            call = calls.setdefault(part["index"], {
                "id": "", "type": "function", "function": {"name": "", "arguments": ""}})
            call["id"] = part["id"] or call["id"]
            call["function"]["name"] += part["name"] or ""
            call["function"]["arguments"] += part["arguments"] or ""
    message: dict[str, Any] = {"role": "assistant", "content": "".join(content) or None}
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    yield message
    said = "".join([*content, *(c["function"]["name"] + c["function"]["arguments"]
                                for c in calls.values())])
    yield event("usage", **call_usage(reported, request, said))


async def run_turn(llm: LLM, model: str, history: list[dict[str, Any]],
                   tools: Callable[[], list[Tool]], ctx: Any,
                   max_rounds: int = 10, *, max_tool_calls: int = 8,
                   schemas: SchemaCache | None = None,
                   max_context_tokens: int | None = None,
                   confirmations: Confirmations | None = None) -> AsyncIterator[Event]:
    """Continue the conversation in `history` (which ends with the user's message).

    One way: each message the turn adds is yielded as a `messages` event before anything
    relies on it, and the caller journals it before it pulls the next event (a generator does
    not go on until asked), so nothing is said to the model, nor a tool run, on a message the
    store does not have. `history` is the turn's working context (it grows as it goes).

    At most `max_tool_calls` of one model message's calls run (a model could ask for
    hundreds at once); the others get a refusal as their result, so every call is answered
    and the history stays a valid conversation. `schemas` (one per session) keeps the tool
    schemas from one round and turn to the next while the toolset is unchanged. Rounds, tool
    calls, LLM failures and tokens are recorded as Ray metrics; each model call's tokens also
    come out as a `usage` event after its message.

    With `max_context_tokens` (None or 0: no limit) each call carries
    `context_window.fit(history, max_context_tokens, schemas)`: the oldest turns are left out
    of the request, `history` keeps everything. With `confirmations`, a call of a tool that
    needs the user's consent is announced as a `confirm` event and runs only once allowed."""
    schemas = schemas or SchemaCache()
    sizes: Sizes = {}  # each message's estimate, once per turn (history only grows)
    rounds = 0
    try:
        for _ in range(max_rounds):
            rounds += 1
            current = tools()
            toolset = {tool.name: tool for tool in current}
            if len(toolset) != len(current):  # a service's tool shadows a built-in one
                current = list(toolset.values())
            message: dict[str, Any] = {}
            try:
                schema_list = schemas(current)
                sent = (fit(history, max_context_tokens, schema_list, sizes=sizes)
                        if max_context_tokens else history)
                async for item in _complete(llm, model, sent, schema_list):
                    if "event" in item:
                        yield item
                    else:
                        message = item
            except LLMFailed:
                record("llm_errors")
                raise
            yield event("messages", messages=[message])
            history.append(message)
            calls = message.get("tool_calls") or []
            if not calls:
                yield event("done", reply=message.get("content") or "")
                return
            record("tool_calls", len(calls))
            async for item in _run_calls(calls, toolset, ctx, history, max_tool_calls,
                                         confirmations):
                yield item
    finally:
        record("turn_rounds", rounds)
    final = (f"I stopped after {max_rounds} rounds of tool calls without reaching an answer. "
             "Please narrow the request or try again.")
    yield event("messages", messages=[{"role": "assistant", "content": final}])
    yield event("done", reply=final)


async def _run_calls(calls: list[dict[str, Any]], toolset: dict[str, Tool], ctx: Any,
                     history: list[dict[str, Any]], max_tool_calls: int,
                     confirmations: Confirmations | None = None) -> AsyncIterator[Event]:
    """One round's tool calls: announced, confirmed where they must be (one at a time), run
    together, journaled, then their results."""
    for call in calls:
        yield event("tool_call", name=call["function"]["name"],
                    arguments=call["function"]["arguments"])
    declined: set[str] = set()
    for call in calls[:max_tool_calls]:
        name = call["function"]["name"]
        if confirmations is None or not confirmations.needed(name) or name not in toolset:
            continue
        answer = confirmations.ask(call["id"])
        yield event("confirm", call_id=call["id"], name=name,
                    arguments=call["function"]["arguments"])
        if not await confirmations.wait(call["id"], answer):
            declined.add(call["id"])

    async def run(call: dict[str, Any]) -> str:
        if call["id"] in declined:
            return DECLINED
        name = call["function"]["name"]
        return await run_tool(toolset.get(name), name, call["function"]["arguments"], ctx)

    refused = [f"Error: not run: one message may call at most {max_tool_calls} tools at "
               "once; call the rest in a later message." for _ in calls[max_tool_calls:]]
    results = [*await asyncio.gather(*(run(c) for c in calls[:max_tool_calls])), *refused]
    replies = [{"role": "tool", "tool_call_id": c["id"], "content": r}
               for c, r in zip(calls, results, strict=True)]
    yield event("messages", messages=replies)
    history.extend(replies)
    for call, result in zip(calls, results, strict=True):
        yield event("tool_result", name=call["function"]["name"], content=result)


def repair(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tool results for calls a dead actor never answered, so the history stays valid."""
    answered = {m.get("tool_call_id") for m in history if m.get("role") == "tool"}
    missing: list[dict[str, Any]] = []
    for message in history:
        for call in message.get("tool_calls") or []:
            if call["id"] not in answered:
                missing.append({"role": "tool", "tool_call_id": call["id"],
                                "content": "Error: interrupted before this tool finished."})
    return missing
