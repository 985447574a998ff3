"""The turn in flight: its events, kept while it runs, for every reader of it.

The turn runs in a task of the session actor; the POST that started it and any later
`GET /turn` (a reloaded page, a second tab) read the same log from its start, then live.
When the turn ends, the log goes with it: the history in the store is the record.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

STOPPED_NOTE = "_(stopped)_"


class TurnLog:
    def __init__(self, turn_id: str) -> None:
        self.turn_id = turn_id
        self.events: list[dict[str, Any]] = []
        self.done = False
        self.task: asyncio.Task[None] | None = None
        self.pending: asyncio.Future[None] | None = None  # the journal write in progress
        self.partial: list[str] = []  # text streamed since the last journaled message
        self.account: str | None = None  # who pays for its model calls
        self._wake = asyncio.Event()
        self._taken = 0  # events that some reader has taken: those never change

    def add(self, item: dict[str, Any]) -> None:
        """Append an event; a token that follows a token no reader has taken yet joins it
        (each item a reader takes crosses Ray: a reader that lags takes fewer, larger ones,
        and every reader, live or replaying, still sees the same events)."""
        last = self.events[-1] if self.events else None
        if (item["event"] == "token" and last is not None and last["event"] == "token"
                and len(self.events) > self._taken):
            text = last["data"]["text"] + item["data"]["text"]
            self.events[-1] = {"event": "token", "data": {"text": text}}
        else:
            self.events.append(item)
        self._notify()

    def finish(self) -> None:
        self.done = True
        self._notify()

    def _notify(self) -> None:
        self._wake.set()
        self._wake = asyncio.Event()

    async def follow(self) -> AsyncIterator[dict[str, Any]]:
        """Every event from the first, then each new one, until the turn ends."""
        i = 0
        while True:
            while i < len(self.events):
                item = self.events[i]
                i += 1
                self._taken = max(self._taken, i)
                yield item
            if self.done:
                return
            await self._wake.wait()
