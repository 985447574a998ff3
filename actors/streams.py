"""The session's side of notification streams: its children, their events, its listeners.

Each stream is a child NotificationActor created by the session actor (so Ray kills it with
its owner, and only its session holds its handle). Events come back through `deliver`, take
the session's next number, are stored, then pushed to every open /events listener; a listener
that falls behind is caught up from the store, so nothing is lost or repeated. Streams that were
running come back when the session's actor is rebuilt (its constructor schedules `resume`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import ray

from actors.errors import SessionGone
from actors.store import Fenced

if TYPE_CHECKING:
    from actors.session import SessionActor

MAX_RUNNING = 5
MAX_MESSAGE = 10_000  # characters of one notification
MAX_BACKLOG = 10_000  # undelivered events one listener may hold before it is caught up
STOP_TIMEOUT = 5.0  # seconds a child gets to end its round before it is killed anyway
log = logging.getLogger(__name__)

STREAM_PROMPT = (
    "You are llmcam's notification stream {noti_id}, running in the background for the user "
    "of the conversation below. Your task: {task}\n"
    "Each round you are asked to check: use the camera and vision tools as needed, call "
    "send_notification(msg) only when there is something the user should be told, and answer "
    "briefly otherwise. When the task is complete or can no longer be done, call "
    'stop_notification(noti_id="{noti_id}").'
)


def stream_context(history: list[dict[str, Any]], noti_id: str, task: str) -> list[dict[str, Any]]:
    """A valid conversation for the child: first a message naming its ID and task, then a copy
    of the session's context, every tool call in it answered."""
    context: list[dict[str, Any]] = [
        {"role": "system", "content": STREAM_PROMPT.format(noti_id=noti_id, task=task)}]
    context += [dict(m) for m in history]
    answered = {m.get("tool_call_id") for m in context if m.get("role") == "tool"}
    for message in list(context):
        for call in message.get("tool_calls") or []:
            if call.get("id") in answered:
                continue
            function = call.get("function") or {}
            ours = (function.get("name") == "start_notification_stream"
                    and _argument(function.get("arguments"), "task") == task)
            content = (f"Notification stream started with ID {noti_id}" if ours
                       else "(This result is not available to the notification stream.)")
            context.append({"role": "tool", "tool_call_id": call.get("id"), "content": content})
    return context


def _argument(arguments: Any, name: str) -> Any:
    try:
        parsed = json.loads(arguments or "{}")
    except (TypeError, ValueError):
        return None
    return parsed.get(name) if isinstance(parsed, dict) else None


def stream_interval(requested: float | None, default: float) -> float:
    """Seconds between rounds: the request, else the server's default; at least 1."""
    value = default if requested is None else float(requested)
    if not math.isfinite(value):
        value = default
    return max(1.0, value)


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


