"""A scriptable OpenAI-compatible Chat Completions server (``POST /v1/chat/completions``).

Point the real client at it: ``OpenAI(base_url=server.base_url, api_key="x", max_retries=0)``
(the client retries 5xx answers by default, which would consume extra scripted replies).

Replies are taken, in this order, from the queue of the first scripted marker that appears in the
request's messages and still has replies, from the global ``push()`` queue when no marker appears
at all, and otherwise from the default behaviour: ``"done: <tool content>"`` after a tool message,
else ``"echo: <last user text>"``.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ._background import BackgroundServer


@dataclass(frozen=True)
class Text:
    content: str
    chunk_delay: float | None = None  # seconds between this reply's chunks (a slow model)


@dataclass(frozen=True)
class Call:
    name: str
    arguments: dict[str, Any] | str = field(default_factory=dict)  # a str is sent verbatim
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")

    @property
    def arguments_json(self) -> str:
        return self.arguments if isinstance(self.arguments, str) else json.dumps(self.arguments)


@dataclass(frozen=True)
class ToolCalls:
    calls: list[Call]
    content: str | None = None


@dataclass(frozen=True)
class Fail:
    status: int = 500
    message: str = "scripted failure"


Reply = Text | ToolCalls | Fail


@dataclass(frozen=True)
class FailMidStream:
    """A streamed answer that starts (``content``), then carries ``{"error": {...}}`` in-band
    instead of finishing, as some OpenAI-compatible servers do when they fail mid-answer. A
    non-streamed request gets ``status`` with the same error body. Script it like any reply."""

    message: str = "scripted failure mid-stream"
    content: str = ""
    status: int = 500


def message_text(message: dict[str, Any]) -> str:
    """The text of a message whose content is a string or a list of content parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def default_reply(messages: list[dict[str, Any]]) -> Text:
    if messages and messages[-1].get("role") == "tool":
        return Text("done: " + message_text(messages[-1])[:200])
    users = [m for m in messages if m.get("role") == "user"]
    return Text("echo: " + (message_text(users[-1]) if users else ""))


def error_body(status: int, message: str) -> dict[str, Any]:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    if status == 429:
        kind = "rate_limit_error"
    return {"error": {"message": message, "type": kind, "param": None, "code": str(status)}}


