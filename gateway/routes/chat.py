"""The conversation: read it, and post a turn as JSON or as an SSE stream (one path for both:
the session actor's streamed turn, followed through actor deaths by the session client)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from gateway.deps import QuotaDep, SessionsDep
from gateway.models import Message, PostMessage, Reply
from gateway.session_client import ForCaller
from gateway.sse import sse_response, turn_sse

router = APIRouter(prefix="/api/sessions/{sid}/messages", tags=["chat"])


@router.get("", response_model=list[Message], response_model_exclude_unset=True)
async def get_messages(sid: str, sessions: SessionsDep) -> Any:
    """The conversation, oldest first, as OpenAI chat messages."""
    return await sessions.call(sid, lambda h: h.messages.remote())


async def turn_events(sessions: ForCaller, sid: str, content: str,
                      slot: asyncio.Lock) -> AsyncIterator[dict[str, Any]]:
    """The turn's events from the session actor, "accepted" first (the actor has recorded the
    turn: `slot`, held by the caller since the turn arrived, is released then). If the actor
    dies mid-turn, the turn goes on in its next activation under the same turn ID, so the
    message is recorded once."""
    turn_id = uuid.uuid4().hex
    held = True
    try:
        account = sessions.caller.account  # the turn's tokens count as the caller's
        async for item in sessions.stream(
                sid, lambda h: h.chat.remote(turn_id, content, account)):
            if item["event"] == "accepted" and held:
                slot.release()
                held = False
            yield item
    finally:
        if held:
            slot.release()


async def _submitted(events: AsyncIterator[dict[str, Any]]) -> dict[str, Any] | None:
    """Run the turn up to its acceptance by the actor (or its end, whichever is first)."""
    async for item in events:
        return None if item["event"] == "accepted" else item
    return None


@router.post("", response_model=Reply, responses={
    502: {"description": "LLM backend failed"},
    429: {"description": "a per-user limit (turns per minute, token budget) refused it"}})
async def post_message(sid: str, body: PostMessage, request: Request,
                       sessions: SessionsDep, quota: QuotaDep) -> Any:
    """Run one turn. With `Accept: text/event-stream`, stream it as SSE events."""
    # Turns of one session are handed to its actor one at a time, in the order they arrived
    # here: the slot is taken before anything is awaited, and held until the actor records it.
    slot = sessions.turn_slot(sid)
    await slot.acquire()
    try:
        await sessions.handle(sid)  # 404 (or 503 when full) before any stream starts
        await quota.check_budget(sessions.caller)  # 429s before anything is recorded
        await quota.hit("turns", sessions.caller)
    except BaseException:
        slot.release()
        raise
    events = turn_events(sessions, sid, body.content, slot)
    try:
        first = await _submitted(events)  # the slot is free again once this returns
    except BaseException:
        await events.aclose()
        raise
    if "text/event-stream" in request.headers.get("accept", ""):
        return sse_response(turn_sse(first, events, "a streamed turn"))
    async with aclosing(events):
        async for item in _prepend(first, events):
            if item["event"] == "error":
                return JSONResponse({"detail": item["data"]["detail"]},
                                    status_code=item["data"].get("status", 502))
            if item["event"] == "done":
                return {"reply": item["data"]["reply"], "messages": item["data"]["messages"]}
    return JSONResponse({"detail": "the turn ended without an answer"}, status_code=502)


async def _prepend(first: dict[str, Any] | None,
                   rest: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    async with aclosing(rest):
        if first is not None:
            yield first
        async for item in rest:
            yield item
