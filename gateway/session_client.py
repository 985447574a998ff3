"""The session client: the one place the gateway turns a session ID into a live actor.

It owns ID -> handle (a cache of handles, never of session state), activation (found live by
name, a spare handed over, or started: get-or-create by name, race-free), admission under the
cluster's cap (the registry may passivate the least recently used idle session to make room,
or answer that every live one is busy: `SessionsFull`, a 503 with Retry-After), the 404 for an
unknown session (also for a session that belongs to another user: the row names its owner),
and the retry when an actor died or is passivating, for plain calls and streamed ones alike.
Errors leave here as the types in actors/errors.py (`SessionsFull` and `LimitExceeded` among
them); gateway/errors.py maps each to its HTTP status once. Every method takes the `Caller`
(gateway/identity.py); `ForCaller` binds one, for the routes.

Over 300 lines on purpose: activation, admission and the retry through deaths are the
one path every call takes, read top to bottom.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import ray
from ray.actor import ActorHandle

from actors.errors import LimitExceeded, Passivating, SessionGone, SessionsFull
from actors.metrics import record
from actors.session.actor import SessionActorRemote, session_options
from actors.session.names import NAMESPACE, actor_name, session_key
from actors.session.notification import stop_child
from actors.settings import Settings
from actors.store import Store
from gateway.identity import Caller
from gateway.spares import SparePool, new_session_id

T = TypeVar("T")
CACHE_SIZE = 10_000
STARTING = 4  # actor processes started at once by one gateway
MAX_WAITING = 256  # cold activations queued behind those at one gateway
QUEUE_RETRY_S = 2
RETRY_S = 90.0  # how long a call follows its session through deaths and handovers (a lost
# node is declared dead after Ray's health checks fail, then its actors restart elsewhere)
CREATION_ATTEMPTS = 2  # a constructor that fails (store down) is not retried for long
log = logging.getLogger(__name__)
_MOVED = (Passivating, ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)


class SessionClient:
    def __init__(self, settings: Settings, store: Store, registry: Any,
                 scheduling: Any = None) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry
        self.scheduling = scheduling
        self._handles: OrderedDict[str, ActorHandle] = OrderedDict()
        self._owners: dict[str, str | None] = {}  # key -> owner, beside each cached handle
        self._activating: dict[str, asyncio.Lock] = {}
        self._turn_slots: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary())
        self.spares = SparePool(settings, scheduling)
        # Each new actor process costs about a second of CPU: started all at once they share
        # the cores and every user waits for the slowest; a few at a time, most answer early.
        self._starting = asyncio.Semaphore(STARTING)
        self._waiting = 0

    # creating ------------------------------------------------------------------------------------
    async def create(self, caller: Caller) -> str:
        """A new session of the caller's: a row in the store. A spare actor is handed over
        when one is ready and there is room; otherwise the first request activates it."""
        spare = self.spares.take()
        session_id = spare[0] if spare else new_session_id()
        key = session_key(session_id)
        await asyncio.to_thread(self.store.create_session, key, caller.user, session_id)
        if spare:
            handed = False
            try:
                if await self.registry.admit.remote(
                        key, caller.account, self.settings.user_live_sessions) is None:
                    await spare[1].start.remote()
                    self._remember(key, spare[1], caller.user)
                    record("activations", kind="warm")
                    handed = True
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
                pass  # the spare died: the first request starts a fresh actor
            if not handed:
                ray.kill(spare[1], no_restart=True)
        return session_id

    # activating ----------------------------------------------------------------------------------
    async def handle(self, session_id: str, caller: Caller) -> ActorHandle:
        """The session's live actor, activated if need be; another user's session is unknown."""
        key = session_key(session_id)
        cached = self._handles.get(key)
        if cached is not None:
            _check_owner(key, self._owners.get(key), caller)
            self._handles.move_to_end(key)
            return cached
        # Requests that arrive while the session is being activated wait for that activation
        # and then go on in their order of arrival (the lock is FIFO).
        lock = self._activating.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                cached = self._handles.get(key)
                if cached is not None:
                    _check_owner(key, self._owners.get(key), caller)
                    return cached
                row = await asyncio.to_thread(self.store.session_row, key)
                if row is None:
                    raise SessionGone(key)
                _check_owner(key, row.owner, caller)
                try:  # live already (another gateway's, or one this gateway forgot)
                    handle = await asyncio.to_thread(ray.get_actor, actor_name(session_id),
                                                     namespace=NAMESPACE)
                    record("activations", kind="warm")
                except ValueError:
                    handle = await self._activate(session_id, key, caller)
                self._remember(key, handle, row.owner)
                return handle
        finally:
            if self._activating.get(key) is lock and not lock.locked():
                del self._activating[key]

    async def _activate(self, session_id: str, key: str, caller: Caller) -> ActorHandle:
        refused = await self.registry.admit.remote(key, caller.account,
                                                   self.settings.user_live_sessions)
        if refused is not None and refused["limit"]:
            raise LimitExceeded(refused["limit"], "all of your live sessions are busy (at most "
                                f"{self.settings.user_live_sessions}, LLMCAM_USER_LIVE_SESSIONS)"
                                "; finish a turn or close a stream, then try again",
                                refused["wait"])
        if refused is not None:
            raise SessionsFull(refused["wait"])
        # A burst starts processes a few at a time, the others wait their turn in a queue
        # that is bounded: past it, the caller is told to come back (503 with Retry-After).
        if self._waiting >= MAX_WAITING:
            raise SessionsFull(QUEUE_RETRY_S)
        self._waiting += 1
        try:
            await self._starting.acquire()
        finally:
            self._waiting -= 1
        try:
            handle = await self._start_actor(session_id)
        finally:
            self._starting.release()
        record("activations", kind="cold")
        return handle

    async def _start_actor(self, session_id: str) -> ActorHandle:
        """Start the session's actor; a start that fails under load (the worker process did
        not come up in time) is tried once more before the caller hears of it."""
        for attempt in (1, 2):
            handle = await asyncio.to_thread(
                lambda: SessionActorRemote.options(
                    **session_options(session_id, self.scheduling)).remote(
                    session_id, self.settings))
            try:
                await handle.start.remote()
                return handle
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
                if attempt == 2:
                    raise
                log.warning("a session actor did not start; trying once more")
                ray.kill(handle, no_restart=True)
                await asyncio.sleep(0.5)
        raise AssertionError("unreachable")

    def _remember(self, key: str, handle: ActorHandle, owner: str | None) -> None:
        self._handles[key] = handle
        self._owners[key] = owner
        while len(self._handles) > CACHE_SIZE:
            old, _ = self._handles.popitem(last=False)
            self._owners.pop(old, None)

    def turn_slot(self, session_id: str) -> asyncio.Lock:
        """Held from a turn's submission until its actor has recorded it: this gateway hands a
        session's turns over one at a time, in their order of arrival, also when a submission
        has to follow the session to its next activation (Ray does not order an async actor's
        calls)."""
        key = session_key(session_id)
        slot = self._turn_slots.get(key)
        if slot is None:
            slot = self._turn_slots[key] = asyncio.Lock()
        return slot

    def forget(self, session_id: str) -> None:
        key = session_key(session_id)
        self._handles.pop(key, None)
        self._owners.pop(key, None)

    # calling -------------------------------------------------------------------------------------
    async def call(self, session_id: str, fn: Callable[[ActorHandle], Awaitable[T]],
                   caller: Caller) -> T:
        """Call the session's actor; one that died or is passivating is followed to the next
        activation and called again (the actor methods called this way are safe to repeat)."""
        retry = _Retry()
        while True:
            try:
                return await fn(await self.handle(session_id, caller))
            except _MOVED as exc:
                self.forget(session_id)
                await retry.wait(exc)

    async def stream(self, session_id: str, make: Callable[[ActorHandle], Any],
                     caller: Caller) -> AsyncIterator[Any]:
        """Items of a streamed actor call, followed through actor deaths: `make` is called
        again on the next activation (it may resume where the last items left off). The
        actor's generator is cancelled when the reader goes away."""
        retry = _Retry()
        while True:
            try:
                generator = make(await self.handle(session_id, caller))
                finished = False
                try:
                    async for ref in generator:
                        item = await ref
                        retry = _Retry()  # it answered: a later death gets a full RETRY_S
                        yield item
                    finished = True
                finally:
                    if not finished:  # cancelling a finished generator is a wasted RPC
                        _cancel(generator)
                return
            except _MOVED as exc:
                self.forget(session_id)
                await retry.wait(exc)

    async def delete(self, session_id: str, caller: Caller) -> None:
        key = session_key(session_id)
        row = await asyncio.to_thread(self.store.session_row, key)
        if row is None:
            raise SessionGone(key)
        _check_owner(key, row.owner, caller)
        self.forget(session_id)
        try:
            handle = await asyncio.to_thread(ray.get_actor, actor_name(session_id),
                                             namespace=NAMESPACE)
        except ValueError:
            handle = None  # not live: the store is all there is
        if handle is not None:
            try:
                # the actor stops its streams, deletes the rows and tells the registry
                await handle.delete.remote()
                handle_deleted = True
            except _MOVED:
                handle_deleted = False
            ray.kill(handle, no_restart=True)
            if handle_deleted:
                return
        await stop_child(key)  # its streams run on while the session's own actor rests
        await asyncio.to_thread(self.store.delete_session, key)
        self.registry.gone.remote(key, "deleted")