class OpenAIServer(BackgroundServer):
    def __init__(self, chunk_size: int = 1) -> None:
        """``chunk_size``: words per streamed content delta."""
        self.chunk_size = chunk_size
        self._lock = threading.Lock()
        self._requests: list[dict[str, Any]] = []
        self._api_keys: list[str] = []  # the bearer token of each request, in arrival order
        self._scripts: dict[str, deque[Reply]] = {}
        self._queue: deque[Reply] = deque()
        self.fail_all: int | None = None
        self.delay: float = 0.0
        self.chunk_delay: float = 0.0  # seconds between streamed chunks
        routes = [
            Route("/v1/chat/completions", self._completions, methods=["POST"]),
            Route("/v1/models", self._models, methods=["GET"]),
        ]
        super().__init__(Starlette(routes=routes))

    @property
    def base_url(self) -> str:
        return self.root_url + "/v1"

    @property
    def requests(self) -> list[dict[str, Any]]:
        """A snapshot of every request body received, in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def api_keys(self) -> list[str]:
        """A snapshot of the API key (``Authorization: Bearer``) each request came with."""
        with self._lock:
            return list(self._api_keys)

    def script(self, marker: str, replies: Iterable[Reply]) -> None:
        with self._lock:
            self._scripts.setdefault(marker, deque()).extend(replies)

    def push(self, *replies: Reply) -> None:
        with self._lock:
            self._queue.extend(replies)

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()
            self._api_keys.clear()
            self._scripts.clear()
            self._queue.clear()
            self.fail_all = None
            self.delay = 0.0
            self.chunk_delay = 0.0

    def _next_reply(self, messages: list[dict[str, Any]]) -> Reply:
        texts = [message_text(m) for m in messages if isinstance(m, dict)]
        with self._lock:
            matched = [q for marker, q in self._scripts.items() if any(marker in t for t in texts)]
            for queue in matched:
                if queue:
                    return queue.popleft()
            if not matched and self._queue:
                return self._queue.popleft()
        return default_reply(messages)

    async def _models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "gpt-4o", "object": "model"}]})

    async def _completions(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
            messages = body["messages"]
        except (ValueError, KeyError, TypeError) as exc:
            return JSONResponse(error_body(400, f"bad request: {exc}"), status_code=400)
        with self._lock:
            self._requests.append(body)
            self._api_keys.append(request.headers.get("authorization", "").removeprefix("Bearer "))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_all is not None:
            return JSONResponse(error_body(self.fail_all, "fail_all"), status_code=self.fail_all)
        reply = self._next_reply(messages)
        if isinstance(reply, Fail):
            return JSONResponse(error_body(reply.status, reply.message), status_code=reply.status)
        if isinstance(reply, FailMidStream):
            if not body.get("stream"):
                return JSONResponse(error_body(reply.status, reply.message),
                                    status_code=reply.status)
            return StreamingResponse(self._failing_chunks(reply, str(body.get("model", ""))),
                                     media_type="text/event-stream")
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        model = str(body.get("model", "gpt-4o"))
        usage = _usage(body, reply)
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            chunks = self._chunks(reply, completion_id, model, usage if include_usage else None)
            return StreamingResponse(chunks, media_type="text/event-stream")
        message: dict[str, Any] = {"role": "assistant", "content": reply.content, "refusal": None}
        if isinstance(reply, ToolCalls):
            message["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments_json},
                }
                for c in reply.calls
            ]
        choice = {
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": "stop" if isinstance(reply, Text) else "tool_calls",
        }
        return JSONResponse(
            {
                **_envelope(completion_id, model, "chat.completion"),
                "choices": [choice],
                "usage": usage,
            }
        )

    def _failing_chunks(self, reply: FailMidStream, model: str) -> AsyncIterator[str]:
        return _failing_chunks_of(reply, model)

    async def _chunks(
        self, reply: Text | ToolCalls, cid: str, model: str, usage: dict[str, int] | None
    ) -> AsyncIterator[str]:
        envelope = _envelope(cid, model, "chat.completion.chunk")

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return f"data: {json.dumps({**envelope, 'choices': [choice]})}\n\n"

        content = reply.content or ""
        pause = self.chunk_delay
        if isinstance(reply, Text) and reply.chunk_delay is not None:
            pause = reply.chunk_delay
        yield chunk({"role": "assistant", "content": "" if content else None, "refusal": None})
        words = re.findall(r"\s*\S+\s*", content) or ([content] if content else [])
        for i in range(0, len(words), self.chunk_size):
            await asyncio.sleep(pause)
            yield chunk({"content": "".join(words[i : i + self.chunk_size])})
        if isinstance(reply, ToolCalls):
            for index, call in enumerate(reply.calls):
                await asyncio.sleep(self.chunk_delay)
                head = {"name": call.name, "arguments": ""}
                yield chunk(
                    {
                        "tool_calls": [
                            {"index": index, "id": call.id, "type": "function", "function": head}
                        ]
                    }
                )
                args = call.arguments_json
                for start in range(0, len(args), 8):
                    piece = {"arguments": args[start : start + 8]}
                    yield chunk({"tool_calls": [{"index": index, "function": piece}]})
        yield chunk({}, "stop" if isinstance(reply, Text) else "tool_calls")
        if usage is not None:
            yield f"data: {json.dumps({**envelope, 'choices': [], 'usage': usage})}\n\n"
        yield "data: [DONE]\n\n"


async def _failing_chunks_of(reply: FailMidStream, model: str) -> AsyncIterator[str]:
    envelope = _envelope(f"chatcmpl-{uuid.uuid4().hex[:24]}", model, "chat.completion.chunk")
    if reply.content:
        choice = {"index": 0, "delta": {"role": "assistant", "content": reply.content},
                  "logprobs": None, "finish_reason": None}
        yield f"data: {json.dumps({**envelope, 'choices': [choice]})}\n\n"
    yield f"data: {json.dumps(error_body(reply.status, reply.message))}\n\n"
    yield "data: [DONE]\n\n"


def _envelope(cid: str, model: str, obj: str) -> dict[str, Any]:
    return {
        "id": cid,
        "object": obj,
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_standin",
    }


def _usage(body: dict[str, Any], reply: Text | ToolCalls) -> dict[str, int]:
    prompt = len(json.dumps(body.get("messages", []))) // 4 + 1
    out = len(reply.content or "")
    if isinstance(reply, ToolCalls):
        out += sum(len(c.name) + len(c.arguments_json) for c in reply.calls)
    completion = out // 4 + 1
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
