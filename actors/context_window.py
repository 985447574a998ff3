"""What one model call carries: the history cut to fit `LLMCAM_MAX_CONTEXT_TOKENS`, and the
estimate of tokens used for that (and for a call's costs where the server reports none).

The estimate is about four characters a token of each message's JSON (an image part counts as
`IMAGE_TOKENS`, not as its base64). `fit` leaves out the oldest turns first (a turn runs from a
user message up to the next one), never the system message(s) at the start, never one half of a
tool call and its results, and always keeps the last turn; the history itself is not changed.

`fit` walks from the newest message back and stops at the first turn that does not fit, so its
cost follows what is sent, not how long the history is; each message is sized once per call, and
once per turn with a `Sizes` cache that the turn keeps from one round to the next.
"""

from __future__ import annotations

import json
from typing import Any

CHARS_PER_TOKEN = 4
IMAGE_TOKENS = 765  # what OpenAI bills for a 1024x1024 image at detail "high"
LEADING_ROLES = frozenset({"system", "developer"})

Message = dict[str, Any]
Sizes = dict[int, tuple[Message, int]]  # id(message) -> (the message, its tokens)

__all__ = ["Sizes", "fit", "message_tokens", "prompt_tokens", "text_tokens", "tools_tokens"]

_dumps = json.JSONEncoder(ensure_ascii=False, default=str).encode  # one encoder, made once


def text_tokens(text: str | None) -> int:
    """About four characters a token (rounded up)."""
    return -(-len(text or "") // CHARS_PER_TOKEN)


def message_tokens(message: Message) -> int:
    """One message's estimate: its JSON, with image parts at `IMAGE_TOKENS` each."""
    content = message.get("content")
    if isinstance(content, list):
        images = [p for p in content if isinstance(p, dict) and p.get("type") == "image_url"]
        if images:
            rest = {**message, "content": [p for p in content if p not in images]}
            return text_tokens(_dumps(rest)) + IMAGE_TOKENS * len(images)
    return text_tokens(_dumps(message))


_tools_seen: tuple[Any, int] = (None, 0)  # the last schema list sized (SchemaCache keeps it)


def tools_tokens(tools: list[dict[str, Any]] | None) -> int:
    """The tool schemas' estimate (they travel with every call)."""
    global _tools_seen
    if not tools:
        return 0
    if _tools_seen[0] is tools:
        return _tools_seen[1]
    tokens = text_tokens(_dumps(tools))
    _tools_seen = (tools, tokens)  # held, so its identity cannot be reused by another list
    return tokens


def prompt_tokens(messages: list[Message], tools: list[dict[str, Any]] | None = None) -> int:
    """The estimate of one request: its messages and its tool schemas."""
    return sum(message_tokens(m) for m in messages) + tools_tokens(tools)


def _sized(message: Message, sizes: Sizes) -> int:
    hit = sizes.get(id(message))
    if hit is not None and hit[0] is message:
        return hit[1]
    tokens = message_tokens(message)
    sizes[id(message)] = (message, tokens)  # held: its id is not reused while cached
    return tokens


def fit(messages: list[Message], max_tokens: int | None,
        tools: list[dict[str, Any]] | None = None, *,
        sizes: Sizes | None = None) -> list[Message]:
    """The messages to send for one model call, within `max_tokens` (estimated, the tool
    schemas included) where that can be: the leading system message(s), then the newest turns
    that fit, whole. The last turn is kept even when it alone is over the limit. A new list;
    `messages` is left as it was. `max_tokens` None (or 0): everything.

    `sizes` keeps each message's estimate by identity across calls (one function-calling turn
    passes the same dict every round; the messages must not change while cached)."""
    if not max_tokens:
        return list(messages)
    if sizes is None:
        sizes = {}
    n = len(messages)
    head = 0
    while head < n and messages[head].get("role") in LEADING_ROLES:
        head += 1
    budget = max_tokens - tools_tokens(tools) - sum(_sized(m, sizes) for m in messages[:head])
    cut = -1  # messages[cut:] is kept: a turn's start (or `head`, everything)
    used = 0
    for i in range(n - 1, head - 1, -1):
        message = messages[i]
        used += _sized(message, sizes)
        if cut >= 0 and used > budget:
            break  # this turn does not fit, so no older one will be sent either
        if i == head or message.get("role") == "user":
            cut = i  # the first one met (the last turn) is kept whatever its size
    if cut <= head:
        return list(messages)
    kept = messages[cut:]
    called = {call.get("id") for m in kept for call in m.get("tool_calls") or ()}
    if any(m.get("role") == "tool" and m.get("tool_call_id") not in called for m in kept):
        # results whose call was left out (e.g. added late by a repair) go with it
        kept = [m for m in kept if m.get("role") != "tool" or m.get("tool_call_id") in called]
    return [*messages[:head], *kept]
