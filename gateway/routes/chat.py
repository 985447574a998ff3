"""The conversation: read it, and post a turn as JSON or as an SSE stream."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import ray
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse

from gateway.deps import SessionsDep
from gateway.models import Message, PostMessage, Reply
from gateway.sessions import ATTEMPTS, Sessions

router = APIRouter(prefix="/api/sessions/{sid}/messages", tags=["chat"])


@router.get("", response_model=list[Message], response_model_exclude_unset=True)
async def get_messages(sid: str, sessions: SessionsDep) -> Any:
    """The conversation, oldest first, as OpenAI chat messages."""
    return await sessions.call(sid, lambda h: h.messages.remote())


async def turn_events(sessions: Sessions, sid: str, content: str) -> AsyncIterator[dict[str, Any]]:
    """The turn's events from the session actor. If the actor dies mid-turn, the turn goes on
    in its rebuilt actor under the same turn ID, so the message is recorded once."""
    turn_id = uuid.uuid4().hex
    for attempt in range(ATTEMPTS):
        try:
            handle = await sessions.handle(sid)
            async for ref in handle.chat.remote(turn_id, content):
                yield await ref
            return
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
            sessions.forget(sid)
            if attempt == ATTEMPTS - 1:
                raise
            await asyncio.sleep(0.1 * (attempt + 1))  # let a dying actor's name go


@router.post("", response_model=Reply, responses={502: {"description": "LLM backend failed"}})
async def post_message(sid: str, body: PostMessage, request: Request,
                       sessions: SessionsDep) -> Any:
    """Run one turn. With `Accept: text/event-stream`, stream it as SSE events."""
    await sessions.handle(sid)  # 404 before any stream starts
    events = turn_events(sessions, sid, body.content)
    if "text/event-stream" in request.headers.get("accept", ""):
        return EventSourceResponse(_sse(events), ping=15,
                                   headers={"Cache-Control": "no-store"})
    reply, messages = "", []
    async for item in events:
        if item["event"] == "error":
            return JSONResponse({"detail": item["data"]["detail"]},
                                status_code=item["data"].get("status", 502))
        if item["event"] == "done":
            reply = item["data"]["reply"]
        elif item["event"] == "turn":
            messages = item["data"]["messages"]
    return {"reply": reply, "messages": messages}


async def _sse(events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, str]]:
    # The turn is not cancelled when the client goes: the actor finishes and stores it.
    try:
        async for item in events:
            if item["event"] == "turn":
                continue
            data = {k: v for k, v in item["data"].items() if k != "status"}
            yield {"event": item["event"], "data": json.dumps(data)}
    except Exception as exc:  # the stream has started: report in-band
        yield {"event": "error", "data": json.dumps({"detail": f"turn failed: {exc}"[:300]})}
