"""SessionActor: one per browser session. It owns the session's messages, tools, files and
notification streams; the store is the durable copy it is rebuilt from.

Named `session:<key>` in namespace `llmcam`, detached, asking for no CPU while it waits.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import ray

from actors.chat import event, repair, run_turn
from actors.context import ToolContext, Web, file_name
from actors.errors import LLMFailed, NotFound, SessionGone
from actors.llm import LLM
from actors.names import NAMESPACE, actor_name, session_key
from actors.netguard import UrlGuard
from actors.session_files import SessionFiles, content_type
from actors.settings import Settings
from actors.store import Fenced, open_store
from actors.streams import SessionStreams
from actors.toolbox import Toolbox
from actors.tools import builtin_tools

SYSTEM_PROMPT = (
    "You are llmcam, a helpful assistant that can capture frames from live cameras, detect "
    "objects, answer questions about images, plot counts and watch cameras in the background. "
    "Use the supplied tools. When a tool makes a file, show it to the user as a markdown "
    "image of its name under files/, like ![name](files/name)."
)


def release_memory() -> None:
    """Hand freed heap back to the OS after start-up: hundreds of these actors share a node."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass


class SessionActor:
    def __init__(self, session_id: str, settings: Settings, spare: bool = False) -> None:
        self._sid = session_id
        self._key = session_key(session_id)
        self._settings = settings
        self._store = open_store(settings.db_url)
        self._gone = False
        self._loaded = False
        self._created_at = time.time()
        # Everything that does not depend on the session's data is made now, also for a spare
        # (an actor started ahead of any user, so that no new user waits for a process).
        self._lock = asyncio.Lock()
        self._llm = LLM(settings, self._key)
        self._web = Web(UrlGuard(settings.allow_hosts))
        self._toolbox = Toolbox(builtin_tools(settings), self._persist_service)
        self._streams = SessionStreams(self)
        if not spare:
            self._load()

    def _load(self) -> bool:
        """Take over the session's journal (a new epoch) and rebuild from it."""
        created = self._store.session_created_at(self._key)
        if created is None:
            return False
        self._created_at = created
        self._epoch = self._store.claim(self._key)
        stored = self._store.messages(self._key)
        self._history = [m.body for m in stored]
        self._turn_ids: list[str | None] = [m.turn_id for m in stored]
        self._files = SessionFiles(self._store, self._key, self._epoch)
        for name, spec in self._store.services(self._key).items():
            try:
                self._toolbox.restore(name, spec, self._settings.tool_modules)
            except Exception:  # a module that went away: the session lives on without it
                continue
        missing = repair(self._history)
        if missing:
            self._store.append(self._key, self._epoch, None, missing)
            self._history += missing
            self._turn_ids += [None] * len(missing)
        self._loaded = True
        return True

    def __repr__(self) -> str:
        # Ray prefixes log lines with this: the key, never the session ID.
        return f"SessionActor({self._key})"

    # plumbing used by the tools and the streams ------------------------------------------------
    @property
    def key(self) -> str:
        return self._key

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def store(self) -> Any:
        return self._store

    @property
    def settings(self) -> Settings:
        return self._settings

    def context(self, streams: Any = None) -> ToolContext:
        return ToolContext(self._sid, self._settings, self._web, self._files,
                           self._llm, self._toolbox, streams or self._streams)

    def history(self) -> list[dict[str, Any]]:
        return list(self._history)

    async def _persist_service(self, name: str, spec: dict[str, Any] | None) -> None:
        if spec is None:
            await asyncio.to_thread(self._store.remove_service, self._key, self._epoch, name)
        else:
            await asyncio.to_thread(self._store.put_service, self._key, self._epoch, name, spec)

    def _check(self) -> None:
        if self._gone or not (self._loaded or self._load()):
            raise SessionGone(self._key)

    # what the gateway calls ----------------------------------------------------------------------
    async def warm(self, expire_after: float) -> dict[str, Any]:
        """A spare's first call: ready, and gone by itself if no new user claims it in time."""
        asyncio.get_running_loop().call_later(expire_after, self._expire)
        release_memory()
        return {"pid": os.getpid()}

    def _expire(self) -> None:
        if not self._loaded:  # still a spare: its gateway is gone or no longer needs it
            ray.kill(ray.get_runtime_context().current_actor, no_restart=True)

    async def start(self) -> dict[str, Any]:
        """Bring the actor up (and its streams back); answers its pid for memory checks."""
        self._check()
        await self._streams.resume()
        release_memory()
        return {"pid": os.getpid()}

    async def info(self) -> dict[str, Any]:
        self._check()
        return {"session_id": self._sid, "created_at": self._created_at,
                "message_count": len(self._history),
                "notifications": await self._streams.listing()}

    async def messages(self) -> list[dict[str, Any]]:
        self._check()
        return self.history()

    async def tool_schemas(self) -> list[dict[str, Any]]:
        self._check()
        return self._toolbox.schemas()

    async def chat(self, turn_id: str, content: str) -> AsyncIterator[dict[str, Any]]:
        """One turn, streamed. A retried turn_id is never recorded twice."""
        self._check()
        async with self._lock:
            user = {"role": "user", "content": content}
            fresh = await asyncio.to_thread(self._store.begin_turn, self._key, self._epoch,
                                            turn_id, user)
            if fresh:
                self._history.append(user)
                self._turn_ids.append(turn_id)
            elif await asyncio.to_thread(self._store.turn_done, self._key, turn_id):
                turn = self._turn_messages(turn_id)
                replies = [m for m in turn if m["role"] == "assistant" and m.get("content")]
                yield event("done", reply=replies[-1]["content"] if replies else "")
                yield event("turn", messages=turn)
                return

            async def journal(bodies: list[dict[str, Any]]) -> None:
                await asyncio.to_thread(self._store.append, self._key, self._epoch, turn_id,
                                        bodies)
                self._history.extend(bodies)
                self._turn_ids.extend([turn_id] * len(bodies))

            messages = [{"role": "system", "content": SYSTEM_PROMPT}, *self._history]
            try:
                async for item in run_turn(self._llm, self._settings.model, messages,
                                           self._toolbox.tools, self.context(), journal,
                                           self._settings.max_rounds):
                    if item["event"] != "done":
                        yield item
                        continue
                    await self._finish(turn_id)
                    yield item
            except LLMFailed as exc:
                await self._finish(turn_id)
                yield event("error", detail=str(exc), status=502)
            except Fenced:
                return  # a newer incarnation took over this session
            yield event("turn", messages=self._turn_messages(turn_id))

    async def _finish(self, turn_id: str) -> None:
        await asyncio.to_thread(self._store.finish_turn, self._key, self._epoch, turn_id)

    def _turn_messages(self, turn_id: str) -> list[dict[str, Any]]:
        return [m for m, t in zip(self._history, self._turn_ids, strict=True) if t == turn_id]

    async def files(self) -> list[dict[str, Any]]:
        self._check()
        return [vars(f) for f in await self._files.list()]

    async def file(self, name: str) -> tuple[str, bytes]:
        """Bytes of this session's file; the name must be exactly one of its names."""
        self._check()
        found = await self._files.get(name) if file_name(name) == name else None
        if found is None:
            raise NotFound(name)
        return content_type(name), found[1]

    async def delete(self) -> None:
        """Stop the streams, forget everything; the gateway then kills this actor."""
        if not self._gone:
            await self._streams.stop_all()
            await asyncio.to_thread(self._store.delete_session, self._key)
        self._gone = True

    # notification streams (see actors/streams.py) ------------------------------------------------
    async def notifications(self) -> list[dict[str, Any]]:
        self._check()
        return await self._streams.listing()

    async def stop_stream(self, noti_id: str) -> None:
        self._check()
        if not await self._streams.stop_by_api(noti_id):
            raise NotFound(noti_id)

    async def deliver(self, noti_id: str, message: str) -> str:
        """Called by a child stream: number, store and push one notification."""
        self._check()
        return await self._streams.deliver(noti_id, message)

    async def stream_stopped(self, noti_id: str, status: str) -> None:
        self._check()
        await self._streams.stopped(noti_id, status)

    async def save_file(self, kind: str, stem: str, data: bytes, ext: str) -> str:
        self._check()
        return await self._files.save(kind, stem, data, ext)

    async def read_file(self, name: str) -> bytes:
        self._check()
        return await self._files.read(name)

    async def list_files(self, kind: str | None = None) -> list[Any]:
        self._check()
        return await self._files.list(kind)

    async def events(self, after: int) -> AsyncIterator[dict[str, Any]]:
        """Every stored event after `after`, then live ones, for one /events client."""
        self._check()
        async for item in self._streams.subscribe(after):
            yield item


SessionActorRemote = ray.remote(SessionActor)


def session_options(session_id: str) -> dict[str, Any]:
    """Named (every gateway finds it), detached (a gateway restart does not take it down),
    no CPU reserved while it waits, restarted by Ray but never retrying a turn by itself."""
    return {
        "name": actor_name(session_id), "namespace": NAMESPACE, "lifetime": "detached",
        "get_if_exists": True, "num_cpus": 0, "max_restarts": 3, "max_task_retries": 0,
    }
