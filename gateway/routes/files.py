"""A session's files, by name, only through that session."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Response

from actors.errors import NotFound
from gateway.deps import SessionsDep
from gateway.models import FileEntry

router = APIRouter(prefix="/api/sessions/{sid}/files", tags=["files"])


@router.get("", response_model=list[FileEntry])
async def list_files(sid: str, sessions: SessionsDep) -> Any:
    return await sessions.call(sid, lambda h: h.files.remote())


@router.get("/{name:path}")
async def get_file(sid: str, name: str, sessions: SessionsDep) -> Response:
    try:
        media_type, data = await sessions.call(sid, lambda h: h.file.remote(name))
    except NotFound as exc:
        raise HTTPException(404, "no such file in this session") from exc
    return Response(data, media_type=media_type,
                    headers={"Cache-Control": "private, max-age=3600"})