class SessionStreams:
    def __init__(self, session: SessionActor) -> None:
        self._session = session
        self._children: dict[str, Any] = {}  # noti_id -> handle, running streams only
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._listeners: set[_Listener] = set()
        self._life = asyncio.Lock()  # start, stop and resume one at a time
        self._numbering = asyncio.Lock()  # events are stored and pushed in one order
        self._closed = False
        self._resuming: asyncio.Task[None] | None = None
        try:
            # An async actor's constructor runs on its event loop (Ray 2.60): bring the streams
            # back now, so an actor Ray restarted resumes them before any request comes.
            self._resuming = asyncio.get_running_loop().create_task(self._resume_soon())
        except RuntimeError:
            pass

    # store helpers ------------------------------------------------------------------------------
    async def _db(self, method: str, *args: Any) -> Any:
        s = self._session
        return await asyncio.to_thread(getattr(s.store, method), s.key, *args)

    async def _rows(self) -> dict[str, dict[str, Any]]:
        return {row["noti_id"]: row for row in await self._db("streams")}

    async def listing(self) -> list[dict[str, Any]]:
        return [{k: row[k] for k in ("noti_id", "status", "started_at", "sent")}
                for row in await self._db("streams")]

    # life cycle ---------------------------------------------------------------------------------
    async def resume(self) -> None:
        """Bring back the streams that are running in the store but have no actor here (those
        of an earlier incarnation of this session's actor, which died with it)."""
        async with self._life:
            if self._closed:
                return
            for noti_id, row in (await self._rows()).items():
                if row["status"] == "running" and noti_id not in self._children:
                    log.info("resuming notification stream %s", noti_id)
                    self._spawn(noti_id, row["spec"])

    async def _resume_soon(self) -> None:
        try:
            # The session's own check loads it from the store if needed (an actor Ray restarts
            # may come back as the spare it was created as); a spare that no user has claimed
            # yet is no session, and has nothing to resume.
            self._session._check()  # noqa: SLF001 - what every session method does first
            await self.resume()
        except SessionGone:
            pass
        except Exception:  # start() tries again
            log.exception("resuming notification streams failed")

    def _spawn(self, noti_id: str, spec: dict[str, Any]) -> None:
        from actors.notification import NotificationActorRemote

        session = self._session
        child = NotificationActorRemote.options(num_cpus=0, max_restarts=0,
                                                max_task_retries=0).remote(
            ray.get_runtime_context().current_actor, session.context(streams=self).session_id,
            noti_id, spec, session.settings)
        self._children[noti_id] = child
        self._watchers[noti_id] = asyncio.create_task(
            self._watch(noti_id, child, child.run.remote()))

    async def _watch(self, noti_id: str, child: Any, done: Any) -> None:
        """A child that ends on its own stopped itself; one that dies is reported failed."""
        try:
            await done
            status = "stopped"
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("notification stream %s died: %s", noti_id, type(exc).__name__)
            status = "failed"
        async with self._life:
            if self._children.get(noti_id) is child:
                await self._finish(noti_id, status)

    async def start(self, task: str, interval_seconds: float | None) -> str:
        async with self._life:
            if self._closed:
                return "Refused: this session is being deleted."
            running = [r for r in (await self._rows()).values() if r["status"] == "running"]
            if len(running) >= MAX_RUNNING:
                return (f"Refused: this session already runs {MAX_RUNNING} notification "
                        "streams, the most allowed. Stop one with stop_notification first.")
            interval = stream_interval(interval_seconds, self._session.settings.notify_interval)
            noti_id = str(uuid.uuid4())
            spec = {"task": task, "interval": interval,
                    "context": stream_context(self._session.history(), noti_id, task)}
            await self._db("put_stream", self._session.epoch, noti_id, spec, "running")
            self._spawn(noti_id, spec)
        return f"Notification stream started with ID {noti_id}"

    async def stop(self, noti_id: str) -> str:
        """stop_notification from the chat: only this session's streams."""
        noti_id = noti_id.strip()
        async with self._life:
            row = (await self._rows()).get(noti_id)
            if row is None:
                return f"This session has no notification stream with ID {noti_id}."
            if row["status"] != "running":
                return f"Notification stream {noti_id} is already {row['status']}."
            await self._finish(noti_id, "stopped")
        return f"Notification stream {noti_id} stopped."

    async def stop_by_api(self, noti_id: str) -> bool:
        """DELETE …/notifications/{noti_id}: False when this session has no such stream."""
        async with self._life:
            row = (await self._rows()).get(noti_id)
            if row is None:
                return False
            if row["status"] == "running" or noti_id in self._children:
                await self._finish(noti_id, "stopped")
        return True

    async def stopped(self, noti_id: str, status: str) -> None:
        """A child reports that it ended (kept for children that call back)."""
        async with self._life:
            if noti_id in self._children:
                await self._finish(noti_id, status if status in ("stopped", "failed")
                                   else "stopped")

    async def _finish(self, noti_id: str, status: str) -> None:
        """End one stream (the caller holds `_life`): no more events, no more model calls,
        and its actor gone."""
        child = self._children.pop(noti_id, None)
        watcher = self._watchers.pop(noti_id, None)
        if watcher is not None and watcher is not asyncio.current_task():
            watcher.cancel()
        try:
            await self._db("set_stream_status", self._session.epoch, noti_id, status)
        except Fenced:
            pass  # a newer incarnation owns the session: its copy of the stream lives on
        if child is None:
            return
        try:  # let it end its round cleanly, so that no model call is left in flight
            await asyncio.wait_for(child.stop.remote(), STOP_TIMEOUT)
        except Exception:  # dead already, or stuck: the kill below settles it
            pass
        ray.kill(child, no_restart=True)

    async def stop_all(self) -> None:
        """The session is being deleted: stop every stream and start no more."""
        async with self._life:
            self._closed = True
            await asyncio.gather(*(self._finish(n, "stopped") for n in list(self._children)))

    async def send(self, message: str) -> str:
        return "send_notification works only inside a notification stream."

    # events -------------------------------------------------------------------------------------
    async def deliver(self, noti_id: str, message: str) -> str:
        """From a child: number, store and push one notification (in order, exactly once)."""
        message = str(message)[:MAX_MESSAGE]
        async with self._numbering:
            if noti_id not in self._children:
                return "This stream is stopped; nothing was sent."
            seq, at = await self._db("add_event", self._session.epoch, noti_id, message)
            item = {"id": seq, "noti_id": noti_id, "message": message, "at": at}
            for listener in list(self._listeners):
                listener.push(item)
        return "Notification sent"

    async def subscribe(self, after: int) -> AsyncIterator[dict[str, Any]]:
        """Every stored event after `after`, then live ones, each exactly once and in order."""
        last = max(0, int(after))
        listener = _Listener()
        try:
            while True:
                self._listeners.add(listener)  # before reading the store: nothing falls between
                for seq, noti_id, message, at in await self._db("events_after", last):
                    last = seq
                    yield {"id": seq, "noti_id": noti_id, "message": message, "at": at}
                while True:
                    item = await listener.queue.get()
                    if item is None:  # it fell behind: read the rest from the store
                        self._listeners.discard(listener)
                        listener = _Listener()
                        break
                    if item["id"] > last:
                        last = item["id"]
                        yield item
        finally:
            self._listeners.discard(listener)
