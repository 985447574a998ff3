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
STARTING = 4
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
        self.spares = SparePool(settings)
        # Each new actor process costs about a second of CPU: started all at once they share
        # the cores and every user waits for the slowest; a few at a time, most answer early.
        self._starting = asyncio.Semaphore(STARTING)

    async def create(self) -> str:
        """A new session, on a spare actor when one is ready (no process start on the path)."""
        spare = self.spares.take()
        session_id = spare[0] if spare else new_session_id()
        await asyncio.to_thread(self.store.create_session, session_key(session_id))
        if spare:
            try:
                await spare[1].start.remote()
                self._handles[session_key(session_id)] = spare[1]
            except ray.exceptions.RayActorError:
                pass  # the spare died; handle() below starts a fresh actor
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
        async with self._starting:  # a burst starts processes a few at a time, not all at once
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


class SparePool:
    """Session actors started ahead of any user, under IDs nobody has been given yet.

    Starting an actor's worker process costs about a second of CPU; a burst of new users would
    queue behind it. A spare is an actor that is up but not yet a session (no row in the store),
    so it answers nothing until the gateway gives its ID to a new user. Spares are refilled one
    at a time after each claim, and a spare unclaimed for an hour ends itself.
    """

    EXPIRE_AFTER = 3600.0

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.size = settings.spare_sessions
        self._ready: list[tuple[str, ActorHandle]] = []
        self._task: asyncio.Task[None] | None = None
        self._wanted = asyncio.Event()

    def take(self) -> tuple[str, ActorHandle] | None:
        self._wanted.set()
        return self._ready.pop(0) if self._ready else None

    def start(self) -> None:
        if self.size > 0 and self._task is None:
            self._task = asyncio.create_task(self._fill())
            self._wanted.set()

    async def _fill(self) -> None:
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            while len(self._ready) < self.size:
                try:
                    self._ready.append(await self._make())
                except Exception:  # Ray busy or going away: try again later
                    await asyncio.sleep(5)

    async def _make(self) -> tuple[str, ActorHandle]:
        session_id = new_session_id()
        handle = await asyncio.to_thread(
            lambda: SessionActorRemote.options(**session_options(session_id)).remote(
                session_id, self.settings, True))
        await handle.warm.remote(self.EXPIRE_AFTER)
        return session_id, handle

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for _, handle in self._ready:
            ray.kill(handle, no_restart=True)
        self._ready.clear()
