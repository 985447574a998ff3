"""What a tool gets from the session it runs for: its files, its tools, its settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from actors.net.guard import UrlGuard
from actors.session.names import session_key
from actors.settings import Settings
from actors.store import FileInfo

if TYPE_CHECKING:
    import httpx

    from actors.llm import LLM



class Files(Protocol):
    """A session's own files; names never reach outside them."""

    async def save(self, kind: str, stem: str, data: bytes, ext: str) -> str: ...
    async def read(self, name: str) -> bytes: ...
    async def list(self, kind: str | None = None) -> list[FileInfo]: ...


class Services(Protocol):
    """The session's added services (its toolbox), as the toolbox-changing tools see it."""

    async def add(self, name: str, spec: dict[str, Any], tool_modules: list[str]) -> list[Any]:
        ...

    async def remove(self, name: str) -> int: ...
    def services(self) -> list[str]: ...


class Streams(Protocol):
    """Notification streams, as seen from a tool (the session's, or a stream's own)."""

    async def start(self, task: str, interval_seconds: float | None,
                    account: str | None = None) -> str: ...
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
            from actors.net.client import guarded_client

            self._client = guarded_client(self.guard)
        return self._client


@dataclass
class ToolContext:
    """What a tool gets from its session. The session ID is a capability: it stays out of
    repr() and out of every result and request (tools name files, `file_url`), so neither the
    model nor the LLM server nor a service a tool calls ever sees it. Only the session's own
    plumbing reads `session_id`; a tool that sends data out must not."""

    session_id: str = field(repr=False, compare=False)
    settings: Settings
    web: Web
    files: Files
    llm: LLM
    toolbox: Services | None = None
    streams: Streams | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    account: str | None = None  # who the turn runs for (limits and costs count by it)
    key: str = ""  # the session's key (its actor's name, its shell scratch): never the ID

    def __post_init__(self) -> None:
        if not self.key:
            self.key = session_key(self.session_id)

    @property
    def guard(self) -> UrlGuard:
        return self.web.guard

    @property
    def http(self) -> httpx.AsyncClient:
        return self.web.client

    @staticmethod
    def file_url(name: str) -> str:
        """A link to a file of this session, relative to the session (`files/<name>`): the
        model shows it as `![](files/<name>)` and the page resolves it under its session."""
        return f"files/{name}"

    async def load_image(self, reference: str) -> bytes:
        """A file of this session by name, or an http(s) URL through the guard (read up to
        `max_fetch_bytes`, counted while the body arrives)."""
        if reference.startswith(("http://", "https://")):
            from actors.net.client import read_limited

            async with self.http.stream("GET", reference) as response:
                response.raise_for_status()
                try:
                    return await read_limited(response, self.settings.max_fetch_bytes)
                except ValueError:
                    raise ValueError(f"{reference[:100]} is larger than "
                                     f"{self.settings.max_fetch_bytes} bytes") from None
        return await self.files.read(reference)
