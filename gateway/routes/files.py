"""A session's files, by name, only through that session; a user's own image goes in by upload.

An upload is decoded and re-encoded as JPEG here, in the gateway (Pillow), so the session's actor
only ever stores bytes it did not have to parse, and whatever else the upload carried (metadata,
a second image, trailing bytes) is gone.

Decoding is the one thing here that costs memory in proportion to what the header claims, not to
the bytes sent (a 50 KB PNG can say 16 megapixels): an image over `MAX_PIXELS` is refused from its
header, and the rest decode on a small executor of the app's own (`UPLOAD_DECODERS` threads, and
as many uploads read into memory at once), never on the default thread pool that every store and
Ray lookup of the gateway uses. Parallel uploads wait their turn there; other requests go on.
"""

from __future__ import annotations

import asyncio
import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, File, HTTPException, Request, Response, UploadFile

from gateway.deps import SessionsDep
from gateway.limits import MAX_UPLOAD, too_large
from gateway.models import FileEntry, Problem

if TYPE_CHECKING:
    from fastapi import FastAPI
    from PIL.Image import Image as PilImage

router = APIRouter(prefix="/api/sessions/{sid}/files", tags=["files"])
MAX_PIXELS = 16_000_000  # API.md: an upload over 16 megapixels is 413, judged from its header
UPLOAD_DECODERS = 2  # uploads decoded at once (each: up to ~120 MB for a 16 MP RGBA PNG)
JPEG_QUALITY = 90
NOT_AN_IMAGE = "the upload is not a JPEG or PNG image"
TOO_MANY_PIXELS = f"at most {MAX_PIXELS // 1_000_000} megapixels are accepted"
ImageUpload = Annotated[UploadFile, File(description="a JPEG or PNG image, 10 MB at most, "
                                         f"{MAX_PIXELS // 1_000_000} megapixels at most")]


