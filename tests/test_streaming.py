"""What a user sees of a streamed turn stays as it was while the turn path carries fewer, larger
items: replies stream (the first words arrive long before the end), a tool-calling turn with
parallel calls shows its events in order and leaves the same history, and the pieces that
coalesce deltas and events keep every character in its place.

(A client that disconnects mid-stream still gets its turn stored: tests/test_turns.py.)"""

from __future__ import annotations

import time
from typing import Any

import httpx

from actors.llm import LLMClient, merge
from actors.schema import function_tool
from actors.settings import Settings
from testing.standins import Call, OpenAIServer, Text, ToolCalls
from tests.helpers import Gateway, events, make_settings, text_of, tool_call_delta

SLOW_WORDS = 30
SLOW_DELAY = 0.1  # seconds between two words: the reply takes about 3 s to stream


# --- the pure parts -------------------------------------------------------------------------


async def test_the_llm_client_sends_chunks_that_read_as_the_deltas(llm: OpenAIServer,
                                                                   tmp_path) -> None:
    """The LLMClient (without Ray) against the stand-in: the first words come at once, the
    rest in fewer chunks than words, every character and tool call as the model sent it."""
    llm.reset()
    client = LLMClient(Settings(openai_api_key="k", openai_base_url=llm.base_url,
                                data=tmp_path))
    words = " ".join(f"w{i}" for i in range(40))
    llm.push(Text(words, chunk_delay=0.005),
             ToolCalls([Call("cap", {"key": "Porvoo"}, id="c1"),
                        Call("list_image_files", {}, id="c2")], content="Looking."))
    request = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    t0 = time.monotonic()
    arrivals: list[tuple[float, dict[str, Any]]] = []
    async for chunk in client.stream(request):
        arrivals.append((time.monotonic() - t0, chunk))
    assert "usage" in arrivals[-1][1]  # the server's token counts come last, on their own
    chunks = [c for _, c in arrivals if "usage" not in c]
    assert "".join(c["content"] for c in chunks) == words
    assert 1 < len(chunks) < 40
    assert arrivals[0][0] < arrivals[-1][0]  # streamed, not sent at the end
    calls = [c async for c in client.stream(request) if "usage" not in c]
    assert merge(calls) == [{"content": "Looking.", "tool_calls": [
        tool_call_delta(0, "c1", "cap", '{"key": "Porvoo"}'),
        tool_call_delta(1, "c2", "list_image_files", "{}")]}]
    assert llm.requests[0]["messages"] == request["messages"] and llm.requests[0]["stream"]


# --- through the real gateway ---------------------------------------------------------------

async def _stream_turn(gateway: Gateway, content: str) -> tuple[
        str, list[tuple[float, str, dict[str, Any]]]]:
    async with gateway.async_client() as c:
        sid = (await c.post("/api/sessions")).json()["session_id"]
        seen: list[tuple[float, str, dict[str, Any]]] = []
        t0 = time.monotonic()
        async with c.stream("POST", f"/api/sessions/{sid}/messages",
                            json={"content": content},
                            headers={"Accept": "text/event-stream"}) as response:
            assert response.status_code == 200, await response.aread()
            async for kind, data in events(response):
                seen.append((time.monotonic() - t0, kind, data))
    return sid, seen


async def test_streamed_deltas_arrive_long_before_the_turn_ends(gateway: Gateway,
                                                                fresh_llm) -> None:
    reply = " ".join(f"word{i}" for i in range(SLOW_WORDS))
    fresh_llm.script("tell me slowly", [Text(reply, chunk_delay=SLOW_DELAY)])
    _, seen = await _stream_turn(gateway, "tell me slowly")
    kinds = [kind for _, kind, _ in seen]
    assert kinds[-1] == "done" and set(kinds[:-1]) == {"token"}
    assert text_of([(k, d) for _, k, d in seen]) == reply == seen[-1][2]["reply"]
    first_token = next(t for t, kind, _ in seen if kind == "token")
    done = seen[-1][0]
    streaming = SLOW_WORDS * SLOW_DELAY
    assert done - first_token >= streaming / 2, (first_token, done)
    assert kinds.count("token") >= SLOW_WORDS // 4  # it streamed in many steps, not one


