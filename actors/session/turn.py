"""The turn driver: one turn of a session at a time, in arrival order, journaled as it goes,
stoppable, and watchable by any number of readers.

`begin` records the user's message once (a retried turn ID is never recorded twice; one an
earlier incarnation finished is answered from the journal) and starts the turn in a task of
its own, so a reader that goes away changes nothing. The turn's events go into its `TurnLog`
(turn_log.py); the loop of model and tool calls is `run_turn` (actors/turn_loop.py). The
driver owns the session's history in memory (the journal is the durable copy).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, NoReturn

from actors.confirm import Confirmations
from actors.context import ToolContext
from actors.errors import LLMFailed, Passivating
from actors.llm import LLM
from actors.metrics import record
from actors.session.turn_log import STOPPED_NOTE, TurnLog
from actors.settings import Settings
from actors.store import Fenced
from actors.store.journal import SessionJournal
from actors.toolbox import Toolbox
from actors.turn_loop import SchemaCache, event, repair, run_turn

SYSTEM_PROMPT = (
    "You are llmcam, a helpful assistant that can capture frames from live cameras, detect "
    "objects, answer questions about images, plot counts and watch cameras in the background. "
    "Use the supplied tools. When a tool makes a file, show it to the user as a markdown "
    "image of its name under files/, like ![name](files/name)."
)
log = logging.getLogger(__name__)


class TurnDriver:
    def __init__(self, journal: SessionJournal, settings: Settings, llm: LLM,
                 toolbox: Toolbox, schemas: SchemaCache,
                 confirmations: Confirmations, context: Callable[[str | None], ToolContext],
                 superseded: Callable[[], NoReturn], used: Callable[[], None],
                 history: list[dict[str, Any]], turn_ids: list[str | None]) -> None:
        self._journal = journal
        self._settings = settings
        self._llm = llm
        self._toolbox = toolbox
        self._schemas = schemas
        self._confirmations = confirmations
        self._context = context
        self._superseded = superseded  # a newer incarnation owns the session
        self._used = used
        self.history = history
        self._turn_ids = turn_ids
        self._lock = asyncio.Lock()  # turns of one session run one after another, in order
        self.current: TurnLog | None = None

    async def start(self, turn_id: str, content: str, account: str | None) -> TurnLog:
        """Wait for the turn before it, then begin this one."""
        await self._lock.acquire()
        try:
            return await self._begin(turn_id, content, account)
        except BaseException:
            self._lock.release()
            raise

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
            self.history.append(user)
            self._turn_ids.append(turn_id)
        elif await self._journal.turn_done(turn_id):
            # A retry of a turn that an earlier incarnation finished: answer from the journal.
            messages = self.turn_messages(turn_id)
            replies = [m for m in messages if m["role"] == "assistant" and m.get("content")]
            turn.add(event("done", reply=replies[-1]["content"] if replies else "",
                           messages=messages))
            turn.finish()
            self._lock.release()
            return turn
        self.current = turn
        turn.task = asyncio.create_task(self._run(turn))
        return turn

    async def _run(self, turn: TurnLog) -> None:
        turn_id = turn.turn_id

        async def journal(bodies: list[dict[str, Any]]) -> None:
            # Shielded: a Stop that lands mid-write lets the write and the history agree.
            write = asyncio.ensure_future(self.record(turn_id, bodies))
            turn.pending = write
            await asyncio.shield(write)
            turn.partial.clear()

        settings = self._settings
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, *self.history]
        started, outcome, streaming = time.monotonic(), "error", False
        try:
            async for item in run_turn(self._llm, settings.model, messages, self._toolbox.tools,
                                       self._context(turn.account), settings.max_rounds,
                                       max_tool_calls=settings.max_tool_calls,
                                       schemas=self._schemas,
                                       max_context_tokens=settings.max_context_tokens,
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
                                 messages=self.turn_messages(turn_id))
                turn.add(item)
        except LLMFailed as exc:
            await self._finish_quietly(turn_id)
            turn.add(event("error", detail=str(exc), status=502))
        except Fenced:
            turn.add(event("moved"))  # a newer incarnation owns the session: it goes on there
            try:
                self._superseded()
            except Passivating:
                pass
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
            if self.current is turn:
                self.current = None
            self._used()
            self._lock.release()

    async def record(self, turn_id: str | None, bodies: list[dict[str, Any]]) -> None:
        await self._journal.append(turn_id, bodies)
        self.history.extend(bodies)
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
        added = repair(self.history)
        for message in added:
            message["content"] = "Stopped by the user before this tool finished."
        last = self.history[-1] if self.history else {}
        finished = last.get("role") == "assistant" and not last.get("tool_calls")
        if said or not finished or added:
            added.append({"role": "assistant",
                          "content": f"{said}\n\n{STOPPED_NOTE}" if said else STOPPED_NOTE})
        try:
            if added:
                await self.record(turn.turn_id, added)
            await self._journal.finish_turn(turn.turn_id)
        except Fenced:
            return
        turn.add(event("done", reply=said, stopped=True,
                       messages=self.turn_messages(turn.turn_id)))

    async def stop(self) -> bool:
        """Stop the turn in flight (True), or say there is none (False)."""
        turn = self.current
        if turn is None or turn.task is None or turn.task.done():
            return False
        turn.task.cancel()
        await asyncio.wait([turn.task])
        return True

    def turn_messages(self, turn_id: str) -> list[dict[str, Any]]:
        return [m for m, t in zip(self.history, self._turn_ids, strict=True) if t == turn_id]
