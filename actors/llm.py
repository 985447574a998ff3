"""The model's server, reached through shared LLMClient actors.

The real OpenAI client (and its ~20 MB of types) lives in a few LLMClient actors per cluster,
not in every session actor: a session asks one of them for a streamed completion and reads it
as a Ray streaming generator. Clients are named by a digest of the server they talk to, so
gateways with other settings get their own.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from typing import Any

import ray

from actors.errors import LLMFailed
from actors.names import NAMESPACE
from actors.settings import Settings

Chunk = dict[str, Any]


class LLMClient:
    """One AsyncOpenAI client serving many sessions' completions concurrently."""

    def __init__(self, settings: Settings) -> None:
        import openai

        self._errors = openai.APIError
        self._client = openai.AsyncOpenAI(api_key=settings.openai_api_key or "not-set",
                                          base_url=settings.openai_base_url, max_retries=1,
                                          timeout=120)

    def __repr__(self) -> str:
        return "LLMClient"

    async def stream(self, request: dict[str, Any]) -> AsyncIterator[Chunk]:
        """Deltas of one streamed completion: {"content"} / {"tool_calls"} / {"error"}."""
        try:
            stream = await self._client.chat.completions.create(**request, stream=True)
            async for chunk in stream:
                if not chunk.choices:
                    continue
                delta = chunk.choices[0].delta
                out: Chunk = {}
                if delta.content:
                    out["content"] = delta.content
                if delta.tool_calls:
                    out["tool_calls"] = [{
                        "index": c.index, "id": c.id,
                        "name": c.function.name if c.function else None,
                        "arguments": c.function.arguments if c.function else None,
                    } for c in delta.tool_calls]
                if out:
                    yield out
        except self._errors as exc:
            yield {"error": f"the LLM backend failed: {exc.message}"[:500]}

    async def complete(self, request: dict[str, Any]) -> Chunk:
        """One non-streamed completion's text, or {"error"}."""
        try:
            response = await self._client.chat.completions.create(**request)
        except self._errors as exc:
            return {"error": f"the LLM backend failed: {exc.message}"[:500]}
        return {"content": response.choices[0].message.content or ""}


LLMClientRemote = ray.remote(LLMClient)
_DIED = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)
RESTART_WAIT_S = 60.0  # a lost node is declared dead, then its actors restart elsewhere
PROXIES = 2  # per cluster and server; each is one process that mostly waits on the network


def client_name(settings: Settings, index: int) -> str:
    digest = hashlib.sha256(f"{settings.openai_base_url}|{settings.openai_api_key}".encode())
    return f"llm:{digest.hexdigest()[:12]}:{index}"


class LLM:
    """What a session or a stream holds: a handle to one shared LLMClient."""

    def __init__(self, settings: Settings, spread: str) -> None:
        index = int(hashlib.sha256(spread.encode()).hexdigest(), 16) % PROXIES
        self._handle = LLMClientRemote.options(
            name=client_name(settings, index), namespace=NAMESPACE, lifetime="detached",
            get_if_exists=True, num_cpus=0, max_restarts=-1, max_task_retries=0,
        ).remote(settings)

    async def stream(self, request: dict[str, Any]) -> AsyncIterator[Chunk]:
        """Chunks of one completion. A client actor that died before its first chunk (its node
        was lost) is waited for while Ray restarts it elsewhere, then asked again."""
        deadline = time.monotonic() + RESTART_WAIT_S
        while True:
            started = False
            try:
                async for ref in self._handle.stream.remote(request):
                    chunk = await ref
                    if "error" in chunk:
                        raise LLMFailed(chunk["error"])
                    started = True
                    yield chunk
                return
            except _DIED as exc:
                if started or time.monotonic() > deadline:
                    raise LLMFailed("the LLM client actor died; try again") from exc
                await asyncio.sleep(0.5)

    async def complete(self, request: dict[str, Any]) -> str:
        deadline = time.monotonic() + RESTART_WAIT_S
        while True:
            try:
                answer = await self._handle.complete.remote(request)
                break
            except _DIED as exc:
                if time.monotonic() > deadline:
                    raise LLMFailed("the LLM client actor died; try again") from exc
                await asyncio.sleep(0.5)
        if "error" in answer:
            raise LLMFailed(answer["error"])
        return answer["content"]
