"""The model's server, reached through shared LLMClient actors.

The real OpenAI client (and its ~20 MB of types) lives in a few LLMClient actors per cluster,
not in every session actor: a session asks one of them for a streamed completion and reads it
as a Ray streaming generator. Clients are named by a digest of the server's address only (see
`client_name`); each call brings its own API key, so gateways with other keys share them safely.

Whatever fails there reaches the session (and so the user, the logs and the store) as our own
summary of the failure's status and kind (`failure`), never the LLM server's text: an OpenAI 401
quotes part of the API key, and a server may say anything.

Each item that crosses Ray costs CPU on both sides, so the client sends deltas in chunks: the
first at once (the page shows the first token promptly), then whatever arrived within
`FLUSH_S`, and at once when a tool call starts (the text before it is not held back).

Every streamed request asks for the server's token counts (`stream_options.include_usage`);
they come last, as a chunk of their own: {"usage": {"prompt_tokens", "completion_tokens"}}.

Over 300 lines on purpose: both ends of one streamed call (the LLMClient actor and the
session's `LLM`) are here, because their chunking and failure summaries must agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import json
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import ray

from actors.context_window import prompt_tokens, text_tokens
from actors.errors import LLMFailed
from actors.metrics import record
from actors.session.names import NAMESPACE
from actors.settings import Settings

Chunk = dict[str, Any]
Server = tuple[str | None, str]  # (base URL, API key): what one call goes to, and as whom
FLUSH_S = 0.015  # deltas that arrive within this long after the last chunk travel together
CLIENTS = 8  # OpenAI clients one LLMClient keeps (one per server and key it was asked for)

# Error codes an OpenAI-compatible server sends that we name in our own words. Only a code
# equal to one of these selects a phrase: the server's text itself is never shown.
_KINDS = {
    "context_length_exceeded": "the conversation is too long for the model",
    "insufficient_quota": "the account's quota is used up",
    "model_not_found": "the model is unknown to the server",
}


def _kind(code: Any) -> str:
    phrase = _KINDS.get(code) if isinstance(code, str) else None
    return f": {phrase}" if phrase else ""


def status_summary(status: int, code: Any = None) -> str:
    """An HTTP error status of the LLM server (and its error code, where it is one we know) in
    our own words."""
    if status == 401:
        summary = f"the LLM server refused the API key ({status})"
    elif status == 403:
        summary = f"the LLM server denied access ({status})"
    elif status == 404:
        summary = f"the LLM server does not know the model or the endpoint ({status})"
    elif status == 408:
        summary = f"the LLM server timed out ({status})"
    elif status == 429:
        summary = f"the LLM server is rate limiting ({status})"
    elif 400 <= status < 500:
        summary = f"the LLM server refused the request ({status})"
    elif status >= 500:
        summary = f"the LLM server failed ({status})"
    else:
        summary = f"the LLM server answered with status {status}"
    return summary + _kind(code)


def failure(exc: BaseException) -> str:
    """What went wrong with a call to the LLM server, as its status and kind in our own words:
    never the exception's message (the server's text, which may quote the API key)."""
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return "the LLM server timed out"
    if isinstance(exc, openai.APIConnectionError):
        return f"the LLM server could not be reached ({type(exc).__name__})"
    if isinstance(exc, openai.APIStatusError):
        return status_summary(exc.status_code, getattr(exc, "code", None))
    if isinstance(exc, openai.APIError):
        return f"the LLM server sent an answer that could not be read ({type(exc).__name__})"
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return "the LLM server timed out"
    if isinstance(exc, ValueError):  # not JSON, or not shaped like a completion
        return f"the LLM server sent an answer that could not be read ({type(exc).__name__})"
    return f"the connection to the LLM server broke ({type(exc).__name__})"


def in_band_failure(error: Any) -> str:
    """An `{"error": ...}` the server sent inside a streamed answer, in our own words."""
    status = None
    code = None
    if isinstance(error, dict):
        code = error.get("code")
        for value in (error.get("status"), error.get("code")):
            if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
                status = int(value)
                break
    if status is not None and 100 <= status < 600:
        return status_summary(status, code) + " in the middle of its answer"
    return "the LLM server reported an error in the middle of its answer" + _kind(code)


def delta_of(payload: dict[str, Any]) -> Chunk:
    """One streamed completion chunk (as JSON) as our delta: {"content"} / {"tool_calls"}."""
    choices = payload.get("choices")
    if not choices:
        return {}
    delta = choices[0].get("delta") or {}
    out: Chunk = {}
    if delta.get("content"):
        out["content"] = delta["content"]
    if delta.get("tool_calls"):
        out["tool_calls"] = [{
            "index": c.get("index", 0), "id": c.get("id"),
            "name": (c.get("function") or {}).get("name"),
            "arguments": (c.get("function") or {}).get("arguments"),
        } for c in delta["tool_calls"]]
    return out


def usage_of(payload: Any) -> dict[str, int] | None:
    """A server's `usage` object as {"prompt_tokens", "completion_tokens"}, or None."""
    if not isinstance(payload, dict):
        return None
    try:
        return {"prompt_tokens": int(payload.get("prompt_tokens") or 0),
                "completion_tokens": int(payload.get("completion_tokens") or 0)}
    except (TypeError, ValueError):
        return None


