"""Dependencies shared by the routes: the caller (gateway/identity.py), the session client
bound to that caller, the per-user limits and the listener places."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.identity import Caller, CallerDep, get_caller
from gateway.listeners import Listeners
from gateway.quota import Quota
from gateway.session_client import ForCaller, SessionClient


def get_client(request: Request) -> SessionClient:
    return request.app.state.sessions


def get_sessions(request: Request, caller: Annotated[Caller, Depends(get_caller)]) -> ForCaller:
    return ForCaller(request.app.state.sessions, caller)


def get_quota(request: Request) -> Quota:
    return request.app.state.quota


def get_listeners(request: Request) -> Listeners:
    return request.app.state.listeners


SessionsDep = Annotated[ForCaller, Depends(get_sessions)]
QuotaDep = Annotated[Quota, Depends(get_quota)]
ListenersDep = Annotated[Listeners, Depends(get_listeners)]

__all__ = ["CallerDep", "ListenersDep", "QuotaDep", "SessionsDep", "get_caller", "get_client"]
