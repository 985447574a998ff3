"""SessionActor: the live activation of one browser session. It owns the session's messages,
tools, files and notification streams while it is live; the store is the durable copy it is
rebuilt from.

Session actors are virtual (Orleans' grains on Ray): a session is a row in the store, and its
actor exists while it is used. When it is started, used, idle and ended is its lifecycle's
business (lifecycle.py); its turns are the turn driver's (turn.py); its notification streams
run in its child (notification.py), so they do not keep it live.

Named `session:<key>` in namespace `llmcam`, detached, asking for no CPU while it waits.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import ray

from actors._ray import release_memory
from actors.confirm import Confirmations
from actors.context import ToolContext, Web
from actors.errors import NotFound, Passivating, SessionGone
from actors.llm import LLM
from actors.net.guard import UrlGuard
from actors.session.events import EventHub
from actors.session.files import SessionFiles, content_type, file_name
from actors.session.lifecycle import Lifecycle
from actors.session.names import NAMESPACE, actor_name, session_key
from actors.session.streams import SessionStreams
from actors.session.turn import TurnDriver
from actors.settings import Settings
from actors.store import open_store
from actors.store.journal import SessionJournal
from actors.toolbox import Toolbox
from actors.tools import builtin_tools
from actors.turn_loop import SchemaCache, event, repair

log = logging.getLogger(__name__)


class SessionActor:
    def __init__(self, session_id: str, settings: Settings, spare: bool = False) -> None:
        self._sid = session_id
        self._key = session_key(session_id)
        self._settings = settings
        self._store = open_store(settings.db_url, migrate=False)
        self._life = Lifecycle(self._key, settings.idle_seconds, self._load, self._quiet,
                               self._closing)
        self._created_at = time.time()
        # Everything that does not depend on the session's data is made now, also for a spare
        # (an actor started ahead of any user, so that no new user waits for a process).
        self._llm = LLM(settings, self._key)
        self._web = Web(UrlGuard(settings.allow_hosts))
        self._toolbox = Toolbox(builtin_tools(settings), self._persist_service)
        self._schemas = SchemaCache()  # the tool schemas, kept while the toolbox is unchanged
        self._confirmations = Confirmations(settings.confirm_tools, settings.confirm_seconds)
        if not spare:
            self._load()

    def _load(self) -> bool:
        """Take over the session's journal (a new epoch) and rebuild from it."""
        created = self._store.session_created_at(self._key)
        if created is None:
            return False
        self._created_at = created
        epoch = self._store.claim(self._key)
        journal = self._journal = SessionJournal(self._store, self._key, epoch)
        stored = self._store.messages(self._key)
        history = [m.body for m in stored]
        turn_ids: list[str | None] = [m.turn_id for m in stored]
        settings = self._settings
        self._files = SessionFiles(journal, settings.max_files, settings.max_session_bytes)
        self._events = EventHub(journal, settings.max_listeners, settings.max_replay)
        self._streams = SessionStreams(journal, settings, self.history)
        for name, spec in self._store.services(self._key).items():
            try:
                self._toolbox.restore(name, spec, settings.tool_modules)
            except Exception:  # a module that went away: the session lives on without it
                continue
        missing = repair(history)
        if missing:
            self._store.append(self._key, epoch, None, missing)
            history += missing
            turn_ids += [None] * len(missing)
        self._turns = TurnDriver(journal, settings, self._llm, self._toolbox, self._schemas,
                                 self._confirmations, self.context, self._life.superseded,
                                 self._life.used, history, turn_ids)
        self._life.live()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on the actor's loop (a unit test): no background work
            return True
        # Its child pushes events here from now on; streams that have no child (a crash, a
        # cluster restart) get one at once.
        loop.create_task(self._attach_streams())
        return True

    def __repr__(self) -> str:
        # Ray prefixes log lines with this: the key, never the session ID.
        return f"SessionActor({self._key})"

    def history(self) -> list[dict[str, Any]]:
        return list(self._turns.history)

    def context(self, account: str | None = None) -> ToolContext:
        return ToolContext(self._sid, self._settings, self._web, self._files,
                           self._llm, self._toolbox, self._streams, account=account)

    async def _persist_service(self, name: str, spec: dict[str, Any] | None) -> None:
        if spec is None:
            await self._journal.remove_service(name)
        else:
            await self._journal.put_service(name, spec)

    # lifecycle (lifecycle.py) --------------------------------------------------------------------
    def _quiet(self) -> bool:
        return self._turns.current is None and self._events.listening == 0

    def _closing(self) -> None:
        if hasattr(self, "_streams"):
            self._streams.close()
        self._remove_scratch()

    def _remove_scratch(self) -> None:
        """The shell's working directory lives as long as this activation (it is on this
        node's disk, not in the store)."""
        if self._settings.enable_shell:
            from actors.tools.shell import remove_scratch

            remove_scratch(self._key)

    async def _fresh(self) -> None:
        """Before answering from memory: is this still the session's incarnation? (Another
        gateway with its own Ray may have taken the session over through a shared store.)"""
        current = await self._journal.current()
        if current is None:
            self._life.state = "gone"
            raise SessionGone(self._key)
        if not current:
            self._life.superseded()

    async def passivate_if_idle(self) -> bool:
        """The registry needs room: go if idle (True), stay if busy (False)."""
        return await self._life.passivate_if_idle()

    # what the gateway calls ----------------------------------------------------------------------
    async def warm(self, expire_after: float) -> dict[str, Any]:
        """A spare's first call: ready, and gone by itself if no new user claims it in time."""
        self._life.expire_after(expire_after)
        release_memory()
        return {"pid": os.getpid()}

    async def start(self) -> dict[str, Any]:
        """Bring the actor up; answers its pid for memory checks."""
        with self._life.active():
            await self._fresh()
            release_memory()
            return {"pid": os.getpid()}

    async def _attach_streams(self) -> None:
        try:
            await self._streams.attach(ray.get_runtime_context().current_actor)
        except Exception:  # the registry's supervision brings running streams back
            log.exception("attaching the notification streams failed")

    async def info(self) -> dict[str, Any]:
        with self._life.active():
            await self._fresh()
            return {"session_id": self._sid, "created_at": self._created_at,
                    "message_count": len(self._turns.history),
                    "notifications": await self._streams.listing(),
                    "usage": await self._journal.usage()}

    async def messages(self) -> list[dict[str, Any]]:
        with self._life.active():
            await self._fresh()
            return self.history()

    async def tool_schemas(self) -> list[dict[str, Any]]:
        with self._life.active():
            await self._fresh()
            return self._toolbox.schemas()

    # turns (turn.py) -----------------------------------------------------------------------------
    async def chat(self, turn_id: str, content: str,
                   account: str | None = None) -> AsyncIterator[dict[str, Any]]:
        """One turn, streamed. A retried turn_id is never recorded twice. The turn runs in a
        task of its own: a reader that goes away (or a second reader) changes nothing. Its
        model calls are paid by `account` (the caller: a user, or a client address)."""
        with self._life.active():
            turn = await self._turns.start(turn_id, content, account)
            yield event("accepted")  # recorded: the gateway may send this session's next turn
            async for item in turn.follow():
                if item["event"] == "moved":
                    raise Passivating(self._key)
                yield item

    async def current_turn(self) -> AsyncIterator[dict[str, Any]]:
        """The turn in flight, from its start and then live; nothing when there is none."""
        with self._life.active():
            turn = self._turns.current
            if turn is None:
                return
            async for item in turn.follow():
                if item["event"] != "moved":
                    yield item

    async def confirm_call(self, call_id: str, allow: bool) -> None:
        """The user's answer to a `confirm` of the turn in flight; NotFound when no such call
        waits."""
        with self._life.active():
            if not self._confirmations.answer(call_id, allow):
                raise NotFound("no tool call with that call_id waits for an answer")

    async def stop_turn(self) -> bool:
        """Stop the turn in flight (True), or say there is none (False)."""
        with self._life.active():
            return await self._turns.stop()

    # files ---------------------------------------------------------------------------------------
    async def files(self) -> list[dict[str, Any]]:
        with self._life.active():
            await self._fresh()
            return [vars(f) for f in await self._files.list()]

    async def file(self, name: str) -> tuple[str, bytes]:
        """Bytes of this session's file; the name must be exactly one of its names."""
        with self._life.active():
            await self._fresh()
            found = await self._files.get(name) if file_name(name) == name else None
            if found is None:
                raise NotFound("no such file in this session")
            return content_type(name), found[1]

    async def save_file(self, kind: str, stem: str, data: bytes, ext: str) -> str:
        with self._life.active():
            return await self._files.save(kind, stem, data, ext)

    async def delete(self) -> None:
        """Stop the streams, forget everything; the gateway then kills this actor."""
        life = self._life
        if life.state == "spare" and not self._load():
            life.deleted()
            return
        if life.state in ("live", "closing"):
            life.deleted()  # refuses every call from now on
            await self._streams.stop_all()
            await self._journal.delete()
            self._remove_scratch()
        life.deleted()

    # notification streams (see streams.py) ------------------------------------------------
    async def notifications(self) -> list[dict[str, Any]]:
        with self._life.active():
            await self._fresh()
            return await self._streams.listing()

    async def stop_stream(self, noti_id: str) -> None:
        with self._life.active():
            if not await self._streams.stop_by_api(noti_id):
                raise NotFound("unknown notification stream")

    def push_event(self, item: dict[str, Any]) -> None:
        """From the session's notification child: an event it stored, for the open /events
        listeners (not a use: streams do not keep this actor live)."""
        if self._life.state == "live":
            self._events.push(item)

    async def events(self, after: int) -> AsyncIterator[dict[str, Any]]:
        """For one /events client: first `{"ready": True}` (or the refusal, before any
        stream starts), then every stored event after `after`, then live ones."""
        with self._life.active():
            self._events.admit()
            try:
                yield {"ready": True}
                async for item in self._events.subscribe(after):
                    yield item
            finally:
                self._events.leave()


SessionActorRemote = ray.remote(SessionActor)


def session_options(session_id: str, scheduling: Any = None) -> dict[str, Any]:
    """Named (every gateway finds it), detached (a gateway restart does not take it down),
    no CPU reserved while it waits, restarted by Ray (a node lost) but never retrying a turn
    by itself; placed by `scheduling` (spread with a shared store, on the gateway's node with
    the embedded one)."""
    options = {
        "name": actor_name(session_id), "namespace": NAMESPACE, "lifetime": "detached",
        "get_if_exists": True, "num_cpus": 0, "max_restarts": 3, "max_task_retries": 0,
    }
    if scheduling is not None:
        options["scheduling_strategy"] = scheduling
    return options
