"""Live notifications of a session as SSE, replayed from the store after Last-Event-ID."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import ray
from fastapi import APIRouter, Header, HTTPException
from sse_starlette import EventSourceResponse

from gateway.deps import SessionsDep

router = APIRouter(prefix="/api/sessions/{sid}/events", tags=["notifications"])


@router.get("")
async def events(sid: str, sessions: SessionsDep,
                 last_event_id: str | None = Header(default=None)) -> EventSourceResponse:
    """Every stored event after Last-Event-ID (all without it), then live ones."""
    try:
        after = int(last_event_id or 0)
    except ValueError as exc:
        raise HTTPException(422, "Last-Event-ID must be an event number") from exc
    handle = await sessions.handle(sid)
    return EventSourceResponse(_stream(handle, after), ping=15,
                               headers={"Cache-Control": "no-store"})


async def _stream(handle: Any, after: int) -> AsyncIterator[dict[str, Any]]:
    generator = handle.events.remote(after)
    try:
        async for ref in generator:
            item = await ref
            yield {"id": str(item["id"]), "event": "notification",
                   "data": json.dumps({k: item[k] for k in ("noti_id", "message", "at")})}
    finally:
        ray.cancel(generator)  # a closed browser tab must not leave a listener behind
