"""A session's notification events: numbered and stored by the session's notification child
(`publish`), then pushed to the session's actor, which hands them to every open /events listener
(`EventHub`). The store is the truth: a listener that falls behind, sees a gap in the numbers
(a push lost with an actor that died) or hears nothing for `CHECK_S` reads the store, so nothing
is lost or repeated. Bounded: listeners per session, and how many stored events one connection
replays."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from actors.errors import TooManyListeners
from actors.store.journal import SessionJournal

MAX_MESSAGE = 10_000  # characters of one notification
MAX_BACKLOG = 10_000  # undelivered events one listener may hold before it is caught up
CHECK_S = 15.0  # a quiet listener looks at the store this often (a push may have been lost)


async def publish(journal: SessionJournal, noti_id: str, message: str,
                  keep: int | None = None) -> dict[str, Any]:
    """Number and store one notification (the caller publishes one at a time)."""
    message = str(message)[:MAX_MESSAGE]
    seq, at = await journal.add_event(noti_id, message, keep)
    return {"id": seq, "noti_id": noti_id, "message": message, "at": at}


class _Listener:
    """One /events client: a bounded queue of live events."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.behind = False

    def push(self, item: dict[str, Any]) -> None:
        if self.behind:
            return
        if self.queue.qsize() >= MAX_BACKLOG:
            # Too slow: drop the backlog and tell the reader to catch up from the store.
            self.behind = True
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(None)
            return
        self.queue.put_nowait(item)


class EventHub:
    def __init__(self, journal: SessionJournal, max_listeners: int = 8,
                 max_replay: int = 1000) -> None:
        self._journal = journal
        self._max_listeners, self._max_replay = max_listeners, max_replay
        self._listeners: set[_Listener] = set()
        self._open = 0

    @property
    def listening(self) -> int:
        """Open /events connections (they keep the session's actor live)."""
        return self._open

    def push(self, item: dict[str, Any]) -> None:
        """A stored event, from the notification child: to every open listener."""
        for listener in list(self._listeners):
            listener.push(item)

    def admit(self) -> None:
        """Take a listener's place (before its stream starts), or refuse clearly; every
        admit is paired with a `leave`."""
        if self._open >= self._max_listeners:
            raise TooManyListeners(
                f"this session already has {self._open} open /events streams, the most "
                "allowed (LLMCAM_MAX_LISTENERS); close one")
        self._open += 1

    def leave(self) -> None:
        self._open -= 1

    async def subscribe(self, after: int) -> AsyncIterator[dict[str, Any]]:
        """Stored events after `after` (at most the newest `max_replay`), then live ones,
        each exactly once and in order."""
        last = max(0, int(after))
        listener = _Listener()
        try:
            while True:
                self._listeners.add(listener)  # before reading the store: nothing falls between
                for seq, noti_id, message, at in await self._journal.events_after(
                        last, self._max_replay):
                    last = seq
                    yield {"id": seq, "noti_id": noti_id, "message": message, "at": at}
                while True:
                    try:
                        item = await asyncio.wait_for(listener.queue.get(), CHECK_S)
                    except TimeoutError:  # quiet for a while: look at the store
                        break
                    if item is None:  # it fell behind: read the rest from the store
                        self._listeners.discard(listener)
                        listener = _Listener()
                        break
                    if item["id"] > last + 1:  # one went missing on its way: the store has it
                        break
                    if item["id"] > last:
                        last = item["id"]
                        yield item
        finally:
            self._listeners.discard(listener)
