"""A session's files (captures, detections, plots), kept in the store beside its messages."""

from __future__ import annotations

import asyncio
import time

from actors.context import file_name, safe_stem
from actors.store import FileInfo, SQLiteStore

PREFIX = {"capture": "cap", "detection": "detection", "plot": "plot", "upload": "upload"}
CONTENT_TYPES = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png"}
MAX_FILE = 25 * 1024 * 1024


def content_type(name: str) -> str:
    return CONTENT_TYPES.get(name.rpartition(".")[2].lower(), "application/octet-stream")


class SessionFiles:
    """Files of one session: a name is only ever looked up among this session's rows."""

    def __init__(self, store: SQLiteStore, key: str, epoch: int) -> None:
        self._store, self._key, self._epoch = store, key, epoch

    async def save(self, kind: str, stem: str, data: bytes, ext: str) -> str:
        if kind not in PREFIX:
            raise ValueError(f"unknown file kind {kind!r}")
        if len(data) > MAX_FILE:
            raise ValueError("file too large")
        stamp = time.strftime("%Y.%m.%d_%H.%M.%S", time.gmtime())
        base = f"{PREFIX[kind]}_{stamp}_{safe_stem(stem)}"
        names = {f.name for f in await self.list()}
        name, n = f"{base}.{ext}", 1
        while name in names:
            n += 1
            name = f"{base}_{n}.{ext}"
        await asyncio.to_thread(self._store.put_file, self._key, self._epoch, name, kind, data)
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
        return await asyncio.to_thread(self._store.file, self._key, plain)

    async def list(self, kind: str | None = None) -> list[FileInfo]:
        files = await asyncio.to_thread(self._store.files, self._key)
        return [f for f in files if kind is None or f.kind == kind]
