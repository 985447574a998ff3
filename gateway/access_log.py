"""An access log that never writes a session ID (a capability) anywhere."""

from __future__ import annotations

import logging
import re
import time

from starlette.types import Message, Receive, Scope, Send

from gateway.asgi import HttpMiddleware

log = logging.getLogger("llmcam.access")
_SESSION = re.compile(r"(/api/sessions/)(?!current\b)[^/?]+")


def redact(path: str) -> str:
    return _SESSION.sub(r"\1<session>", path)


class AccessLog(HttpMiddleware):
    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        start, status = time.perf_counter(), 0

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            log.info('%s "%s %s" %s %.1fms', (scope.get("client") or ("-",))[0],
                     scope["method"], redact(scope["path"]), status,
                     (time.perf_counter() - start) * 1000)
