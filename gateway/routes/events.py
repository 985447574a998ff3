"""Live notifications of a session as SSE, replayed from the store after Last-Event-ID.

The session actor yields the events (a Ray streaming generator, read here). If that actor dies
while a client listens, the listener moves on to its rebuilt actor from the last event it sent,
so the client sees neither a gap nor a repeat. A closed tab cancels the actor's generator.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import ray
from fastapi import APIRouter, Header, HTTPException
from sse_starlette import EventSourceResponse

from actors.errors import SessionGone
from gateway.deps import SessionsDep
from gateway.sessions import ATTEMPTS, Sessions

router = APIRouter(prefix="/api/sessions/{sid}/events", tags=["notifications"])
PING_SECONDS = 10.0  # a comment line at least this often keeps proxies from closing the stream
log = logging.getLogger(__name__)
_DIED = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)


@router.get("", responses={404: {"description": "unknown session"}})
async def events(sid: str, sessions: SessionsDep,
                 last_event_id: str | None = Header(default=None)) -> EventSourceResponse:
    """SSE of the session's notifications: `id: <n>`, `event: notification`, data
    `{"noti_id", "message", "at"}`. Every stored event after Last-Event-ID (all without it),
    then live ones."""
    try:
        after = int((last_event_id or "0").strip() or 0)
    except ValueError as exc:
        raise HTTPException(422, "Last-Event-ID must be an event number") from exc
    await sessions.call(sid, lambda h: h.start.remote())  # 404 before the stream starts
    return EventSourceResponse(_stream(sessions, sid, max(after, 0)), ping=PING_SECONDS,
                               headers={"Cache-Control": "no-store",
                                        "X-Accel-Buffering": "no"})


async def _stream(sessions: Sessions, sid: str, after: int) -> AsyncIterator[dict[str, Any]]:
    last, failures = after, 0
    while failures < ATTEMPTS:
        try:
            handle = await sessions.handle(sid)
        except HTTPException:
            return  # the session was deleted
        except _DIED:
            sessions.forget(sid)
            failures += 1
            await asyncio.sleep(0.2 * failures)
            continue
        generator = handle.events.remote(last)
        try:
            async for ref in generator:
                item = await ref
                last, failures = item["id"], 0
                yield {"id": str(item["id"]), "event": "notification",
                       "data": json.dumps({k: item[k] for k in ("noti_id", "message", "at")})}
            return
        except SessionGone:
            return
        except _DIED:
            # Its actor died: go on with the rebuilt one, from the last event sent.
            sessions.forget(sid)
            failures += 1
            await asyncio.sleep(0.2 * failures)
        finally:
            _cancel(generator)
    log.warning("notification stream gave up after %d failed attempts", ATTEMPTS)


def _cancel(generator: Any) -> None:
    """A closed browser tab must not leave a listener behind in the session's actor."""
    try:
        ray.cancel(generator)
    except Exception:  # its actor is gone already
        pass
