"""An httpx client for tools whose every connection, redirects included, passes the URL guard.

It resolves the host once, checks the addresses, and connects to the one it approved (an
httpcore network backend): no second DNS lookup. Imported only when a tool first fetches.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpcore
import httpx

from actors.netguard import BlockedAddress, UrlGuard


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