class UploadRefused(ValueError):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def as_jpeg(data: bytes) -> bytes:
    """The uploaded JPEG or PNG as a plain JPEG (upright, no metadata, full size); refuses
    anything else, and an image over `MAX_PIXELS` before decoding it.

    Each step replaces the image before the next (rotation in place, no `convert` of an image
    that is RGB already, no `optimize` pass), so a 16 MP upload peaks at about its decoded size
    plus one RGB copy."""
    from PIL import Image, UnidentifiedImageError

    try:
        # Only the two decoders we accept are tried (no other format's parser sees the bytes).
        image = Image.open(io.BytesIO(data), formats=["JPEG", "PNG"])
    except Image.DecompressionBombError as exc:  # Pillow's own limit, far above ours
        raise UploadRefused(413, f"the image has too many pixels; {TOO_MANY_PIXELS}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, ImportError) as exc:
        # ImportError: where ultralytics is loaded it wraps Image.open and reaches for an
        # optional HEIF plugin when PIL does not know the bytes; they are still not an image.
        raise UploadRefused(415, NOT_AN_IMAGE) from exc
    try:
        if image.format not in ("JPEG", "MPO", "PNG"):  # MPO: a JPEG with a second picture
            raise UploadRefused(415, NOT_AN_IMAGE)
        width, height = image.size
        if width * height > MAX_PIXELS:  # judged from the header, before decoding
            raise UploadRefused(413, f"the image is {width}x{height} pixels; {TOO_MANY_PIXELS}")
        image.load()
        image = _plain_rgb(image)
        out = io.BytesIO()
        image.save(out, "JPEG", quality=JPEG_QUALITY)
        return out.getvalue()
    except UploadRefused:
        raise
    except (OSError, SyntaxError, ValueError, ImportError, EOFError) as exc:  # corrupt pixels
        raise UploadRefused(415, NOT_AN_IMAGE) from exc
    finally:
        image.close()


def _plain_rgb(image: PilImage) -> PilImage:
    """The decoded image upright, transparency flattened on white, as RGB without metadata;
    each intermediate image is released before the next is made where Pillow allows."""
    from PIL import Image, ImageOps

    ImageOps.exif_transpose(image, in_place=True)  # no copy at all when it is upright already
    if image.mode in ("LA", "La", "PA") or (image.mode not in ("RGBA", "RGBa")
                                            and "transparency" in image.info):
        image = _replace(image, image.convert("RGBA"))
    if image.mode in ("RGBA", "RGBa"):
        flat = Image.new("RGB", image.size, (255, 255, 255))
        flat.paste(image, None, image)  # the alpha band is the mask: no separate copy of it
        image = _replace(image, flat)
    elif image.mode != "RGB":  # L, 1, I;16, CMYK, ...
        image = _replace(image, image.convert("RGB"))
    image.info = {}  # a JPEG comment would otherwise be written again
    return image


def _replace(old: PilImage, new: PilImage) -> PilImage:
    old.close()  # frees the decoded pixels now, not when the last reference goes
    return new


@dataclass
class UploadDecoders:
    """An app's own bounded decoding: `slots` uploads in memory at once, decoded on `pool`."""

    size: int = UPLOAD_DECODERS
    pool: ThreadPoolExecutor = field(init=False)
    slots: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self.pool = ThreadPoolExecutor(self.size, thread_name_prefix="llmcam-upload")
        self.slots = asyncio.Semaphore(self.size)

    async def as_jpeg(self, file: UploadFile) -> bytes:
        """The upload read (10 MB at most) and re-encoded, once a slot is free. The slot is held
        until the decoding thread is done with the bytes, even when the client goes away first
        (so disconnecting uploads cannot pile bodies up behind the decoders)."""
        if file.size is not None and file.size > MAX_UPLOAD:  # no need to wait for a slot
            raise HTTPException(413, too_large(MAX_UPLOAD))
        loop = asyncio.get_running_loop()
        await self.slots.acquire()
        try:
            data = await file.read(MAX_UPLOAD + 1)
            if len(data) > MAX_UPLOAD:
                raise HTTPException(413, too_large(MAX_UPLOAD))
            job = self.pool.submit(as_jpeg, data)
        except BaseException:
            self.slots.release()
            raise
        del data

        def release(_: object) -> None:
            try:
                loop.call_soon_threadsafe(self.slots.release)
            except RuntimeError:  # the app's loop is closed: nothing waits for the slot
                pass

        job.add_done_callback(release)
        try:
            return await asyncio.wrap_future(job)
        except UploadRefused as exc:
            raise HTTPException(exc.status, exc.detail) from exc


def upload_decoders(app: FastAPI) -> UploadDecoders:
    """The app's decoders, made on first use (in the app's event loop; no await in between, so
    exactly one per app). Its threads end when the app is gone or at interpreter exit."""
    decoders = getattr(app.state, "upload_decoders", None)
    if decoders is None:
        decoders = app.state.upload_decoders = UploadDecoders()
    return decoders


def upload_stem(filename: str | None) -> str:
    """The name the user's file had, without folders or extension (the actor makes it safe)."""
    name = PureWindowsPath(PurePosixPath(filename or "").name).name
    return PurePosixPath(name).stem or "image"


@router.get("", response_model=list[FileEntry])
async def list_files(sid: str, sessions: SessionsDep) -> Any:
    return await sessions.call(sid, lambda h: h.files.remote())


@router.post("", status_code=201, response_model=FileEntry,
             responses={413: {"model": Problem,
                              "description": "larger than 10 MB or 16 megapixels"},
                        415: {"model": Problem, "description": "not a JPEG or PNG image"}})
async def upload_file(sid: str, sessions: SessionsDep, file: ImageUpload,
                      request: Request) -> Any:
    """Add a JPEG or PNG image to the session's files (stored as JPEG, kind `upload`); the
    tools then take it by the name this answers."""
    await sessions.handle(sid)  # 404 before any decoding
    jpeg = await upload_decoders(request.app).as_jpeg(file)
    stem = upload_stem(file.filename)
    name = await sessions.call(sid, lambda h: h.save_file.remote("upload", stem, jpeg, "jpg"))
    listed = await sessions.call(sid, lambda h: h.files.remote())
    entry = next((f for f in listed if f["name"] == name), None)
    if entry is None:  # deleted in between
        raise HTTPException(404, "the session's file is gone")
    return entry


@router.get("/{name:path}")
async def get_file(sid: str, name: str, sessions: SessionsDep) -> Response:
    media_type, data = await sessions.call(sid, lambda h: h.file.remote(name))
    return Response(data, media_type=media_type,
                    headers={"Cache-Control": "private, max-age=3600"})
