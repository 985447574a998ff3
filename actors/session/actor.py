"""SessionActor: the live activation of one browser session. It owns the session's messages,
tools, files and notification streams while it is live; the store is the durable copy it is
rebuilt from.

Session actors are virtual (Orleans' grains on Ray): a session is a row in the store, and its
actor exists while it is used. It ends itself after `idle_seconds` with no call in flight and no
open /events stream (only inbound calls count as use, not its own timers; its notification
streams run on in its child, actors/session/notification.py), or when the cluster's registry asks it
to make room and it is idle. From the moment it decides to go it refuses new calls
(`Passivating`: the gateway asks again and gets the next activation), so nothing is half-served
by an actor that is ending; the epoch fence in the store makes a turn that raced the handover
count once.

Named `session:<key>` in namespace `llmcam`, detached, asking for no CPU while it waits.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import ray

from actors._ray import release_memory
from actors.confirm import Confirmations
from actors.context import ToolContext, Web
from actors.errors import LLMFailed, NotFound, Passivating, SessionGone
from actors.llm import LLM
from actors.metrics import record
from actors.net.guard import UrlGuard
from actors.session.events import EventHub
from actors.session.files import SessionFiles, content_type, file_name
from actors.session.names import NAMESPACE, actor_name, session_key
from actors.session.registry import registry_handle
from actors.session.streams import SessionStreams
from actors.session.turn_log import STOPPED_NOTE, TurnLog
from actors.settings import Settings
from actors.store import Fenced, open_store
from actors.store.journal import SessionJournal
from actors.toolbox import Toolbox
from actors.tools import builtin_tools
from actors.turn_loop import SchemaCache, event, repair, run_turn

SYSTEM_PROMPT = (
    "You are llmcam, a helpful assistant that can capture frames from live cameras, detect "
    "objects, answer questions about images, plot counts and watch cameras in the background. "
    "Use the supplied tools. When a tool makes a file, show it to the user as a markdown "
    "image of its name under files/, like ![name](files/name)."
)
REPORT_EVERY_S = 1.0  # how often a busy session tells the registry it was used
log = logging.getLogger(__name__)


class SessionActor:
    def __init__(self, session_id: str, settings: Settings, spare: bool = False) -> None:
        self._sid = session_id
        self._key = session_key(session_id)
        self._settings = settings
        self._store = open_store(settings.db_url, migrate=False)
        self._state = "spare"  # -> live -> closing | gone
        self._created_at = time.time()
        # Everything that does not depend on the session's data is made now, also for a spare
        # (an actor started ahead of any user, so that no new user waits for a process).
        self._lock = asyncio.Lock()  # turns of one session run one after another, in order
        self._llm = LLM(settings, self._key)
        self._web = Web(UrlGuard(settings.allow_hosts))
        self._toolbox = Toolbox(builtin_tools(settings), self._persist_service)
        self._schemas = SchemaCache()  # the tool schemas, kept while the toolbox is unchanged
        self._busy = 0
        self._last_used = time.monotonic()
        self._reported = 0.0
        self._turn: TurnLog | None = None
        self._confirmations = Confirmations(settings.confirm_tools, settings.confirm_seconds)
        self._registry: Any = None
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
        self._history = [m.body for m in stored]
        self._turn_ids: list[str | None] = [m.turn_id for m in stored]
        settings = self._settings
        self._files = SessionFiles(journal, settings.max_files, settings.max_session_bytes)
        self._events = EventHub(journal, settings.max_listeners, settings.max_replay)
        self._streams = SessionStreams(journal, settings, self.history)
        for name, spec in self._store.services(self._key).items():
            try:
                self._toolbox.restore(name, spec, settings.tool_modules)
            except Exception:  # a module that went away: the session lives on without it
                continue
        missing = repair(self._history)
        if missing:
            self._store.append(self._key, epoch, None, missing)
            self._history += missing
            self._turn_ids += [None] * len(missing)
        self._state = "live"
        self._last_used = time.monotonic()
        self._registry = registry_handle()
        if self._registry is not None:
            self._registry.up.remote(self._key)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on the actor's loop (a unit test): no background work
            return True
        # Its child pushes events here from now on; streams that have no child (a crash, a
        # cluster restart) get one at once.
        loop.create_task(self._attach_streams())
        if settings.idle_seconds > 0:
            loop.create_task(self._watch_idle())
        return True

    def __repr__(self) -> str:
        # Ray prefixes log lines with this: the key, never the session ID.
        return f"SessionActor({self._key})"

    def history(self) -> list[dict[str, Any]]:
        return list(self._history)

    def context(self, account: str | None = None) -> ToolContext:
        return ToolContext(self._sid, self._settings, self._web, self._files,
                           self._llm, self._toolbox, self._streams, account=account)

    async def _persist_service(self, name: str, spec: dict[str, Any] | None) -> None:
        if spec is None:
            await self._journal.remove_service(name)
        else:
            await self._journal.put_service(name, spec)

    # activity: what keeps the actor live -------------------------------------------------------
    def _enter(self) -> None:
        if self._state == "spare" and not self._load():
            raise SessionGone(self._key)
        if self._state == "closing":
            raise Passivating(self._key)
        if self._state == "gone":
            raise SessionGone(self._key)

    @contextmanager
    def _active(self) -> Iterator[None]:
        """One inbound call (or one open stream of events) in flight."""
        self._enter()
        self._busy += 1
        try:
            yield
        finally:
            self._busy -= 1
            self._last_used = time.monotonic()
            self._report_use()

    def _report_use(self) -> None:
        now = time.monotonic()
        if self._registry is not None and now - self._reported >= REPORT_EVERY_S:
            self._reported = now
            self._registry.touch.remote(self._key, time.time())

    def _idle(self) -> bool:
        return (self._state == "live" and self._busy == 0 and self._turn is None
                and self._events.listening == 0)

    async def _fresh(self) -> None:
        """Before answering from memory: is this still the session's incarnation? (Another
        gateway with its own Ray may have taken the session over through a shared store.)"""
        current = await self._journal.current()
        if current is None:
            self._state = "gone"
            raise SessionGone(self._key)
        if not current:
            self._superseded()

    def _superseded(self) -> None:
        log.info("a newer incarnation owns this session; ending this one")
        asyncio.get_running_loop().create_task(self._passivate("superseded"))
        raise Passivating(self._key)

    async def _watch_idle(self) -> None:
        idle = self._settings.idle_seconds
        period = min(max(idle / 4, 0.05), 30.0)
        while self._state == "live":
            await asyncio.sleep(period)
            if self._idle() and time.monotonic() - self._last_used >= idle:
                await self._passivate("idle")

    async def passivate_if_idle(self) -> bool:
        """The registry needs room: go if idle (True), stay if busy (False)."""
        if self._state != "live":
            return True
        if not self._idle():
            return False
        await self._passivate("shed")
        return True

    async def _passivate(self, reason: str) -> None:
        """End this activation cleanly: refuse new calls, then exit after the last write
        (nothing is in flight: the actor was idle, or it no longer owns the session)."""
        if self._state not in ("live", "spare"):
            return
        self._state = "closing"
        if hasattr(self, "_streams"):
            self._streams.close()
        if self._registry is not None:
            self._registry.gone.remote(self._key, reason)
        log.info("passivating (%s)", reason)
        self._remove_scratch()
        ray.get_runtime_context().current_actor.__ray_terminate__.remote()

    def _remove_scratch(self) -> None:
        """The shell's working directory lives as long as this activation (it is on this
        node's disk, not in the store)."""
        if self._settings.enable_shell:
            from actors.tools.shell import remove_scratch

            remove_scratch(self._key)

    # what the gateway calls ----------------------------------------------------------------------
    async def warm(self, expire_after: float) -> dict[str, Any]:
        """A spare's first call: ready, and gone by itself if no new user claims it in time."""
        asyncio.get_running_loop().call_later(expire_after, self._expire)
        release_memory()
        return {"pid": os.getpid()}

    def _expire(self) -> None:
        if self._state == "spare":  # still a spare: its gateway is gone or no longer needs it
            ray.kill(ray.get_runtime_context().current_actor, no_restart=True)

    async def start(self) -> dict[str, Any]:
        """Bring the actor up; answers its pid for memory checks."""
        with self._active():
            await self._fresh()
            release_memory()
            return {"pid": os.getpid()}

    async def _attach_streams(self) -> None:
        try:
            await self._streams.attach(ray.get_runtime_context().current_actor)
        except Exception:  # the registry's supervision brings running streams back
            log.exception("attaching the notification streams failed")

    async def info(self) -> dict[str, Any]:
        with self._active():
            await self._fresh()
            return {"session_id": self._sid, "created_at": self._created_at,
                    "message_count": len(self._history),
                    "notifications": await self._streams.listing(),
                    "usage": await self._journal.usage()}

    async def messages(self) -> list[dict[str, Any]]:
        with self._active():
            await self._fresh()
            return self.history()

    async def tool_schemas(self) -> list[dict[str, Any]]:
        with self._active():
            await self._fresh()
            return self._toolbox.schemas()

    # turns ---------------------------------------------------------------------------------------
    async def chat(self, turn_id: str, content: str,
                   account: str | None = None) -> AsyncIterator[dict[str, Any]]:
        """One turn, streamed. A retried turn_id is never recorded twice. The turn runs in a
        task of its own: a reader that goes away (or a second reader) changes nothing. Its
        model calls are paid by `account` (the caller: a user, or a client address)."""
        with self._active():
            await self._lock.acquire()
            try:
                turn = await self._begin(turn_id, content, account)
            except BaseException:
                self._lock.release()
                raise
            yield event("accepted")  # recorded: the gateway may send this session's next turn
            async for item in turn.follow():
                if item["event"] == "moved":
                    raise Passivating(self._key)
                yield item

    async def _begin(self, turn_id: str, content: str, account: str | None) -> TurnLog:
        """Record the user's message (once) and start the turn; the caller holds the lock,
        which the turn's task releases when it ends."""
        user = {"role": "user", "content": content}
        try:
            fresh = await self._journal.begin_turn(turn_id, user, account)
        except Fenced:
            self._superseded()
        turn = TurnLog(turn_id)
        turn.account = account
        if fresh:
            self._history.append(user)
            self._turn_ids.append(turn_id)
        elif await self._journal.turn_done(turn_id):
            # A retry of a turn that an earlier incarnation finished: answer from the journal.
            messages = self._turn_messages(turn_id)
            replies = [m for m in messages if m["role"] == "assistant" and m.get("content")]
            turn.add(event("done", reply=replies[-1]["content"] if replies else "",
                           messages=messages))
            turn.finish()
            self._lock.release()
            return turn
        self._turn = turn
        turn.task = asyncio.create_task(self._run(turn))
        return turn

    async def _run(self, turn: TurnLog) -> None:
        turn_id = turn.turn_id

        async def journal(bodies: list[dict[str, Any]]) -> None:
            # Shielded: a Stop that lands mid-write lets the write and the history agree.
            write = asyncio.ensure_future(self._record(turn_id, bodies))
            turn.pending = write
            await asyncio.shield(write)
            turn.partial.clear()

        messages = [{"role": "system", "content": SYSTEM_PROMPT}, *self._history]
        started, outcome, streaming = time.monotonic(), "error", False
        try:
            async for item in run_turn(self._llm, self._settings.model, messages,
                                       self._toolbox.tools, self.context(turn.account),
                                       self._settings.max_rounds,
                                       max_tool_calls=self._settings.max_tool_calls,
                                       schemas=self._schemas,
                                       max_context_tokens=self._settings.max_context_tokens,
                                       confirmations=self._confirmations):
                if item["event"] == "messages":  # journaled before the turn goes on
                    await journal(item["data"]["messages"])
                    continue
                if item["event"] == "usage":  # what this model call cost, and whom
                    await self._journal.add_usage(turn.account, item["data"])
                    continue
                if item["event"] == "token":
                    if not streaming:
                        streaming = True
                        record("turn_first_token", time.monotonic() - started)
                    turn.partial.append(item["data"]["text"])
                if item["event"] == "done":
                    outcome = "done"
                    await self._journal.finish_turn(turn_id)
                    item = event("done", reply=item["data"]["reply"],
                                 messages=self._turn_messages(turn_id))
                turn.add(item)
        except LLMFailed as exc:
            await self._finish_quietly(turn_id)
            turn.add(event("error", detail=str(exc), status=502))
        except Fenced:
            turn.add(event("moved"))  # a newer incarnation owns the session: it goes on there
            asyncio.get_running_loop().create_task(self._passivate("superseded"))
        except asyncio.CancelledError:
            outcome = "stopped"
            await self._stopped(turn)
        except Exception as exc:  # a bug must not leave the page waiting forever
            log.exception("turn failed")
            await self._finish_quietly(turn_id)
            turn.add(event("error", detail=f"the turn failed: {type(exc).__name__}",
                           status=500))
        finally:
            record("turn_done", time.monotonic() - started, outcome=outcome)
            turn.finish()
            if self._turn is turn:
                self._turn = None
            self._last_used = time.monotonic()
            self._lock.release()

    async def _record(self, turn_id: str | None, bodies: list[dict[str, Any]]) -> None:
        await self._journal.append(turn_id, bodies)
        self._history.extend(bodies)
        self._turn_ids.extend([turn_id] * len(bodies))

    async def _finish_quietly(self, turn_id: str) -> None:
        try:
            await self._journal.finish_turn(turn_id)
        except Fenced:
            pass

    async def _stopped(self, turn: TurnLog) -> None:
        """Stop pressed: keep what was said, answer the tool calls that did not finish, and
        mark the reply stopped, so the history stays a valid conversation."""
        if turn.pending is not None:
            try:
                await turn.pending
            except Exception:
                pass
        said = "".join(turn.partial)
        added = repair(self._history)
        for message in added:
            message["content"] = "Stopped by the user before this tool finished."
        last = self._history[-1] if self._history else {}
        finished = last.get("role") == "assistant" and not last.get("tool_calls")
        if said or not finished or added:
            added.append({"role": "assistant",
                          "content": f"{said}\n\n{STOPPED_NOTE}" if said else STOPPED_NOTE})
        try:
            if added:
                await self._record(turn.turn_id, added)
            await self._journal.finish_turn(turn.turn_id)
        except Fenced:
            return
        turn.add(event("done", reply=said, stopped=True,
                       messages=self._turn_messages(turn.turn_id)))

    async def current_turn(self) -> AsyncIterator[dict[str, Any]]:
        """The turn in flight, from its start and then live; nothing when there is none."""
        with self._active():
            turn = self._turn
            if turn is None:
                return
            async for item in turn.follow():
                if item["event"] != "moved":
                    yield item

    async def confirm_call(self, call_id: str, allow: bool) -> None:
        """The user's answer to a `confirm` of the turn in flight; NotFound when no such call
        waits."""
        with self._active():
            if not self._confirmations.answer(call_id, allow):
                raise NotFound("no tool call with that call_id waits for an answer")

    async def stop_turn(self) -> bool:
        """Stop the turn in flight (True), or say there is none (False)."""
        with self._active():
            turn = self._turn
            if turn is None or turn.task is None or turn.task.done():
                return False
            turn.task.cancel()
            await asyncio.wait([turn.task])
            return True

    def _turn_messages(self, turn_id: str) -> list[dict[str, Any]]:
        return [m for m, t in zip(self._history, self._turn_ids, strict=True) if t == turn_id]

    # files ---------------------------------------------------------------------------------------
    async def files(self) -> list[dict[str, Any]]:
        with self._active():
            await self._fresh()
            return [vars(f) for f in await self._files.list()]

    async def file(self, name: str) -> tuple[str, bytes]:
        """Bytes of this session's file; the name must be exactly one of its names."""
        with self._active():
            await self._fresh()
            found = await self._files.get(name) if file_name(name) == name else None
            if found is None:
                raise NotFound("no such file in this session")
            return content_type(name), found[1]

    async def save_file(self, kind: str, stem: str, data: bytes, ext: str) -> str:
        with self._active():
            return await self._files.save(kind, stem, data, ext)

    async def delete(self) -> None:
        """Stop the streams, forget everything; the gateway then kills this actor."""
        if self._state == "spare" and not self._load():
            self._state = "gone"
            return
        if self._state in ("live", "closing"):
            self._state = "gone"
            await self._streams.stop_all()
            await self._journal.delete()
            self._remove_scratch()
            if self._registry is not None:
                self._registry.gone.remote(self._key, "deleted")
        self._state = "gone"

    # notification streams (see streams.py) ------------------------------------------------
    async def notifications(self) -> list[dict[str, Any]]:
        with self._active():
            await self._fresh()
            return await self._streams.listing()

    async def stop_stream(self, noti_id: str) -> None:
        with self._active():
            if not await self._streams.stop_by_api(noti_id):
                raise NotFound("unknown notification stream")

    def push_event(self, item: dict[str, Any]) -> None:
        """From the session's notification child: an event it stored, for the open /events
        listeners (not a use: streams do not keep this actor live)."""
        if self._state == "live":
            self._events.push(item)

    async def events(self, after: int) -> AsyncIterator[dict[str, Any]]:
        """For one /events client: first `{"ready": True}` (or the refusal, before any
        stream starts), then every stored event after `after`, then live ones."""
        with self._active():
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
