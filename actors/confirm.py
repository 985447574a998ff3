"""Confirming a tool call (API.md): a tool named in LLMCAM_CONFIRM_TOOLS runs only after the
user allows that call. The turn yields a `confirm` event (every reader of the turn sees it:
the POST's stream, `GET /turn`, and a JSON POST simply waits) and waits for the answer that
`POST /turn/confirm` brings to the session's actor; no answer within LLMCAM_CONFIRM_SECONDS
counts as declined. Notification streams have no `Confirmations`: the user allowed the stream.
"""

from __future__ import annotations

import asyncio
import contextlib

DECLINED = "The user declined this call."


class Confirmations:
    """The calls of one session's turn that wait for the user's answer."""

    def __init__(self, tools: list[str], timeout: float) -> None:
        self.tools = frozenset(tools)
        self.timeout = timeout
        self._waiting: dict[str, asyncio.Future[bool]] = {}

    def needed(self, name: str) -> bool:
        return name in self.tools

    def ask(self, call_id: str) -> asyncio.Future[bool]:
        """Register the call before it is announced (an answer may come at once)."""
        future = self._waiting[call_id] = asyncio.get_running_loop().create_future()
        return future

    async def wait(self, call_id: str, future: asyncio.Future[bool]) -> bool:
        """True when the user allowed the call; False when declined or not answered in time."""
        try:
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(asyncio.shield(future), self.timeout)
            return False
        finally:
            self._waiting.pop(call_id, None)
            if not future.done():
                future.cancel()

    def answer(self, call_id: str, allow: bool) -> bool:
        """The user's answer; False when no such call waits."""
        future = self._waiting.get(call_id)
        if future is None or future.done():
            return False
        future.set_result(bool(allow))
        return True
