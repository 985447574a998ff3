"""The turn in flight: watch it (a page reloaded mid-turn picks it up) or stop it.

The session's actor keeps the events of its running turn; `current_turn` (a Ray streaming
generator) replays them from the turn's start and then goes live, ending with the turn. A
watcher that goes away only stops watching: the turn itself runs on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, HTTPException, Response

from gateway.deps import ListenersDep, SessionsDep
from gateway.listeners import Listeners
from gateway.models import Confirm, Problem
from gateway.sse import sse_response, turn_sse

router = APIRouter(prefix="/api/sessions/{sid}/turn", tags=["chat"])
NO_TURN = "no turn is in flight"


@router.get("", status_code=200, response_model=None,
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "the turn's events, from its start, then live"},
                       204: {"description": "no turn is in flight"},
                       404: {"model": Problem, "description": "unknown session"}})
async def watch_turn(sid: str, sessions: SessionsDep, listeners: ListenersDep) -> Response:
    """The turn in flight as SSE (`token`, `tool_call`, `tool_result`, then `done` or
    `error`), replayed from its start; 204 when no turn is in flight."""
    await sessions.handle(sid)  # 404 before a listener's place is taken
    lease = await listeners.acquire(sessions.caller)  # 429 over LLMCAM_USER_LISTENERS
    items = sessions.stream(sid, lambda handle: handle.current_turn.remote())
    try:
        first = await anext(items, None)
    except BaseException:
        listeners.release(lease)
        await items.aclose()
        raise
    if first is None:
        listeners.release(lease)
        return Response(status_code=204, headers={"Cache-Control": "no-store"})
    return sse_response(_sse(items, first, listeners, lease))


@router.delete("", status_code=204,
               responses={404: {"model": Problem,
                                "description": "unknown session, or no turn in flight"}})
async def stop_turn(sid: str, sessions: SessionsDep) -> Response:
    """Stop the turn in flight: what the assistant said so far is kept, marked as stopped."""
    if not await sessions.call(sid, lambda h: h.stop_turn.remote()):
        raise HTTPException(404, NO_TURN)
    return Response(status_code=204)


@router.post("/confirm", status_code=204,
             responses={404: {"model": Problem, "description": "no such call waits"}})
async def confirm_call(sid: str, body: Confirm, sessions: SessionsDep) -> Response:
    """Allow or decline a tool call the turn in flight waits on (its `confirm` event)."""
    await sessions.call(sid, lambda h: h.confirm_call.remote(body.call_id, body.allow))
    return Response(status_code=204)


async def _sse(items: AsyncIterator[dict[str, Any]], first: dict[str, Any],
               listeners: Listeners, lease: str) -> AsyncIterator[dict[str, str]]:
    """The turn's events; a session that moved mid-turn is followed to its next activation
    (which has no turn in flight, so the stream ends there: GET …/messages has the rest)."""
    try:
        async for out in turn_sse(first, items, "watching a turn"):
            yield out
    finally:
        listeners.release(lease)
        await items.aclose()  # a closed tab leaves no watcher behind in the actor
