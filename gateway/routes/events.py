"""Live notifications of a session as SSE, replayed from the store after Last-Event-ID.

The session actor yields the events (a Ray streaming generator, read through the session
client). If that actor dies while a client listens, the listener moves on to its next
activation from the last event it sent, so the client sees neither a gap nor a repeat. A
closed tab cancels the actor's generator.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Header, HTTPException, Response

from actors.errors import SessionGone
from gateway.deps import ListenersDep, SessionsDep
from gateway.listeners import Listeners
from gateway.session_client import ForCaller
from gateway.sse import sse_response

router = APIRouter(prefix="/api/sessions/{sid}/events", tags=["notifications"])
log = logging.getLogger(__name__)


@router.get("", responses={404: {"description": "unknown session"},
                           429: {"description": "too many open streams (the session's, or "
                                                "the user's)"}})
async def events(sid: str, sessions: SessionsDep, listeners: ListenersDep,
                 last_event_id: str | None = Header(default=None)) -> Response:
    """SSE of the session's notifications: `id: <n>`, `event: notification`, data
    `{"noti_id", "message", "at"}`. Every stored event after Last-Event-ID (all without it),
    then live ones."""
    try:
        after = int((last_event_id or "0").strip() or 0)
    except ValueError as exc:
        raise HTTPException(422, "Last-Event-ID must be an event number") from exc
    await sessions.handle(sid)  # 404 before a listener's place is taken
    lease = await listeners.acquire(sessions.caller)  # 429 over LLMCAM_USER_LISTENERS
    items = _items(sessions, sid, max(after, 0))
    try:
        await anext(items)  # the actor's `ready`: 404 or 429 now, before the stream starts
    except BaseException:
        listeners.release(lease)
        await items.aclose()
        raise
    return sse_response(_sse(items, listeners, lease))


async def _items(sessions: ForCaller, sid: str, after: int) -> AsyncIterator[dict[str, Any]]:
    last = after

    def make(handle: Any) -> Any:
        return handle.events.remote(last)  # after a move: from the last event sent

    async for item in sessions.stream(sid, make):
        if "id" in item:
            last = item["id"]
        yield item


async def _sse(items: AsyncIterator[dict[str, Any]], listeners: Listeners,
               lease: str) -> AsyncIterator[dict[str, Any]]:
    try:
        async for item in items:
            if "id" not in item:
                continue  # a `ready` from the next activation
            yield {"id": str(item["id"]), "event": "notification",
                   "data": json.dumps({k: item[k] for k in ("noti_id", "message", "at")})}
    except SessionGone:
        return  # the session was deleted
    except Exception as exc:
        log.warning("notification stream ended: %s", type(exc).__name__)
    finally:
        listeners.release(lease)
        await items.aclose()  # a closed tab cancels the actor's generator now, not at GC