def _check_owner(key: str, owner: str | None, caller: Caller) -> None:
    """A session that belongs to a user is that user's alone (others get the 404 of an unknown
    session). One without an owner (made while nobody signed in) is reached by its ID."""
    if owner is not None and owner != caller.user:
        raise SessionGone(key)


class ForCaller:
    """The session client bound to one request's caller (what the routes use)."""

    def __init__(self, client: SessionClient, caller: Caller) -> None:
        self.client = client
        self.caller = caller

    async def create(self) -> str:
        return await self.client.create(self.caller)

    async def handle(self, session_id: str) -> ActorHandle:
        return await self.client.handle(session_id, self.caller)

    async def call(self, session_id: str, fn: Callable[[ActorHandle], Awaitable[T]]) -> T:
        return await self.client.call(session_id, fn, self.caller)

    def stream(self, session_id: str, make: Callable[[ActorHandle], Any]) -> AsyncIterator[Any]:
        return self.client.stream(session_id, make, self.caller)

    async def delete(self, session_id: str) -> None:
        await self.client.delete(session_id, self.caller)

    def turn_slot(self, session_id: str) -> asyncio.Lock:
        return self.client.turn_slot(session_id)


class _Retry:
    """Backoff while a session moves to its next activation, for at most RETRY_S."""

    def __init__(self) -> None:
        self._deadline = time.monotonic() + RETRY_S
        self._delay = 0.05
        self._creation_failures = 0

    async def wait(self, exc: BaseException) -> None:
        if getattr(exc, "actor_init_failed", False):  # its constructor failed: not forever
            self._creation_failures += 1
            if self._creation_failures >= CREATION_ATTEMPTS:
                raise exc
        if time.monotonic() + self._delay > self._deadline:
            raise exc
        await asyncio.sleep(self._delay)
        self._delay = min(self._delay * 2, 1.0)


def _cancel(generator: Any) -> None:
    """A reader that left must not leave a generator running in the session's actor."""
    try:
        ray.cancel(generator, recursive=False)
    except Exception:  # its actor is gone already
        pass
