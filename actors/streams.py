"""The session's side of notification streams: its children, their events, its listeners.

Each stream is a child NotificationActor owned by the session actor (it dies with it); events
come back through `deliver`, get the session's next number, are stored, then pushed to every
open /events listener. Streams that were running come back when the session is rebuilt.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import ray

from actors.chat import repair

if TYPE_CHECKING:
    from actors.session import SessionActor

MAX_RUNNING = 5
log = logging.getLogger(__name__)


def stream_context(history: list[dict[str, Any]], noti_id: str, task: str) -> list[dict[str, Any]]:
    """A valid conversation for the child: the session's context, its own ID and its task."""
    context = [dict(m) for m in history]
    for reply in repair(context):
        reply["content"] = f"Notification stream started with ID {noti_id}"
        context.append(reply)
    context.append({"role": "system", "content": (
        f"You are now running as notification stream {noti_id}. Your task: {task}\n"
        "Each round, use the tools to check, and call send_notification(msg) when there is "
        f"something to tell the user. When the task is complete, call "
        f"stop_notification(noti_id=\"{noti_id}\").")})
    return context


class SessionStreams:
    def __init__(self, session: SessionActor) -> None:
        self._session = session
        self._children: dict[str, Any] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._listeners: set[asyncio.Queue[dict[str, Any]]] = set()
        self._resumed = False

    # store helpers ------------------------------------------------------------------------------
    async def _db(self, method: str, *args: Any) -> Any:
        s = self._session
        return await asyncio.to_thread(getattr(s.store, method), s.key, *args)

    async def listing(self) -> list[dict[str, Any]]:
        return [{k: row[k] for k in ("noti_id", "status", "started_at", "sent")}
                for row in await self._db("streams")]

    # life cycle ---------------------------------------------------------------------------------
    async def resume(self) -> None:
        """Bring back the streams that were running when the last incarnation died."""
        if self._resumed:
            return
        self._resumed = True
        for row in await self._db("streams"):
            if row["status"] == "running":
                self._spawn(row["noti_id"], row["spec"])

    def _spawn(self, noti_id: str, spec: dict[str, Any]) -> None:
        from actors.notification import NotificationActorRemote

        child = NotificationActorRemote.options(num_cpus=0, max_restarts=0).remote(
            ray.get_runtime_context().current_actor, self._session_id(), noti_id, spec,
            self._session.settings)
        self._children[noti_id] = child
        self._watchers[noti_id] = asyncio.create_task(self._watch(noti_id, child.run.remote()))

    def _session_id(self) -> str:
        return self._session.context().session_id

    async def _watch(self, noti_id: str, done: Any) -> None:
        """A child that dies on its own is reported failed."""
        try:
            await done
        except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as exc:
            if noti_id in self._children:
                log.warning("notification stream %s died: %s", noti_id, type(exc).__name__)
                await self._finish(noti_id, "failed")
        except asyncio.CancelledError:
            pass

    async def start(self, task: str, interval_seconds: float | None) -> str:
        running = [r for r in await self._db("streams") if r["status"] == "running"]
        if len(running) >= MAX_RUNNING:
            return (f"Refused: this session already runs {MAX_RUNNING} notification streams "
                    "(the most allowed); stop one first.")
        interval = max(1.0, interval_seconds or self._session.settings.notify_interval)
        noti_id = str(uuid.uuid4())
        spec = {"task": task, "interval": interval,
                "context": stream_context(self._session.history(), noti_id, task)}
        await self._db("put_stream", self._session.epoch, noti_id, spec, "running")
        self._spawn(noti_id, spec)
        return f"Notification stream started with ID {noti_id}"

    async def stop(self, noti_id: str) -> str:
        """stop_notification from the chat: only this session's streams."""
        if await self.stop_by_api(noti_id):
            return f"Notification stream {noti_id} stopped."
        return f"This session has no running notification stream with ID {noti_id}."

    async def stop_by_api(self, noti_id: str) -> bool:
        rows = {r["noti_id"]: r for r in await self._db("streams")}
        if noti_id not in rows:
            return False
        if rows[noti_id]["status"] == "running":
            await self._finish(noti_id, "stopped")
        return True

    async def stopped(self, noti_id: str, status: str) -> None:
        """A child stopped itself (its model called stop_notification)."""
        await self._finish(noti_id, status)

    async def _finish(self, noti_id: str, status: str) -> None:
        await self._db("set_stream_status", self._session.epoch, noti_id, status)
        child = self._children.pop(noti_id, None)
        watcher = self._watchers.pop(noti_id, None)
        if watcher is not None and watcher is not asyncio.current_task():
            watcher.cancel()
        if child is not None:
            ray.kill(child, no_restart=True)

    async def stop_all(self) -> None:
        for noti_id in list(self._children):
            await self._finish(noti_id, "stopped")

    async def send(self, message: str) -> str:
        return "send_notification works only inside a notification stream."

    # events -------------------------------------------------------------------------------------
    async def deliver(self, noti_id: str, message: str) -> str:
        if noti_id not in self._children:
            return "This stream is stopped; nothing was sent."
        seq, at = await self._db("add_event", self._session.epoch, noti_id, message)
        item = {"id": seq, "noti_id": noti_id, "message": message, "at": at}
        for queue in list(self._listeners):
            queue.put_nowait(item)
        return "Notification sent"

    async def subscribe(self, after: int) -> AsyncIterator[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._listeners.add(queue)  # before the replay, so nothing falls in between
        try:
            last = after
            for seq, noti_id, message, at in await self._db("events_after", after):
                last = seq
                yield {"id": seq, "noti_id": noti_id, "message": message, "at": at}
            while True:
                item = await queue.get()
                if item["id"] > last:
                    last = item["id"]
                    yield item
        finally:
            self._listeners.discard(queue)
