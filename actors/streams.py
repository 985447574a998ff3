"""The session's side of notification streams: its children and their records.

Each stream is a child NotificationActor created by the session actor (so Ray kills it with
its owner, and only its session holds its handle). Events come back through the session's
`deliver`, which hands them to `EventHub` (actors/events.py) to be numbered, stored and pushed.
Streams that were running come back when the session's actor is rebuilt or reactivated
(`resume`). Collaborators are explicit: the session's journal, its settings, its history and
its event hub; nothing here reaches back into the session actor.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from collections.abc import Callable
from typing import Any

import ray

from actors.events import EventHub
from actors.journal import SessionJournal
from actors.metrics import record
from actors.settings import Settings
from actors.store import Fenced

MAX_RUNNING = 5
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


def stream_interval(requested: float | None, default: float, minimum: float = 1.0) -> float:
    """Seconds between rounds: the request, else the server's default; at least `minimum`
    (LLMCAM_MIN_STREAM_INTERVAL) and 1."""
    value = default if requested is None else float(requested)
    if not math.isfinite(value):
        value = default
    return max(1.0, minimum, value)


class SessionStreams:
    def __init__(self, journal: SessionJournal, settings: Settings, events: EventHub,
                 history: Callable[[], list[dict[str, Any]]], session_id: str) -> None:
        self._journal = journal
        self._settings = settings
        self._events = events
        self._history = history
        self._session_id = session_id
        self._children: dict[str, Any] = {}  # noti_id -> handle, running streams only
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._life = asyncio.Lock()  # start, stop and resume one at a time
        self._closed = False

    @property
    def running(self) -> int:
        """Streams running here (each keeps the session's actor live)."""
        return len(self._children)

    async def _rows(self) -> dict[str, dict[str, Any]]:
        return {row["noti_id"]: row for row in await self._journal.streams()}

    async def listing(self) -> list[dict[str, Any]]:
        return [{k: row[k] for k in ("noti_id", "status", "started_at", "sent")}
                for row in await self._journal.streams()]

    # life cycle ---------------------------------------------------------------------------------
    async def resume(self) -> None:
        """Bring back the streams that are running in the store but have no actor here (those
        of an earlier incarnation of this session's actor, which ended with it)."""
        async with self._life:
            if self._closed:
                return
            for noti_id, row in (await self._rows()).items():
                if row["status"] == "running" and noti_id not in self._children:
                    if time.time() >= float(row["spec"].get("expires_at") or math.inf):
                        await self._journal.set_stream_status(noti_id, "expired")
                        continue
                    log.info("resuming notification stream %s", noti_id)
                    self._spawn(noti_id, row["spec"])

    def _spawn(self, noti_id: str, spec: dict[str, Any]) -> None:
        from actors.notification import NotificationActorRemote

        child = NotificationActorRemote.options(num_cpus=0, max_restarts=0,
                                                max_task_retries=0).remote(
            ray.get_runtime_context().current_actor, self._session_id, noti_id, spec,
            self._settings)
        self._children[noti_id] = child
        self._watchers[noti_id] = asyncio.create_task(
            self._watch(noti_id, child, child.run.remote()))

    async def _watch(self, noti_id: str, child: Any, done: Any) -> None:
        """A child that ends on its own stopped itself; one that dies is reported failed."""
        try:
            status = "expired" if await done == "expired" else "stopped"
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("notification stream %s died: %s", noti_id, type(exc).__name__)
            status = "failed"
        async with self._life:
            if self._children.get(noti_id) is child:
                await self._finish(noti_id, status)

    async def start(self, task: str, interval_seconds: float | None,
                    account: str | None = None) -> str:
        """A new stream, paid by `account`; refused over this session's or the account's
        number of running streams (LLMCAM_USER_STREAMS, counted over all its sessions)."""
        settings = self._settings
        async with self._life:
            if self._closed:
                return "Refused: this session is being deleted."
            running = [r for r in (await self._rows()).values() if r["status"] == "running"]
            if len(running) >= MAX_RUNNING:
                return (f"Refused: this session already runs {MAX_RUNNING} notification "
                        "streams, the most allowed. Stop one with stop_notification first.")
            interval = stream_interval(interval_seconds, settings.notify_interval,
                                       settings.min_stream_interval)
            noti_id = str(uuid.uuid4())
            spec = {"task": task, "interval": interval, "account": account,
                    "expires_at": time.time() + settings.stream_hours * 3600,
                    "context": stream_context(self._history(), noti_id, task)}
            if not await self._journal.put_stream(noti_id, spec, "running", account,
                                                  settings.user_streams):
                record("limited", limit="LLMCAM_USER_STREAMS")
                return (f"Refused: the user already runs {settings.user_streams} notification "
                        "streams, the most allowed (LLMCAM_USER_STREAMS). Stop one with "
                        "stop_notification first.")
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
                await self._finish(noti_id, status if status in ("stopped", "failed",
                                                                 "expired") else "stopped")

    async def _finish(self, noti_id: str, status: str) -> None:
        """End one stream (the caller holds `_life`): no more events, no more model calls,
        and its actor gone."""
        child = self._children.pop(noti_id, None)
        watcher = self._watchers.pop(noti_id, None)
        if watcher is not None and watcher is not asyncio.current_task():
            watcher.cancel()
        try:
            await self._journal.set_stream_status(noti_id, status)
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

    def close(self) -> None:
        """The actor is passivating (no stream runs): start no more."""
        self._closed = True

    async def send(self, message: str) -> str:
        return "send_notification works only inside a notification stream."

    # events -------------------------------------------------------------------------------------
    async def deliver(self, noti_id: str, message: str) -> str:
        """From a child: number, store and push one notification (in order, exactly once)."""
        if noti_id not in self._children:
            return "This stream is stopped; nothing was sent."
        await self._events.publish(noti_id, message)
        return "Notification sent"
