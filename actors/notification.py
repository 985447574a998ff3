"""NotificationActor: one background stream of a session, owned by (and dying with) it.

Every `interval` seconds after the previous round ended, it runs one function-calling round on
its copy of the session's context, with the camera and vision tools plus `send_notification`
and `stop_notification` bound to itself. It reaches its session only through the parent handle.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import openai
import ray

from actors.chat import LLMFailed, run_turn
from actors.context import ToolContext
from actors.netguard import UrlGuard, guarded_client
from actors.settings import Settings
from actors.store import FileInfo
from actors.tools import builtin_tools

KEEP_ROUNDS = 4  # earlier rounds of the stream's own talk kept in its context
log = logging.getLogger(__name__)


class ParentFiles:
    """The session's files, reached through the session actor (streams may run elsewhere)."""

    def __init__(self, parent: Any) -> None:
        self._parent = parent

    async def save(self, kind: str, stem: str, data: bytes, ext: str) -> str:
        return await self._parent.save_file.remote(kind, stem, data, ext)

    async def read(self, name: str) -> bytes:
        return await self._parent.read_file.remote(name)

    async def list(self, kind: str | None = None) -> list[FileInfo]:
        return await self._parent.list_files.remote(kind)


class OwnStream:
    """send/stop as seen from inside a stream: they act on this stream only."""

    def __init__(self, actor: NotificationActor) -> None:
        self._actor = actor

    async def start(self, task: str, interval_seconds: float | None) -> str:
        return "A notification stream cannot start another stream."

    async def send(self, message: str) -> str:
        if self._actor.stopped:
            return "This stream is stopped; nothing was sent."
        return await self._actor.parent.deliver.remote(self._actor.noti_id, message)

    async def stop(self, noti_id: str) -> str:
        if noti_id != self._actor.noti_id:
            return f"This stream is {self._actor.noti_id}; it can only stop itself."
        self._actor.stopped = True
        return "Notification stream stopped."


class NotificationActor:
    def __init__(self, parent: Any, session_id: str, noti_id: str, spec: dict[str, Any],
                 settings: Settings) -> None:
        self.parent = parent
        self.noti_id = noti_id
        self.stopped = False
        self._interval = float(spec["interval"])
        self._context: list[dict[str, Any]] = spec["context"]
        self._own: list[list[dict[str, Any]]] = []
        self._settings = settings
        self._client = openai.AsyncOpenAI(api_key=settings.openai_api_key or "not-set",
                                          base_url=settings.openai_base_url, max_retries=1,
                                          timeout=120)
        guard = UrlGuard(settings.allow_hosts)
        self._tools = builtin_tools(settings, in_stream=True)
        self._ctx = ToolContext(session_id, settings, guard, guarded_client(guard),
                                ParentFiles(parent), None, OwnStream(self))

    def __repr__(self) -> str:
        return f"NotificationActor({self.noti_id})"

    async def run(self) -> str:
        """Rounds until stopped; a failing round is logged and tried again next interval."""
        n = 0
        while not self.stopped:
            await asyncio.sleep(self._interval)
            n += 1
            try:
                await self._round(n)
            except LLMFailed as exc:
                log.warning("stream %s round %d: %s", self.noti_id, n, exc)
            except Exception:
                log.exception("stream %s round %d failed", self.noti_id, n)
        await self.parent.stream_stopped.remote(self.noti_id, "stopped")
        return "stopped"

    async def _round(self, n: int) -> None:
        prompt = {"role": "user", "content": (
            f"Round {n} of notification stream {self.noti_id} at "
            f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}: check now.")}
        added: list[dict[str, Any]] = [prompt]

        async def journal(bodies: list[dict[str, Any]]) -> None:
            added.extend(bodies)

        history = [*self._context, *(m for r in self._own for m in r), prompt]
        async for _ in run_turn(self._client, self._settings.model, history,
                                lambda: self._tools, self._ctx, journal,
                                self._settings.max_rounds):
            if self.stopped:
                break
        if added[-1].get("role") == "assistant" and not added[-1].get("tool_calls"):
            self._own = [*self._own, added][-KEEP_ROUNDS:]


NotificationActorRemote = ray.remote(NotificationActor)
