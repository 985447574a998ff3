"""The session's side of notification streams: their records, and its one child.

A stream is a row in the store; the session's child NotificationActor (notification.py) runs
every running row of the session and stores their events itself, so the session's own actor
may passivate while they run. Here the chat's tools and the API start and stop streams:
the row is written first (under the session's epoch), then the child is told to match the rows
(`sync_child`). A live session's actor tells its child where to push events (`attach`).
Collaborators are explicit: the session's journal, its settings and its history; nothing here
reaches back into the session actor.
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

from actors.metrics import record
from actors.session.notification import stop_child, sync_child
from actors.settings import Settings
from actors.store.journal import SessionJournal

MAX_RUNNING = 5
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
    def __init__(self, journal: SessionJournal, settings: Settings,
                 history: Callable[[], list[dict[str, Any]]]) -> None:
        self._journal = journal
        self._settings = settings
        self._history = history
        self._life = asyncio.Lock()  # start, stop and delete one at a time
        self._closed = False

    async def _rows(self) -> dict[str, dict[str, Any]]:
        return {row["noti_id"]: row for row in await self._journal.streams()}

    async def listing(self) -> list[dict[str, Any]]:
        return [{k: row[k] for k in ("noti_id", "status", "started_at", "sent")}
                for row in await self._journal.streams()]

    async def _sync(self, session: Any = None) -> None:
        try:
            await sync_child(self._journal.key, self._settings, session)
        except Exception:  # the registry's supervision starts it later; the row stands
            log.exception("the notification actor could not be told")

    # life cycle ---------------------------------------------------------------------------------
    async def attach(self, session: Any) -> None:
        """The session's actor is live: its child (started where running rows have none,
        after a crash or a cluster restart) pushes events to it from now on."""
        rows = await self._rows()
        if any(r["status"] == "running" for r in rows.values()):  # else it has no child
            await self._sync(session)

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
            await self._sync(_me())
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
            await self._finish(noti_id)
        return f"Notification stream {noti_id} stopped."

    async def stop_by_api(self, noti_id: str) -> bool:
        """DELETE …/notifications/{noti_id}: False when this session has no such stream."""
        async with self._life:
            row = (await self._rows()).get(noti_id)
            if row is None:
                return False
            if row["status"] == "running":
                await self._finish(noti_id)
        return True

    async def _finish(self, noti_id: str) -> None:
        """End one stream (the caller holds `_life`): its row first, then the child stops
        its task (no model call of it follows once this returns)."""
        await self._journal.set_stream_status(noti_id, "stopped")
        await self._sync()

    async def stop_all(self) -> None:
        """The session is being deleted: stop every stream and start no more."""
        async with self._life:
            self._closed = True
            await stop_child(self._journal.key)

    def close(self) -> None:
        """The actor is passivating: it starts no more (its streams run on in the child)."""
        self._closed = True

    async def send(self, message: str) -> str:
        return "send_notification works only inside a notification stream."


def _me() -> Any:
    import ray

    return ray.get_runtime_context().current_actor
