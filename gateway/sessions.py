"""From a session ID to its live actor: get-or-create (race-free, by name), rebuild after a
death, and one mapping of actor failures to what the HTTP caller sees."""

from __future__ import annotations

import asyncio
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TypeVar

import ray
from fastapi import HTTPException
from ray.actor import ActorHandle

from actors.errors import SessionGone
from actors.names import session_key
from actors.session import SessionActorRemote, session_options
from actors.settings import Settings
from actors.store import SQLiteStore

T = TypeVar("T")
ATTEMPTS = 6
CACHE_SIZE = 10_000
UNKNOWN = "unknown session"


def new_session_id() -> str:
    """256 random bits: the ID is the capability to the session."""
    return secrets.token_urlsafe(32)


class Sessions:
    """The gateway's view of sessions. It caches handles, never session state."""

    def __init__(self, settings: Settings, store: SQLiteStore) -> None:
        self.settings = settings
        self.store = store
        self._handles: OrderedDict[str, ActorHandle] = OrderedDict()

    async def create(self) -> str:
        session_id = new_session_id()
        await asyncio.to_thread(self.store.create_session, session_key(session_id))
        await self.handle(session_id)
        return session_id

    async def handle(self, session_id: str) -> ActorHandle:
        key = session_key(session_id)
        cached = self._handles.get(key)
        if cached is not None:
            self._handles.move_to_end(key)
            return cached
        if await asyncio.to_thread(self.store.session_created_at, key) is None:
            raise HTTPException(404, UNKNOWN)
        handle = await asyncio.to_thread(
            lambda: SessionActorRemote.options(**session_options(session_id)).remote(
                session_id, self.settings))
        await handle.start.remote()
        self._handles[key] = handle
        while len(self._handles) > CACHE_SIZE:
            self._handles.popitem(last=False)
        return handle

    def forget(self, session_id: str) -> None:
        self._handles.pop(session_key(session_id), None)

    async def call(self, session_id: str, fn: Callable[[ActorHandle], Awaitable[T]]) -> T:
        """Call the session's actor; one that died is rebuilt from the store and called again."""
        for attempt in range(ATTEMPTS):
            try:
                return await fn(await self.handle(session_id))
            except SessionGone as exc:
                self.forget(session_id)
                raise HTTPException(404, UNKNOWN) from exc
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
                self.forget(session_id)
                if attempt == ATTEMPTS - 1:
                    raise
                await asyncio.sleep(0.1 * (attempt + 1))  # let a dying actor's name go
        raise AssertionError("unreachable")

    async def delete(self, session_id: str) -> None:
        handle = await self.handle(session_id)
        try:
            await handle.delete.remote()
        except ray.exceptions.RayActorError:
            await asyncio.to_thread(self.store.delete_session, session_key(session_id))
        self.forget(session_id)
        ray.kill(handle, no_restart=True)
