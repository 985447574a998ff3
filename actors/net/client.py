"""An httpx client for tools whose every connection, redirects included, passes the URL guard.

It resolves the host once, checks the addresses, and connects to the one it approved (an
httpcore network backend): no second DNS lookup. Imported only when a tool first fetches.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpcore
import httpx

from actors.net.guard import BlockedAddress, UrlGuard


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, guard: UrlGuard) -> None:
        self._guard = guard
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        addresses = await asyncio.to_thread(self._guard.resolve, host, port)
        return await self._inner.connect_tcp(str(addresses[0]), port, timeout=timeout,
                                             local_address=local_address,
                                             socket_options=socket_options)

    async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        raise BlockedAddress("unix sockets are not reachable from tools")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def guarded_client(guard: UrlGuard, *, timeout: float = 20.0, **kwargs: Any) -> httpx.AsyncClient:
    """An httpx client whose every connection (redirects included) passes the guard."""
    transport = httpx.AsyncHTTPTransport()
    transport._pool = httpcore.AsyncConnectionPool(  # noqa: SLF001 - httpx exposes no hook
        ssl_context=httpx.create_ssl_context(), network_backend=_GuardedBackend(guard))
    return httpx.AsyncClient(transport=transport, timeout=timeout, follow_redirects=True,
                             trust_env=False, **kwargs)


async def read_limited(response: httpx.Response, limit: int) -> bytes:
    """The decoded body of a streamed response, refusing it as soon as it passes `limit` bytes.

    `response.read()` inflates the whole body first, so a small gzip bomb would fill memory
    before any size check ran: this counts decoded bytes while they arrive. Use it on a
    response from `client.stream(...)` (or `send(..., stream=True)`); it closes the response.
    """
    if response.is_stream_consumed:  # read already (not streamed): still enforce the cap
        body = response.content
        if len(body) > limit:
            raise ValueError(f"the response is larger than the {limit}-byte limit")
        return body
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > limit:
                raise ValueError(
                    f"the response is larger than the {limit}-byte limit; not read further")
            chunks.append(chunk)
    finally:
        await response.aclose()
    return b"".join(chunks)


def text_of(response: httpx.Response, body: bytes) -> str:
    """`body` (from `read_limited`) as text, in the response's charset when it names a known
    one, else UTF-8; undecodable bytes are replaced, never an error."""
    try:
        return body.decode(response.charset_encoding or "utf-8", errors="replace")
    except LookupError:
        return body.decode("utf-8", errors="replace")
