"""Request bodies over 1 MB (an image upload: 10 MB) are refused with 413 before they are read
whole."""

from __future__ import annotations

import re

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.asgi import HttpMiddleware

MB = 1024 * 1024
MAX_BODY = MB
MAX_UPLOAD = 10 * MB  # the image itself; its multipart body may carry a little more
UPLOAD_OVERHEAD = 64 * 1024  # boundaries, part headers, a long file name
UPLOAD_PATH = re.compile(r"/api/sessions/[^/]+/files/?")


def too_large(limit: int) -> str:
    return f"request body is larger than {limit // MB} MB"


class BodyLimit(HttpMiddleware):
    def __init__(self, app: ASGIApp, limit: int = MAX_BODY,
                 upload_limit: int = MAX_UPLOAD) -> None:
        super().__init__(app)
        self.limit = limit
        self.upload_limit = upload_limit

    def _limits(self, scope: Scope) -> tuple[int, str]:
        """(bytes allowed, what a 413 says) for this request."""
        if scope.get("method") == "POST" and UPLOAD_PATH.fullmatch(scope.get("path", "")):
            return self.upload_limit + UPLOAD_OVERHEAD, too_large(self.upload_limit)
        return self.limit, too_large(self.limit)

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit, detail = self._limits(scope)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:  # chunked bodies carry no length up front
                    raise HTTPException(413, detail)
            return message

        await self.app(scope, limited, send)
