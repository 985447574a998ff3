"""NotificationActor: one background stream of a session, owned by (and dying with) it.

It runs one function-calling round at once, then one every `interval` seconds after the previous
round ended, on its copy of the session's context, with the camera and vision tools plus
`send_notification` and `stop_notification` bound to itself. It reaches its session only through
the parent handle it was given; nothing else holds a handle to it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from contextlib import aclosing, suppress
from typing import Any

import ray

from actors.chat import run_turn
from actors.context import ToolContext, Web
from actors.errors import LLMFailed
from actors.llm import LLM
from actors.netguard import UrlGuard
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
    """The notification tools as seen from inside a stream: they act on this stream only."""

    def __init__(self, actor: NotificationActor) -> None:
        self._actor = actor

    async def start(self, task: str, interval_seconds: float | None,
                    account: str | None = None) -> str:
        return "A notification stream cannot start another stream."

    async def send(self, message: str) -> str:
        if self._actor.stopped:
            return "This stream is stopped; nothing was sent."
        return await self._actor.parent.deliver.remote(self._actor.noti_id, message)

    async def stop(self, noti_id: str) -> str:
        if noti_id.strip() != self._actor.noti_id:
            return (f"This is notification stream {self._actor.noti_id}; it can only stop "
                    "itself.")
        self._actor.stopped = True
        return "Notification stream stopped."


class NotificationActor:
    def __init__(self, parent: Any, session_id: str, noti_id: str, spec: dict[str, Any],
                 settings: Settings) -> None:
        self.parent = parent
        self.noti_id = noti_id
        self.stopped = False
        self.expired = False
        self.rounds = 0
        self._interval = float(spec["interval"])
        self._account: str | None = spec.get("account")
        self._expires_at = float(spec.get("expires_at") or math.inf)
        self._context: list[dict[str, Any]] = spec["context"]
        self._task_text = str(spec.get("task", ""))
        self._own: list[list[dict[str, Any]]] = []
        self._settings = settings
        self._loop: asyncio.Task[None] | None = None
        llm = LLM(settings, noti_id)  # the shared OpenAI client actors, as the session's turns
        self._model = llm
        self._tools = builtin_tools(settings, in_stream=True)
        self._ctx = ToolContext(session_id, settings, Web(UrlGuard(settings.allow_hosts)),
                                ParentFiles(parent), llm, None, OwnStream(self))

    def __repr__(self) -> str:
        # Ray prefixes this actor's log lines with it: the stream's ID, never the session's.
        return f"NotificationActor({self.noti_id})"

    async def run(self) -> str:
        """Rounds until stopped (by its model or by `stop`), or until its hours are over;
        answers "stopped" or "expired" then. A failing round is logged and tried again at the
        next interval."""
        from actors._ray import release_memory

        release_memory()  # start-up garbage: many of these share a node
        self._loop = asyncio.create_task(self._rounds())
        with suppress(asyncio.CancelledError):
            await self._loop
        if not self.stopped:  # `run` itself was cancelled
            raise asyncio.CancelledError
        return "expired" if self.expired else "stopped"

    async def stop(self) -> None:
        """Stop now: the round in progress is cancelled, so no model call follows."""
        self.stopped = True
        loop = self._loop
        if loop is not None and not loop.done():
            loop.cancel()
            with suppress(asyncio.CancelledError):
                await loop

    async def ping(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "rounds": self.rounds, "stopped": self.stopped}

    async def _rounds(self) -> None:
        while not self.stopped:
            if time.time() >= self._expires_at:  # LLMCAM_STREAM_HOURS are over
                self.expired = self.stopped = True
                return
            self.rounds += 1
            try:
                if self._settings.token_budget > 0 and not await self.parent.budget_left.remote(
                        self._account):
                    log.info("stream %s skips a round: the day's token budget is spent",
                             self.noti_id)
                else:
                    await self._round(self.rounds)
            except LLMFailed as exc:
                log.warning("stream %s round %d: %s", self.noti_id, self.rounds, exc)
            except Exception:
                log.exception("stream %s round %d failed", self.noti_id, self.rounds)
            if not self.stopped:
                await asyncio.sleep(self._interval)

    async def _round(self, n: int) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        prompt = {"role": "user", "content": (
            f"Round {n} of notification stream {self.noti_id} ({stamp}). "
            f"Task: {self._task_text}\nCheck now.")}
        added: list[dict[str, Any]] = [prompt]
        history = [*self._context, *(m for r in self._own for m in r), prompt]
        turn = run_turn(self._model, self._settings.model, history, lambda: self._tools,
                        self._ctx, self._settings.max_rounds,
                        max_tool_calls=self._settings.max_tool_calls,
                        max_context_tokens=self._settings.max_context_tokens)
        async with aclosing(turn):
            async for item in turn:
                if item["event"] == "usage":  # paid by the user who started the stream
                    self.parent.stream_usage.remote(self._account, item["data"])
                    continue
                if item["event"] == "messages":  # the stream's own talk, kept for its context
                    added.extend(item["data"]["messages"])
                if self.stopped and item["event"] == "tool_result":
                    return  # it stopped itself: no further model call in this round
        if added[-1].get("role") == "assistant" and not added[-1].get("tool_calls"):
            self._own = [*self._own, added][-KEEP_ROUNDS:]


NotificationActorRemote = ray.remote(NotificationActor)
