"""A session's journal: the store bound to one session and one epoch (this incarnation of its
actor). Every write is fenced by that epoch; every call runs off the actor's event loop."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from actors.store import FileInfo, Store, StoredMessage
from actors.store.sql import Epoch

log = logging.getLogger(__name__)


class SessionJournal:
    """`epoch` is the session actor's, or a NotifierEpoch: the journal of its notification
    child, which writes only events, stream status and files."""

    def __init__(self, store: Store, key: str, epoch: Epoch) -> None:
        self.store, self.key, self.epoch = store, key, epoch

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.to_thread(fn, self.key, *args)

    async def _write(self, fn: Any, *args: Any) -> Any:
        return await asyncio.to_thread(fn, self.key, self.epoch, *args)

    # is this incarnation still the session's? --------------------------------------------------
    async def current(self) -> bool | None:
        """True while this epoch owns the session, False once a newer one does, None when the
        session is gone."""
        epoch = await self._run(self.store.epoch)
        return None if epoch is None else epoch == self.epoch

    # messages and turns -------------------------------------------------------------------------
    async def messages(self) -> list[StoredMessage]:
        return await self._run(self.store.messages)

    async def begin_turn(self, turn_id: str, user: dict[str, Any],
                         account: str | None = None) -> bool:
        return await self._write(self.store.begin_turn, turn_id, user, account)

    async def append(self, turn_id: str | None, bodies: list[dict[str, Any]]) -> None:
        await self._write(self.store.append, turn_id, bodies)

    async def finish_turn(self, turn_id: str) -> None:
        await self._write(self.store.finish_turn, turn_id)

    async def turn_done(self, turn_id: str) -> bool:
        return await self._run(self.store.turn_done, turn_id)

    # costs --------------------------------------------------------------------------------------
    async def add_tokens(self, account: str | None, prompt: int, completion: int) -> None:
        await self._run(self.store.add_tokens, account, prompt, completion)

    async def add_usage(self, account: str | None, usage: dict[str, Any]) -> None:
        """One model call's token counts (a `usage` event), for this session and `account`;
        with the store down the work goes on and that cost goes uncounted."""
        try:
            await self.add_tokens(account, int(usage.get("prompt_tokens") or 0),
                                  int(usage.get("completion_tokens") or 0))
        except Exception:
            log.warning("token counts not recorded")

    async def usage(self) -> dict[str, int]:
        return await self._run(self.store.session_usage)

    async def usage_today(self, account: str) -> dict[str, int]:
        return await asyncio.to_thread(self.store.usage_today, account)

    async def running_streams(self, account: str) -> int:
        return await asyncio.to_thread(self.store.running_streams, account)

    # added tools --------------------------------------------------------------------------------
    async def put_service(self, name: str, spec: dict[str, Any]) -> None:
        await self._write(self.store.put_service, name, spec)

    async def remove_service(self, name: str) -> bool:
        return await self._write(self.store.remove_service, name)

    # files --------------------------------------------------------------------------------------
    async def put_file(self, name: str, kind: str, data: bytes) -> None:
        await self._write(self.store.put_file, name, kind, data)

    async def files(self) -> list[FileInfo]:
        return await self._run(self.store.files)

    async def file(self, name: str) -> tuple[str, bytes] | None:
        return await self._run(self.store.file, name)

    # notification events and streams ------------------------------------------------------------
    async def add_event(self, noti_id: str, message: str,
                        keep: int | None = None) -> tuple[int, float]:
        return await self._write(self.store.add_event, noti_id, message, keep)

    async def events_after(self, after: int,
                           limit: int | None = None) -> list[tuple[int, str, str, float]]:
        return await self._run(self.store.events_after, after, limit)

    async def put_stream(self, noti_id: str, spec: dict[str, Any], status: str,
                         account: str | None = None, limit: int | None = None) -> bool:
        return await self._write(self.store.put_stream, noti_id, spec, status, account, limit)

    async def set_stream_status(self, noti_id: str, status: str) -> None:
        await self._write(self.store.set_stream_status, noti_id, status)

    async def streams(self) -> list[dict[str, Any]]:
        return await self._run(self.store.streams)

    async def delete(self) -> None:
        await self._run(self.store.delete_session)
