"""Dependencies shared by the routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.sessions import Sessions


def get_sessions(request: Request) -> Sessions:
    return request.app.state.sessions


SessionsDep = Annotated[Sessions, Depends(get_sessions)]
