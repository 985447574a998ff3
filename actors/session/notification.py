"""NotificationActor: the one child of a session that runs all of its notification streams.

The schedule is durable and the process is shared (as Orleans reminders are rows in a table):
a stream is a row in the store (`streams`: its task, interval, context, status), and the child
runs each running row as an asyncio task on its own loop, one function-calling round at once,
then one every `interval` seconds after the previous round ended, on its copy of the session's
context, with the camera and vision tools plus `send_notification` and `stop_notification`
bound to that stream.

The child goes on while the session's own actor rests. It stores and numbers the events itself,
under its own epoch fence (`NotifierEpoch`: a newer incarnation of the child makes an older one's
writes fail, as the session actor's epoch does for turns), and pushes each stored event to the
session's actor when that one is live (for its open `/events` listeners). Its model calls go
through the shared LLM client actors and count for the account that started the stream.

Named `notify:<key>` in namespace `llmcam`, detached (its session's actor may passivate under it),
restarted by Ray after its own death or its node's (it then resumes every running row), asking
for no CPU while it waits. `sync` is its one entry: it reads the session's rows and starts or
stops tasks to match them; with nothing left running the child ends itself. Whoever changes a
row (the session's actor, the registry's supervision after a cluster restart) calls `sync`.

Over 300 lines on purpose: the child, its epoch fence and the stream-bound tools share
one stream's state; apart, each would reach into the others.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from contextlib import aclosing, suppress
from typing import Any

import ray

from actors.context import ToolContext, Web
from actors.errors import LLMFailed
from actors.llm import LLM
from actors.net.guard import UrlGuard
from actors.session.events import publish
from actors.session.files import SessionFiles
from actors.session.names import NAMESPACE
from actors.settings import Settings
from actors.store import Fenced, is_shared, open_store
from actors.store.journal import SessionJournal
from actors.tools import builtin_tools
from actors.turn_loop import run_turn

PREFIX = "notify:"
SESSION_PREFIX = "session:"
KEEP_ROUNDS = 4  # earlier rounds of the stream's own talk kept in its context
STOP_TIMEOUT = 5.0  # seconds a stream gets to end its round when stopped from outside
log = logging.getLogger(__name__)


def child_name(key: str) -> str:
    return PREFIX + key


class OwnStream:
    """The notification tools as seen from inside one stream: they act on it only."""

    def __init__(self, stream: Stream) -> None:
        self._stream = stream

    async def start(self, task: str, interval_seconds: float | None,
                    account: str | None = None) -> str:
        return "A notification stream cannot start another stream."

    async def send(self, message: str) -> str:
        if self._stream.stopped:
            return "This stream is stopped; nothing was sent."
        await self._stream.child.deliver(self._stream.noti_id, message)
        return "Notification sent"

    async def stop(self, noti_id: str) -> str:
        if noti_id.strip() != self._stream.noti_id:
            return (f"This is notification stream {self._stream.noti_id}; it can only stop "
                    "itself.")
        self._stream.stopped = True
        return "Notification stream stopped."


class Stream:
    """One running stream: its rounds, as a task of the child."""

    def __init__(self, child: NotificationActor, noti_id: str, spec: dict[str, Any]) -> None:
        self.child = child
        self.noti_id = noti_id
        self.stopped = False
        self.expired = False
        self.rounds = 0
        self.account: str | None = spec.get("account")
        self._interval = float(spec["interval"])
        self._expires_at = float(spec.get("expires_at") or math.inf)
        self._context: list[dict[str, Any]] = spec["context"]
        self._task_text = str(spec.get("task", ""))
        self._own: list[list[dict[str, Any]]] = []
        self.ctx = child.tool_context(OwnStream(self), self.account)
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """Rounds until stopped (by its model, by `cancel`) or until its hours are over. A
        failing round is logged and tried again at the next interval."""
        child = self.child
        while not self.stopped:
            if time.time() >= self._expires_at:  # LLMCAM_STREAM_HOURS are over
                self.expired = self.stopped = True
                break
            self.rounds += 1
            try:
                if await child.budget_left(self.account):
                    await self._round(self.rounds)
                else:
                    log.info("stream %s skips a round: the day's token budget is spent",
                             self.noti_id)
            except Fenced:
                raise
            except LLMFailed as exc:
                log.warning("stream %s round %d: %s", self.noti_id, self.rounds, exc)
            except Exception:
                log.exception("stream %s round %d failed", self.noti_id, self.rounds)
            if not self.stopped:
                await asyncio.sleep(self._interval)
        await child.ended(self, "expired" if self.expired else "stopped")

    async def _round(self, n: int) -> None:
        child = self.child
        settings = child.settings
        stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        prompt = {"role": "user", "content": (
            f"Round {n} of notification stream {self.noti_id} ({stamp}). "
            f"Task: {self._task_text}\nCheck now.")}
        added: list[dict[str, Any]] = [prompt]
        history = [*self._context, *(m for r in self._own for m in r), prompt]
        turn = run_turn(child.llm, settings.model, history, lambda: child.tools, self.ctx,
                        settings.max_rounds, max_tool_calls=settings.max_tool_calls,
                        max_context_tokens=settings.max_context_tokens)
        async with aclosing(turn):
            async for item in turn:
                if item["event"] == "usage":  # paid by the user who started the stream
                    await child.add_usage(self.account, item["data"])
                    continue
                if item["event"] == "messages":  # the stream's own talk, kept for its context
                    added.extend(item["data"]["messages"])
                if self.stopped and item["event"] == "tool_result":
                    return  # it stopped itself: no further model call in this round
        if added[-1].get("role") == "assistant" and not added[-1].get("tool_calls"):
            self._own = [*self._own, added][-KEEP_ROUNDS:]


class NotificationActor:
    def __init__(self, key: str, settings: Settings) -> None:
        self.key = key
        self.settings = settings
        self._store = open_store(settings.db_url, migrate=False)
        self._journal = SessionJournal(self._store, key, self._store.claim_notifier(key))
        self._files = SessionFiles(self._journal, settings.max_files,
                                   settings.max_session_bytes)
        self.llm = LLM(settings, key)  # the shared OpenAI client actors, as the session's
        self.tools = builtin_tools(settings, in_stream=True)
        self._web = Web(UrlGuard(settings.allow_hosts))
        self._streams: dict[str, Stream] = {}
        self._life = asyncio.Lock()  # sync, and the end of a stream, one at a time
        self._publishing = asyncio.Lock()  # events are numbered and pushed in one order
        self._session: Any = None  # the session's live actor, for its /events listeners
        self._closing = False
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        loop.create_task(self._start())

    def __repr__(self) -> str:
        # Ray prefixes this actor's log lines with it: the session's key, never its ID.
        return f"NotificationActor({self.key})"

    def tool_context(self, streams: OwnStream, account: str | None) -> ToolContext:
        return ToolContext("", self.settings, self._web, self._files, self.llm, None, streams,
                           account=account, key=self.key)

    async def _start(self) -> None:
        """At (re)start: find the session's actor if it is live, and run the running rows."""
        from actors._ray import release_memory

        try:
            self._session = await asyncio.to_thread(
                ray.get_actor, SESSION_PREFIX + self.key, namespace=NAMESPACE)
        except ValueError:
            self._session = None
        try:
            await self.sync()
        except Exception:
            log.exception("resuming the notification streams failed")
        release_memory()

    # what the session's actor and the registry call ---------------------------------------------
    async def sync(self, session: Any = None) -> int:
        """Run exactly the session's running rows (a stopped row's task is cancelled and
        awaited, so no model call of it follows); `session`, when given, is the session's
        live actor. Answers how many run; with none, the child ends itself."""
        if session is not None:
            self._session = session
        async with self._life:
            if self._closing:
                return 0
            rows = {r["noti_id"]: r for r in await self._journal.streams()}
            running = {n for n, r in rows.items() if r["status"] == "running"}
            for noti_id in [n for n in self._streams if n not in running]:
                await self._cancel(self._streams.pop(noti_id))
            for noti_id in running - set(self._streams):
                spec = rows[noti_id]["spec"]
                if time.time() >= float(spec.get("expires_at") or math.inf):
                    await self._journal.set_stream_status(noti_id, "expired")
                    continue
                log.info("running notification stream %s", noti_id)
                stream = self._streams[noti_id] = Stream(self, noti_id, spec)
                stream.task = asyncio.create_task(self._guarded(stream))
            if not self._streams:
                self._end()
            return len(self._streams)

    async def shutdown(self) -> None:
        """The session is being deleted: stop every stream now (the caller then kills this
        actor)."""
        async with self._life:
            self._closing = True
            streams, self._streams = list(self._streams.values()), {}
            await asyncio.gather(*(self._cancel(s) for s in streams))

    async def status(self) -> dict[str, Any]:
        import os

        return {"pid": os.getpid(), "streams": {n: s.rounds for n, s in self._streams.items()}}

    # what its streams call -----------------------------------------------------------------------
    async def deliver(self, noti_id: str, message: str) -> None:
        """Number, store and push one notification (in order, exactly once)."""
        async with self._publishing:
            item = await publish(self._journal, noti_id, message, self.settings.max_events)
            session = self._session
            if session is not None:
                asyncio.get_running_loop().create_task(self._push(session, item))

    async def _push(self, session: Any, item: dict[str, Any]) -> None:
        try:
            await session.push_event.remote(item)
        except Exception:  # it passivated or died: its next activation attaches again
            if self._session is session:
                self._session = None

    async def add_usage(self, account: str | None, usage: dict[str, Any]) -> None:
        await self._journal.add_usage(account, usage)

    async def budget_left(self, account: str | None) -> bool:
        """Whether a stream of `account` may run a round today (LLMCAM_TOKEN_BUDGET)."""
        budget = self.settings.token_budget
        if budget <= 0 or not account:
            return True
        return (await self._journal.usage_today(account))["tokens_today"] < budget

    async def ended(self, stream: Stream, status: str) -> None:
        """A stream ended by itself (its model stopped it, or its hours are over)."""
        async with self._life:
            if self._streams.get(stream.noti_id) is not stream:
                return  # stopped from outside meanwhile: that row is settled already
            del self._streams[stream.noti_id]
            try:
                await self._journal.set_stream_status(stream.noti_id, status)
            except Fenced:
                self._superseded()
                return
            if not self._streams:
                self._end()

    # inside ---------------------------------------------------------------------------------------
    async def _guarded(self, stream: Stream) -> None:
        try:
            await stream.run()
        except asyncio.CancelledError:
            raise
        except Fenced:  # a newer child owns these streams, or the session is gone
            self._superseded()
        except Exception:
            log.exception("notification stream %s failed", stream.noti_id)
            async with self._life:
                if self._streams.pop(stream.noti_id, None) is stream:
                    with suppress(Exception):
                        await self._journal.set_stream_status(stream.noti_id, "failed")

    @staticmethod
    async def _cancel(stream: Stream) -> None:
        stream.stopped = True
        task = stream.task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
            with suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(task), STOP_TIMEOUT)

    def _superseded(self) -> None:
        log.info("the session is gone or a newer child runs its streams; ending this one")
        self._closing = True
        for stream in self._streams.values():
            if stream.task is not None and stream.task is not asyncio.current_task():
                stream.task.cancel()
        self._streams = {}
        self._end()

    def _end(self) -> None:
        """Nothing runs: end this process (an exit Ray does not restart)."""
        self._closing = True
        ray.get_runtime_context().current_actor.__ray_terminate__.remote()


