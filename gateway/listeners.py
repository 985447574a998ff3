"""Each user's open listeners (`/events` and `GET /turn` streams), counted across the cluster
in the registry actor under `LLMCAM_USER_LISTENERS`. A place is a lease this gateway renews
while the stream is open, so the places of a gateway that died free themselves."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

from actors.errors import LimitExceeded
from actors.session.registry import LEASE_S
from gateway.identity import Caller


class Listeners:
    def __init__(self, registry: Any, cap: int) -> None:
        self._registry = registry
        self._cap = cap
        self._open: dict[str, str] = {}  # lease -> account
        self._renewing: asyncio.Task[None] | None = None

    async def acquire(self, caller: Caller) -> str:
        """A place for one more stream of the caller's, or 429."""
        lease = uuid.uuid4().hex
        if not await self._registry.listen.remote(lease, caller.account, self._cap):
            raise LimitExceeded("LLMCAM_USER_LISTENERS", f"you have {self._cap} open streams "
                                "(/events and turns watched), the most allowed "
                                "(LLMCAM_USER_LISTENERS); close a tab or a stream", 5)
        self._open[lease] = caller.account
        if self._renewing is None or self._renewing.done():
            self._renewing = asyncio.create_task(self._renew())
        return lease

    def release(self, lease: str) -> None:
        if self._open.pop(lease, None) is not None:
            self._registry.unlisten.remote(lease)

    async def _renew(self) -> None:
        while self._open:
            await asyncio.sleep(LEASE_S / 3)
            with contextlib.suppress(Exception):  # the registry restarts: the next renew
                await self._registry.renew.remote(dict(self._open))

    def close(self) -> None:
        if self._renewing is not None:
            self._renewing.cancel()
