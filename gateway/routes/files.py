"""A session's files, by name, only through that session; a user's own image goes in by upload.

An upload is decoded and re-encoded as JPEG here, in the gateway (Pillow, in a thread), so the
session's actor only ever stores bytes it did not have to parse, and whatever else the upload
carried (metadata, a second image, trailing bytes) is gone.
"""

from __future__ import annotations

import asyncio
import io
from pathlib import PurePosixPath, PureWindowsPath
from typing import Annotated, Any

from fastapi import APIRouter, File, HTTPException, Response, UploadFile

from actors.errors import NotFound
from gateway.deps import SessionsDep
from gateway.limits import MAX_UPLOAD, too_large
from gateway.models import FileEntry, Problem

router = APIRouter(prefix="/api/sessions/{sid}/files", tags=["files"])
MAX_PIXELS = 50_000_000  # a decoded image of at most ~150 MB of RGB in the gateway
NOT_AN_IMAGE = "the upload is not a JPEG or PNG image"
ImageUpload = Annotated[UploadFile, File(description="a JPEG or PNG image, 10 MB at most")]


class UploadRefused(ValueError):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def as_jpeg(data: bytes) -> bytes:
    """The uploaded JPEG or PNG as a plain JPEG (upright, no metadata); refuses anything else."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        # Only the two decoders we accept are tried (no other format's parser sees the bytes).
        with Image.open(io.BytesIO(data), formats=["JPEG", "PNG"]) as image:
            if image.format not in ("JPEG", "PNG"):
                raise UploadRefused(415, NOT_AN_IMAGE)
            width, height = image.size
            if width * height > MAX_PIXELS:  # judged from the header, before decoding
                raise UploadRefused(413, f"the image is {width}x{height} pixels; at most "
                                    f"{MAX_PIXELS // 1_000_000} megapixels are accepted")
            image.load()
            upright = ImageOps.exif_transpose(image)
            if upright.mode in ("RGBA", "LA", "PA") or "transparency" in upright.info:
                rgba = upright.convert("RGBA")
                flat = Image.new("RGB", rgba.size, (255, 255, 255))
                flat.paste(rgba, mask=rgba.getchannel("A"))
                upright = flat
            out = io.BytesIO()
            upright.convert("RGB").save(out, "JPEG", quality=90, optimize=True)
            return out.getvalue()
    except UploadRefused:
        raise
    except Image.DecompressionBombError as exc:
        raise UploadRefused(413, "the image has too many pixels") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, ImportError) as exc:
        # ImportError: where ultralytics is loaded it wraps Image.open and reaches for an
        # optional HEIF plugin when PIL does not know the bytes; they are still not an image.
        raise UploadRefused(415, NOT_AN_IMAGE) from exc


def upload_stem(filename: str | None) -> str:
    """The name the user's file had, without folders or extension (the actor makes it safe)."""
    name = PureWindowsPath(PurePosixPath(filename or "").name).name
    return PurePosixPath(name).stem or "image"


@router.get("", response_model=list[FileEntry])
async def list_files(sid: str, sessions: SessionsDep) -> Any:
    return await sessions.call(sid, lambda h: h.files.remote())


@router.post("", status_code=201, response_model=FileEntry,
             responses={413: {"model": Problem, "description": "larger than 10 MB"},
                        415: {"model": Problem, "description": "not a JPEG or PNG image"}})
async def upload_file(sid: str, sessions: SessionsDep, file: ImageUpload) -> Any:
    """Add a JPEG or PNG image to the session's files (stored as JPEG, kind `upload`); the
    tools then take it by the name this answers."""
    await sessions.handle(sid)  # 404 before any decoding
    data = await file.read(MAX_UPLOAD + 1)
    if len(data) > MAX_UPLOAD:
        raise HTTPException(413, too_large(MAX_UPLOAD))
    try:
        jpeg = await asyncio.to_thread(as_jpeg, data)
    except UploadRefused as exc:
        raise HTTPException(exc.status, exc.detail) from exc
    stem = upload_stem(file.filename)
    name = await sessions.call(sid, lambda h: h.save_file.remote("upload", stem, jpeg, "jpg"))
    listed = await sessions.call(sid, lambda h: h.files.remote())
    entry = next((f for f in listed if f["name"] == name), None)
    if entry is None:  # deleted in between
        raise HTTPException(404, "the session's file is gone")
    return entry


@router.get("/{name:path}")
async def get_file(sid: str, name: str, sessions: SessionsDep) -> Response:
    try:
        media_type, data = await sessions.call(sid, lambda h: h.file.remote(name))
    except NotFound as exc:
        raise HTTPException(404, "no such file in this session") from exc
    return Response(data, media_type=media_type,
                    headers={"Cache-Control": "private, max-age=3600"})
