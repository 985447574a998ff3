"""A session's files (captures, detections, plots, uploads), kept in the store beside its
messages so that an actor rebuilt on another node still has them."""

from __future__ import annotations

import posixpath
import re
import time
from urllib.parse import unquote

from actors.errors import FilesFull
from actors.store import FileInfo
from actors.store.journal import SessionJournal

PREFIX = {"capture": "cap", "detection": "detection", "plot": "plot", "upload": "upload"}
CONTENT_TYPES = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png"}
MAX_FILE = 25 * 1024 * 1024
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def file_name(reference: str) -> str:
    """The file name a tool was given: its directory part is ignored, encodings undone."""
    name = posixpath.basename(unquote(unquote(reference)).replace("\\", "/"))
    return "" if name in ("", ".", "..") else name


def safe_stem(text: str, limit: int = 40) -> str:
    return _SAFE.sub("_", text).strip("._-")[:limit] or "file"


def content_type(name: str) -> str:
    return CONTENT_TYPES.get(name.rpartition(".")[2].lower(), "application/octet-stream")


class SessionFiles:
    """Files of one session: a name is only ever looked up among this session's rows."""

    def __init__(self, journal: SessionJournal, max_files: int = 500,
                 max_bytes: int = 512 * 1024 * 1024) -> None:
        self._journal = journal
        self._max_files, self._max_bytes = max_files, max_bytes

    async def save(self, kind: str, stem: str, data: bytes, ext: str) -> str:
        if kind not in PREFIX:
            raise ValueError(f"unknown file kind {kind!r}")
        if len(data) > MAX_FILE:
            raise ValueError("file too large")
        existing = await self.list()
        if len(existing) >= self._max_files:
            raise FilesFull(f"this session already keeps {len(existing)} files, the most "
                            "allowed (LLMCAM_MAX_FILES); delete the session to start afresh")
        if sum(f.size for f in existing) + len(data) > self._max_bytes:
            raise FilesFull("this session's files would exceed "
                            f"{self._max_bytes // (1024 * 1024)} MB, the most allowed "
                            "(LLMCAM_MAX_SESSION_BYTES)")
        stamp = time.strftime("%Y.%m.%d_%H.%M.%S", time.gmtime())
        base = f"{PREFIX[kind]}_{stamp}_{safe_stem(stem)}"
        names = {f.name for f in existing}
        name, n = f"{base}.{ext}", 1
        while name in names:
            n += 1
            name = f"{base}_{n}.{ext}"
        await self._journal.put_file(name, kind, data)
        return name

    async def read(self, name: str) -> bytes:
        found = await self.get(name)
        if found is None:
            raise FileNotFoundError(f"this session has no file named {file_name(name)!r}")
        return found[1]

    async def get(self, name: str) -> tuple[str, bytes] | None:
        """(kind, bytes) of this session's file, by name or path (directory part ignored)."""
        plain = file_name(name)
        if not plain:
            return None
        return await self._journal.file(plain)

    async def list(self, kind: str | None = None) -> list[FileInfo]:
        files = await self._journal.files()
        return [f for f in files if kind is None or f.kind == kind]
