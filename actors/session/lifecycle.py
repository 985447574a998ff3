"""One activation's lifecycle, apart from what the session does (Orleans' ActivationData and
ActivationCollector, kept out of the grain).

States: `spare` (a process started ahead of any user, not yet a session) → `live` (it has
taken over the session's journal) → `closing` (it decided to go: new calls are refused with
`Passivating`, and the gateway asks again and gets the next activation) or `gone` (the
session was deleted, or never existed). A live activation ends itself after `idle_seconds`
with no call in flight and nothing else going on (only inbound calls count as use, not its own
timers), or when the registry asks it to make room and it is idle, or when a newer
incarnation owns the session. It tells the cluster's registry when it comes up, that it is
used (at most every REPORT_EVERY_S) and when it goes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import ray

from actors.errors import Passivating, SessionGone
from actors.session.registry import registry_handle

REPORT_EVERY_S = 1.0  # how often a busy session tells the registry it was used
log = logging.getLogger(__name__)


class Lifecycle:
    """`load` takes the session over (False: it does not exist); `quiet` says the session has
    nothing going on besides inbound calls (no turn running, no /events listener); `closing`
    lets go of what the activation holds beside the journal (its streams' child, scratch)."""

    def __init__(self, key: str, idle_seconds: float, load: Callable[[], bool],
                 quiet: Callable[[], bool], closing: Callable[[], None]) -> None:
        self._key = key
        self._idle_seconds = idle_seconds
        self._load = load
        self._quiet = quiet
        self._closing = closing
        self.state = "spare"  # -> live -> closing | gone
        self._busy = 0
        self._last_used = time.monotonic()
        self._reported = 0.0
        self._registry: Any = None

    def live(self) -> None:
        """The session is loaded: report it, and watch for idleness from now on."""
        self.state = "live"
        self._last_used = time.monotonic()
        self._registry = registry_handle()
        if self._registry is not None:
            self._registry.up.remote(self._key)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on the actor's loop (a unit test): no background work
            return
        if self._idle_seconds > 0:
            loop.create_task(self._watch_idle())

    def enter(self) -> None:
        """Before serving a call: a spare takes its session over first; one that is going or
        gone refuses."""
        if self.state == "spare" and not self._load():
            raise SessionGone(self._key)
        if self.state == "closing":
            raise Passivating(self._key)
        if self.state == "gone":
            raise SessionGone(self._key)

    @contextmanager
    def active(self) -> Iterator[None]:
        """One inbound call (or one open stream of events) in flight."""
        self.enter()
        self._busy += 1
        try:
            yield
        finally:
            self._busy -= 1
            self.used()
            now = time.monotonic()
            if self._registry is not None and now - self._reported >= REPORT_EVERY_S:
                self._reported = now
                self._registry.touch.remote(self._key, time.time())

    def used(self) -> None:
        self._last_used = time.monotonic()

    def idle(self) -> bool:
        return self.state == "live" and self._busy == 0 and self._quiet()

    async def _watch_idle(self) -> None:
        idle = self._idle_seconds
        period = min(max(idle / 4, 0.05), 30.0)
        while self.state == "live":
            await asyncio.sleep(period)
            if self.idle() and time.monotonic() - self._last_used >= idle:
                await self.passivate("idle")

    async def passivate_if_idle(self) -> bool:
        """The registry needs room: go if idle (True), stay if busy (False)."""
        if self.state != "live":
            return True
        if not self.idle():
            return False
        await self.passivate("shed")
        return True

    def superseded(self) -> NoReturn:
        """A newer incarnation owns the session: go, and refuse the call that found out."""
        log.info("a newer incarnation owns this session; ending this one")
        asyncio.get_running_loop().create_task(self.passivate("superseded"))
        raise Passivating(self._key)

    async def passivate(self, reason: str) -> None:
        """End this activation cleanly: refuse new calls, then exit after the last write
        (nothing is in flight: the actor was idle, or it no longer owns the session)."""
        if self.state not in ("live", "spare"):
            return
        self.state = "closing"
        self._closing()
        if self._registry is not None:
            self._registry.gone.remote(self._key, reason)
        log.info("passivating (%s)", reason)
        ray.get_runtime_context().current_actor.__ray_terminate__.remote()

    def expire_after(self, seconds: float) -> None:
        """A spare that no new user claims in time ends itself (its gateway is gone or no
        longer needs it)."""
        asyncio.get_running_loop().call_later(seconds, self._expire)

    def _expire(self) -> None:
        if self.state == "spare":
            ray.kill(ray.get_runtime_context().current_actor, no_restart=True)

    def deleted(self) -> None:
        """The session was deleted: refuse everything from now on."""
        if self.state in ("live", "closing") and self._registry is not None:
            self._registry.gone.remote(self._key, "deleted")
        self.state = "gone"
