"""Server-sent events: one response shape for every stream (chat, turn, events), and a turn's
events as the browser gets them."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from sse_starlette import EventSourceResponse

log = logging.getLogger(__name__)
PING_SECONDS = 10.0  # a comment line at least this often keeps proxies from closing the stream


def sse_response(events: AsyncIterator[dict[str, Any]]) -> EventSourceResponse:
    """An SSE response: never cached, never buffered by a proxy, pinged while quiet."""
    return EventSourceResponse(events, ping=PING_SECONDS,
                               headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

HIDDEN = {"status", "messages"}  # for the JSON answer and the error map, not for the page


def sse_event(item: dict[str, Any]) -> dict[str, str] | None:
    """One SSE event for an actor's turn event (None for internal ones)."""
    if item["event"] not in ("token", "tool_call", "confirm", "tool_result", "done", "error"):
        return None
    data = {k: v for k, v in item["data"].items() if k not in HIDDEN}
    return {"event": item["event"], "data": json.dumps(data)}


async def turn_sse(first: dict[str, Any] | None, rest: AsyncIterator[dict[str, Any]],
                   doing: str) -> AsyncIterator[dict[str, str]]:
    """A turn's events as the browser gets them: `first` (already read), then `rest`, which is
    closed at the end (a client that goes away stops only the reading: the actor finishes and
    stores the turn). Once the stream has started a failure can only be reported in-band: an
    `error` event ends it (and a warning that `doing` failed)."""
    async with aclosing(rest):
        try:
            if first is not None and (out := sse_event(first)) is not None:
                yield out
            async for item in rest:
                if (out := sse_event(item)) is not None:
                    yield out
        except Exception as exc:
            log.warning("%s failed: %s", doing, type(exc).__name__)
            yield {"event": "error", "data": json.dumps({"detail": "the turn could not be "
                                                                   "followed to its end"})}