async def test_parallel_tool_calls_keep_their_events_order_and_history(
        gateway: Gateway, fresh_llm) -> None:
    marker = "two lists please"
    fresh_llm.script(marker, [
        ToolCalls([Call("list_image_files", {}, id="call_a"),
                   Call("list_detection_files", {}, id="call_b")], content="Let me look."),
        Text("Both lists are empty."),
    ])
    sid, seen = await _stream_turn(gateway, marker)
    kinds = [kind for _, kind, _ in seen]
    collapsed = [k for i, k in enumerate(kinds) if i == 0 or k != "token" or kinds[i - 1] != k]
    assert collapsed == ["token", "tool_call", "tool_call", "tool_result", "tool_result",
                         "token", "done"], kinds
    data = [d for _, _, d in seen]
    calls = [d for (_, k, d) in seen if k == "tool_call"]
    results = [d for (_, k, d) in seen if k == "tool_result"]
    assert [c["name"] for c in calls] == ["list_image_files", "list_detection_files"]
    assert [c["arguments"] for c in calls] == ["{}", "{}"]
    assert [r["name"] for r in results] == ["list_image_files", "list_detection_files"]
    assert text_of([(k, d) for _, k, d in seen]) == "Let me look.Both lists are empty."
    assert data[-1] == {"reply": "Both lists are empty."}

    with httpx.Client(base_url=gateway.url, timeout=60) as c:
        history = c.get(f"/api/sessions/{sid}/messages").json()
    turn = [m for m in history if m["role"] != "system"]
    assert [m["role"] for m in turn] == ["user", "assistant", "tool", "tool", "assistant"]
    assert turn[1]["content"] == "Let me look."
    assert [(t["id"], t["function"]["name"], t["function"]["arguments"])
            for t in turn[1]["tool_calls"]] == [("call_a", "list_image_files", "{}"),
                                                ("call_b", "list_detection_files", "{}")]
    assert [m["tool_call_id"] for m in turn[2:4]] == ["call_a", "call_b"]
    assert [m["content"] for m in turn[2:4]] == [r["content"] for r in results]
    assert turn[4]["content"] == "Both lists are empty."
    # the model's second call saw the whole round, in order
    second = [r for r in fresh_llm.requests if marker in str(r["messages"])][1]
    assert [m["role"] for m in second["messages"]][-4:] == ["user", "assistant", "tool", "tool"]


def test_the_turn_metrics_are_valid_ray_metrics(ray_address: str) -> None:
    """`record` swallows errors (metrics must never fail a turn): check here that every turn
    metric is made and takes its value and tags."""
    from actors.metrics import _metrics

    metrics = _metrics()
    metrics["turn_first_token"].observe(0.05)
    metrics["turn_done"].observe(0.2, tags={"outcome": "done"})
    metrics["turn_rounds"].observe(2)
    metrics["tool_calls"].inc(2)
    metrics["llm_errors"].inc()


# --- token counts and the context limit -----------------------------------------------------