NotificationActorRemote = ray.remote(NotificationActor)


def child_options(key: str, settings: Settings) -> dict[str, Any]:
    """Named (one per session, found by the session's actor and the registry), detached (it
    outlives a passivation), restarted after a crash or a node lost; with the SQLite store,
    placed on this node (where the file is)."""
    options: dict[str, Any] = {
        "name": child_name(key), "namespace": NAMESPACE, "lifetime": "detached",
        "get_if_exists": True, "num_cpus": 0, "max_restarts": -1, "max_task_retries": 0,
    }
    if not is_shared(settings.db_url):
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(
            ray.get_runtime_context().get_node_id(), soft=True)
    return options


async def sync_child(key: str, settings: Settings, session: Any = None,
                     attempts: int = 20) -> int:
    """Make the session's child run exactly its running rows, starting the child where there
    is none; one that is just ending (it had nothing left) is waited out and started anew."""
    for attempt in range(attempts):
        child = NotificationActorRemote.options(**child_options(key, settings)).remote(
            key, settings)
        try:
            return int(await child.sync.remote(session))
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
            await asyncio.sleep(min(0.05 * 2 ** attempt, 1.0))
    raise RuntimeError("the session's notification actor could not be started")


async def stop_child(key: str) -> None:
    """The session is being deleted: its child stops every stream and goes."""
    try:
        child = await asyncio.to_thread(ray.get_actor, child_name(key), namespace=NAMESPACE)
    except ValueError:
        return
    with suppress(Exception):
        await asyncio.wait_for(child.shutdown.remote(), STOP_TIMEOUT * 2)
    with suppress(Exception):
        ray.kill(child, no_restart=True)
