"""A turn's events as the browser gets them over SSE."""

from __future__ import annotations

import json
from typing import Any

HIDDEN = {"status", "messages"}  # for the JSON answer and the error map, not for the page


def sse_event(item: dict[str, Any]) -> dict[str, str] | None:
    """One SSE event for an actor's turn event (None for internal ones)."""
    if item["event"] not in ("token", "tool_call", "confirm", "tool_result", "done", "error"):
        return None
    data = {k: v for k, v in item["data"].items() if k not in HIDDEN}
    return {"event": item["event"], "data": json.dumps(data)}
