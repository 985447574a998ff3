"""Server-sent events: one response shape for every stream (chat, turn, events), and a turn's
events as the browser gets them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from sse_starlette import EventSourceResponse

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