async def test_the_llm_client_actor_passes_the_servers_usage_through_last(
        ray_address: str, fresh_llm: OpenAIServer, tmp_path) -> None:
    """Through the real LLMClient actor (the wrapper sessions hold): every streamed request
    asks for usage, and the server's counts arrive as the last chunk, apart from the text;
    a non-streamed completion (the vision tool's) reports them too."""
    from actors.llm import LLM
    from testing.standins.openai_server import _usage

    model = LLM(make_settings(tmp_path, fresh_llm), "usage-test")
    replies = [Text("Counting the tokens of this reply."),
               ToolCalls([Call("cap", {"key": "Porvoo"}, id="c1")], content="Looking.")]
    fresh_llm.push(*replies)
    for reply in replies:
        request = {"model": "m", "messages": [{"role": "user", "content": "count " * 50}]}
        chunks = [c async for c in model.stream(request)]
        body = fresh_llm.requests[-1]
        assert body["stream"] and body["stream_options"] == {"include_usage": True}
        expected = {k: v for k, v in _usage(body, reply).items() if k != "total_tokens"}
        assert chunks[-1] == {"usage": expected}
        assert all("usage" not in c for c in chunks[:-1])
        assert "".join(c.get("content", "") for c in chunks) == reply.content

    fresh_llm.push(Text("A parking lot with 12 cars."))
    seen: list[dict[str, Any]] = []
    request = {"model": "m", "messages": [{"role": "user", "content": "what is this?"}]}
    assert await model.complete(request, on_usage=seen.append) == "A parking lot with 12 cars."
    body = fresh_llm.requests[-1]
    assert "stream_options" not in body
    expected = {k: v for k, v in _usage(body, Text("A parking lot with 12 cars.")).items()
                if k != "total_tokens"}
    assert seen == [{**expected, "estimated": False}]
    fresh_llm.push(Text("no callback"))
    assert await model.complete(request) == "no callback"  # the existing callers' way


async def test_a_turn_over_a_long_history_sends_at_most_the_context_limit(
        ray_address: str, fresh_llm: OpenAIServer, tmp_path) -> None:
    """run_turn with `max_context_tokens`: the stand-in receives the system message and the
    newest whole turns within the limit (tool schemas included); the history keeps
    everything; each model call's usage comes out as a `usage` event after its message."""
    from actors.context_window import prompt_tokens
    from actors.llm import LLM
    from actors.turn_loop import run_turn
    from testing.standins.openai_server import _usage
    from tests.helpers import conversation

    def cap(key: str) -> str:
        """Capture an image from the camera `key`."""
        return f"captured {key}"

    tool = function_tool(cap, takes_context=False)
    model = LLM(make_settings(tmp_path, fresh_llm), "context-test")
    history = conversation(300)
    stored = list(history)
    limit = 1500
    fresh_llm.push(ToolCalls([Call("cap", {"key": "Porvoo"}, id="call_new")]),
                   Text("Here is Porvoo."))
    seen = [item async for item in run_turn(model, "m", history, lambda: [tool], None,
                                            max_context_tokens=limit)]
    assert [e["event"] for e in seen if e["event"] in ("usage", "messages", "done")] == [
        "usage", "messages", "messages", "usage", "messages", "done"]
    assert history[:len(stored)] == stored and len(history) == len(stored) + 3
    requests = fresh_llm.requests
    assert len(requests) == 2
    for body, then in zip(requests, (stored, history[:len(stored) + 2]), strict=True):
        sent = body["messages"]
        assert prompt_tokens(sent, body["tools"]) <= limit
        assert sent[0] == history[0] and sent[1]["role"] == "user"
        assert sent[1:] == then[len(then) - len(sent) + 1:]  # the newest whole turns
        assert stored[-1] in sent and len(sent) < len(stored) / 4
    usages = [e["data"] for e in seen if e["event"] == "usage"]
    replies = [ToolCalls([Call("cap", {"key": "Porvoo"}, id="call_new")]),
               Text("Here is Porvoo.")]
    assert usages == [{**{k: v for k, v in _usage(body, reply).items() if k != "total_tokens"},
                       "estimated": False} for body, reply in zip(requests, replies, strict=True)]


def test_the_token_metric_is_a_valid_ray_metric(ray_address: str) -> None:
    from actors.metrics import _metrics

    _metrics()["llm_tokens"].inc(120, tags={"kind": "prompt"})
    _metrics()["llm_tokens"].inc(7, tags={"kind": "completion"})
