"""What a tool gets from the session it runs for: its files, its tools, its settings."""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote

from actors.netguard import UrlGuard
from actors.settings import Settings
from actors.store import FileInfo

if TYPE_CHECKING:
    import httpx

    from actors.llm import LLM
    from actors.toolbox import Toolbox

MAX_DOWNLOAD = 20 * 1024 * 1024
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def file_name(reference: str) -> str:
    """The file name a tool was given: its directory part is ignored, encodings undone."""
    name = posixpath.basename(unquote(unquote(reference)).replace("\\", "/"))
    return "" if name in ("", ".", "..") else name


def safe_stem(text: str, limit: int = 40) -> str:
    return _SAFE.sub("_", text).strip("._-")[:limit] or "file"


class Files(Protocol):
    """A session's own files; names never reach outside them."""

    async def save(self, kind: str, stem: str, data: bytes, ext: str) -> str: ...
    async def read(self, name: str) -> bytes: ...
    async def list(self, kind: str | None = None) -> list[FileInfo]: ...


class Streams(Protocol):
    """Notification streams, as seen from a tool (the session's, or a stream's own)."""

    async def start(self, task: str, interval_seconds: float | None) -> str: ...
    async def stop(self, noti_id: str) -> str: ...
    async def send(self, message: str) -> str: ...


class Web:
    """The guarded HTTP client of one actor, made on first use (httpx stays unloaded until a
    tool fetches something)."""

    def __init__(self, guard: UrlGuard) -> None:
        self.guard = guard
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            from actors.http import guarded_client

            self._client = guarded_client(self.guard)
        return self._client


@dataclass
class ToolContext:
    session_id: str
    settings: Settings
    web: Web
    files: Files
    llm: LLM
    toolbox: Toolbox | None = None
    streams: Streams | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def guard(self) -> UrlGuard:
        return self.web.guard

    @property
    def http(self) -> httpx.AsyncClient:
        return self.web.client

    def file_url(self, name: str) -> str:
        return f"/api/sessions/{self.session_id}/files/{name}"

    async def load_image(self, reference: str) -> bytes:
        """A file of this session by name, or an http(s) URL through the guard."""
        if reference.startswith(("http://", "https://")):
            async with self.http.stream("GET", reference) as response:
                response.raise_for_status()
                data = bytearray()
                async for chunk in response.aiter_bytes():
                    data += chunk
                    if len(data) > MAX_DOWNLOAD:
                        raise ValueError(f"{reference[:100]} is larger than {MAX_DOWNLOAD} bytes")
                return bytes(data)
        return await self.files.read(reference)
