"""Session actors started ahead of any user (`SparePool`), and the session IDs they and every
new session get."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from contextlib import suppress
from typing import Any

import ray
from ray.actor import ActorHandle

from actors.session.actor import SessionActorRemote, session_options
from actors.settings import Settings


def new_session_id() -> str:
    """256 random bits: the ID is the capability to the session."""
    return secrets.token_urlsafe(32)


class SparePool:
    """Session actors started ahead of any user, under IDs nobody has been given yet.

    Starting an actor's worker process costs about a second of CPU; a burst of new users would
    queue behind it. A spare is an actor that is up but not yet a session (no row in the store),
    so it answers nothing until the gateway gives its ID to a new user. Each spare also costs a
    process that wakes every 10 ms, so the pool is sized to the demand seen: as many as sessions
    were created in the last `DEMAND_S` (at most LLMCAM_SPARE_SESSIONS), none for a laptop that
    creates a session an hour. Spares are refilled one at a time after each claim; those over
    the demand are ended, and a spare unclaimed for an hour ends itself.
    """

    EXPIRE_AFTER = 3600.0
    DEMAND_S = 600.0
    CHECK_S = 60.0

    def __init__(self, settings: Settings, scheduling: Any = None) -> None:
        self.settings = settings
        self.scheduling = scheduling
        self.size = settings.spare_sessions
        self._ready: list[tuple[str, ActorHandle]] = []
        self._task: asyncio.Task[None] | None = None
        self._wanted = asyncio.Event()
        self._taken: deque[float] = deque()  # when sessions were created, within DEMAND_S

    @property
    def target(self) -> int:
        horizon = time.monotonic() - self.DEMAND_S
        while self._taken and self._taken[0] < horizon:
            self._taken.popleft()
        return min(self.size, len(self._taken))

    def take(self) -> tuple[str, ActorHandle] | None:
        if self.size > 0:
            self._taken.append(time.monotonic())
            self._wanted.set()
        return self._ready.pop(0) if self._ready else None

    def start(self) -> None:
        if self.size > 0 and self._task is None:
            self._task = asyncio.create_task(self._fill())

    async def _fill(self) -> None:
        while True:
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wanted.wait(), self.CHECK_S)
            self._wanted.clear()
            while len(self._ready) > self.target:  # less demand than spares: end the oldest
                _, handle = self._ready.pop(0)
                ray.kill(handle, no_restart=True)
            while len(self._ready) < self.target:
                try:
                    self._ready.append(await self._make())
                except Exception:  # Ray busy or going away: try again later
                    await asyncio.sleep(5)

    async def _make(self) -> tuple[str, ActorHandle]:
        session_id = new_session_id()
        handle = await asyncio.to_thread(
            lambda: SessionActorRemote.options(
                **session_options(session_id, self.scheduling)).remote(
                session_id, self.settings, True))
        await handle.warm.remote(self.EXPIRE_AFTER)
        return session_id, handle

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for _, handle in self._ready:
            ray.kill(handle, no_restart=True)
        self._ready.clear()