def merge(deltas: list[Chunk]) -> list[Chunk]:
    """Consecutive deltas as few chunks as read the same: text joined, the pieces of one tool
    call joined. A chunk holds text, then tool-call pieces; text that follows tool-call pieces
    (or an error, or usage) starts the next chunk, so nothing changes order. An error or a
    usage chunk stays a chunk of its own."""
    out: list[Chunk] = []
    current: Chunk | None = None
    for delta in deltas:
        if "error" in delta or "usage" in delta:
            out.append(dict(delta))
            current = None
            continue
        text = delta.get("content")
        if current is None or (text and current.get("tool_calls")):
            current = {}
            out.append(current)
        if text:
            current["content"] = current.get("content", "") + text
        for part in delta.get("tool_calls") or []:
            calls = current.setdefault("tool_calls", [])
            last = calls[-1] if calls else None
            if last is None or last["index"] != part["index"]:
                calls.append(dict(part))
                continue
            last["id"] = part["id"] or last["id"]
            for key in ("name", "arguments"):
                if part[key]:
                    last[key] = (last[key] or "") + part[key]
    return out


class LLMClient:
    """AsyncOpenAI clients serving many sessions' completions concurrently: the one its
    settings name, and one for each other (server, key) a call asks for (the few most recent)."""

    def __init__(self, settings: Settings) -> None:
        self._default: Server = server_of(settings)
        self._clients: OrderedDict[Server, Any] = OrderedDict()
        self._client(None)  # the openai import and the client, before the first call

    def __repr__(self) -> str:
        return "LLMClient"

    def _client(self, server: Server | None) -> Any:
        key: Server = (server[0], server[1]) if server else self._default
        client = self._clients.get(key)
        if client is None:
            import openai

            client = openai.AsyncOpenAI(api_key=key[1] or "not-set", base_url=key[0],
                                        max_retries=1, timeout=120)
            self._clients[key] = client
            while len(self._clients) > CLIENTS:
                self._clients.popitem(last=False)
        self._clients.move_to_end(key)
        return client

    async def _deltas(self, request: dict[str, Any],
                      server: Server | None = None) -> AsyncIterator[Chunk]:
        """The completion's deltas, read as raw server-sent events. The request goes as
        `extra_body` and the chunks are read as JSON: the client's own request transform and
        chunk models walk the whole history and every delta with typing introspection, which
        was most of this process's CPU (profile in benchmarks/RESULTS.md).

        The server's token counts (its last chunk, with no choices) come after every delta as
        {"usage"}; a server that reports none sends no such chunk."""
        body = {k: v for k, v in request.items() if k != "model"}
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        usage: dict[str, int] | None = None
        client = self._client(server)
        async with client.chat.completions.with_streaming_response.create(
                model=request["model"], messages=[], stream=True, extra_body=body) as response:
            async for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    continue  # read to the end: the connection goes back to the pool
                payload = json.loads(data)
                if isinstance(payload, dict) and payload.get("error"):
                    yield {"error": in_band_failure(payload["error"])}  # not its message
                    return
                if isinstance(payload, dict) and payload.get("usage"):
                    usage = usage_of(payload["usage"]) or usage  # the last one reported
                delta = delta_of(payload)
                if delta:
                    yield delta
        if usage is not None:
            yield {"usage": usage}

    async def stream(self, request: dict[str, Any],
                     server: Server | None = None) -> AsyncIterator[Chunk]:
        """Chunks of one streamed completion: {"content"} / {"tool_calls"} / {"error"}, and
        last, where the server reported it, {"usage": {"prompt_tokens", "completion_tokens"}}.
        `server`: (base URL, API key), else this actor's own settings'. An error is our
        summary of the failure (`failure`), never the server's text."""
        pending: list[Chunk] = []
        arrived, flush = asyncio.Event(), asyncio.Event()
        ended = False

        async def read() -> None:
            nonlocal ended
            try:
                async for delta in self._deltas(request, server):
                    pending.append(delta)
                    arrived.set()
                    if any(p["id"] for p in delta.get("tool_calls") or ()):
                        flush.set()  # a tool call starts: what came before goes now
            except Exception as exc:  # refused, unreachable, or broken off mid-stream
                pending.append({"error": failure(exc)})
            finally:
                ended = True
                arrived.set()
                flush.set()

        reader = asyncio.create_task(read())
        try:
            sent = False
            while True:
                await arrived.wait()
                if sent and not flush.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(FLUSH_S):
                            await flush.wait()
                batch = pending[:]
                pending.clear()
                arrived.clear()
                flush.clear()
                for chunk in merge(batch):
                    sent = True
                    yield chunk
                if ended and not pending:
                    return
        finally:
            reader.cancel()

    async def complete(self, request: dict[str, Any], server: Server | None = None) -> Chunk:
        """One non-streamed completion: {"content", "usage"} (usage: {"prompt_tokens",
        "completion_tokens"}, or None where the server reported none), or {"error"}: our
        summary of the failure (`failure`), never the server's text."""
        try:
            response = await self._client(server).chat.completions.create(**request)
            usage = response.usage
            return {"content": response.choices[0].message.content or "",
                    "usage": usage_of(usage.model_dump()) if usage is not None else None}
        except Exception as exc:
            return {"error": failure(exc)}


