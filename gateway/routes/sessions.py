"""Sessions: create, list (a signed-in user's), find again by cookie, read, delete."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Cookie, HTTPException, Request, Response

from gateway.deps import CallerDep, QuotaDep, SessionsDep
from gateway.errors import UNKNOWN
from gateway.models import NewSession, SessionInfo, SessionListed, Stream

router = APIRouter(prefix="/api/sessions", tags=["sessions"])
COOKIE = "llmcam_session"


@router.post("", status_code=201, response_model=NewSession)
async def create_session(sessions: SessionsDep, quota: QuotaDep,
                         response: Response) -> NewSession:
    """Start a new session; its ID is also set as the `llmcam_session` cookie."""
    await quota.hit("sessions", sessions.caller)
    session_id = await sessions.create()
    response.set_cookie(COOKIE, session_id, httponly=True, samesite="lax", path="/")
    return NewSession(session_id=session_id)


@router.get("", response_model=list[SessionListed])
async def list_sessions(caller: CallerDep, request: Request) -> Any:
    """The signed-in user's sessions, the most recently active first (`[]` when nobody is
    signed in: there is no user to list for)."""
    if caller.user is None:
        return []
    store = request.app.state.sessions.store
    return await asyncio.to_thread(store.sessions_of, caller.user)


@router.get("/current", response_model=SessionInfo)
async def current_session(sessions: SessionsDep,
                          llmcam_session: str | None = Cookie(default=None)) -> Any:
    """The session the cookie names; 404 when it names none."""
    if not llmcam_session:
        raise HTTPException(404, "no session cookie")
    return await sessions.call(llmcam_session, lambda h: h.info.remote())


@router.get("/{sid}", response_model=SessionInfo)
async def get_session(sid: str, sessions: SessionsDep) -> Any:
    return await sessions.call(sid, lambda h: h.info.remote())


@router.delete("/{sid}", status_code=204)
async def delete_session(sid: str, sessions: SessionsDep) -> Response:
    """Stop its streams and forget its history and files."""
    await sessions.delete(sid)
    return Response(status_code=204)


@router.get("/{sid}/tools")
async def get_tools(sid: str, sessions: SessionsDep) -> list[dict[str, Any]]:
    """The session's tools as OpenAI tool schemas."""
    return await sessions.call(sid, lambda h: h.tool_schemas.remote())


@router.get("/{sid}/notifications", response_model=list[Stream])
async def get_notifications(sid: str, sessions: SessionsDep) -> Any:
    return await sessions.call(sid, lambda h: h.notifications.remote())


@router.delete("/{sid}/notifications/{noti_id}", status_code=204)
async def stop_notification(sid: str, noti_id: str, sessions: SessionsDep) -> Response:
    await sessions.call(sid, lambda h: h.stop_stream.remote(noti_id))
    return Response(status_code=204)


__all__ = ["router", "COOKIE", "UNKNOWN"]
