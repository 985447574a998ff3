"""Dependencies shared by the routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.sessions import SessionClient


def get_sessions(request: Request) -> SessionClient:
    return request.app.state.sessions


SessionsDep = Annotated[SessionClient, Depends(get_sessions)]