LLMClientRemote = ray.remote(LLMClient)
_DIED = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)
RESTART_WAIT_S = 60.0  # a lost node is declared dead, then its actors restart elsewhere
PROXIES = 2  # per cluster and server; each is one process that mostly waits on the network


def proxies(settings: Settings) -> int:
    """Client actors per server: one for an embedded Ray (one machine: a second process adds
    nothing but its idle wake-ups), PROXIES on a cluster."""
    return PROXIES if settings.ray_address else 1


def server_of(settings: Settings) -> Server:
    key = settings.openai_api_key
    return (settings.openai_base_url, key.get_secret_value() if key else "")


def client_name(settings: Settings, index: int) -> str:
    """The shared client actor for `settings`' LLM server: a digest of the server's address
    (scheme, host, port and path: not a user, password or query the URL may carry) and the
    index. Actor names show in Ray's logs, its dashboard and its state API, so the name is no
    function of the API key at all, not even a hash (an unsalted one lets anyone who reads a
    name check a guessed key). The key travels with each call instead (`Server`), so gateways
    with different keys can share a cluster and a server (each call is made with its caller's
    key), and a key that was changed takes effect with the next call, not when the detached
    actor happens to be replaced."""
    base = settings.openai_base_url or "https://api.openai.com/v1"
    try:
        parts = urlsplit(base)
        address = f"{parts.scheme}://{parts.hostname or ''}:{parts.port or ''}{parts.path}"
    except ValueError:  # not a URL the client could use either: one digest for all of those
        address = "unparsable"
    digest = hashlib.sha256(address.encode()).hexdigest()[:12]
    return f"llm:{digest}:{index}"


class LLM:
    """What a session or a stream holds: a handle to one shared LLMClient."""

    def __init__(self, settings: Settings, spread: str) -> None:
        index = int(hashlib.sha256(spread.encode()).hexdigest(), 16) % proxies(settings)
        self._server = server_of(settings)
        self._handle = LLMClientRemote.options(
            name=client_name(settings, index), namespace=NAMESPACE, lifetime="detached",
            get_if_exists=True, num_cpus=0, max_restarts=-1, max_task_retries=0,
        ).remote(settings)

    async def stream(self, request: dict[str, Any]) -> AsyncIterator[Chunk]:
        """Chunks of one completion ({"content"} / {"tool_calls"}, and last, where the server
        reported it, {"usage"}). A client actor that died before its first chunk (its node
        was lost) is waited for while Ray restarts it elsewhere, then asked again."""
        deadline = time.monotonic() + RESTART_WAIT_S
        while True:
            started = False
            try:
                async for ref in self._handle.stream.remote(request, self._server):
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

    async def complete(self, request: dict[str, Any], *,
                       on_usage: Callable[[dict[str, Any]], Any] | None = None) -> str:
        """One non-streamed completion's text. Its tokens are recorded as the
        `llmcam_llm_tokens` metric and, given `on_usage`, handed to it (awaited if it returns
        an awaitable) as {"prompt_tokens", "completion_tokens", "estimated"}: the server's
        counts, or where it reported none, about four characters a token."""
        deadline = time.monotonic() + RESTART_WAIT_S
        while True:
            try:
                answer = await self._handle.complete.remote(request, self._server)
                break
            except _DIED as exc:
                if time.monotonic() > deadline:
                    raise LLMFailed("the LLM client actor died; try again") from exc
                await asyncio.sleep(0.5)
        if "error" in answer:
            raise LLMFailed(answer["error"])
        usage = call_usage(answer.get("usage"), request, answer["content"])
        if on_usage is not None:
            result = on_usage(usage)
            if inspect.isawaitable(result):
                await result
        return answer["content"]


def call_usage(reported: dict[str, int] | None, request: dict[str, Any],
               completion_text: str) -> dict[str, Any]:
    """One model call's tokens, {"prompt_tokens", "completion_tokens", "estimated"}: the
    server's where it reported them, else estimated (prompt: the request's messages and tools;
    completion: `completion_text`). Recorded as the `llmcam_llm_tokens` metric."""
    if reported is not None:
        usage = {**reported, "estimated": False}
    else:
        usage = {"prompt_tokens": prompt_tokens(request.get("messages") or [],
                                                request.get("tools")),
                 "completion_tokens": text_tokens(completion_text), "estimated": True}
    record("llm_tokens", usage["prompt_tokens"], kind="prompt")
    record("llm_tokens", usage["completion_tokens"], kind="completion")
    return usage
