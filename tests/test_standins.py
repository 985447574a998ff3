"""The stand-in servers, exercised through the real openai, yt-dlp, OpenCV and httpx clients.

Over 300 lines on purpose: every stand-in's own check, so that a failing end-to-end test is
never the stand-in's fault."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import cv2
import httpx
import numpy as np
import openai
import pytest
import yt_dlp

from testing.standins import (
    Call,
    DigitrafficServer,
    Fail,
    OpenAIServer,
    Text,
    ToolCalls,
    VideoServer,
)
from testing.standins.video_server import BACKGROUND_BGR
from tests.helpers import serving

MODEL = "gpt-4o-mini"


llm = serving(OpenAIServer)


@pytest.fixture
def llm_server(llm: OpenAIServer) -> Iterator[OpenAIServer]:
    llm.reset()
    yield llm
    llm.reset()


@pytest.fixture
def client(llm_server: OpenAIServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=llm_server.base_url, api_key="test", max_retries=0)


def ask(client: openai.OpenAI, text: str, **kwargs: Any) -> Any:
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": text}], **kwargs
    )


def collect_stream(stream: Any) -> tuple[list[str], dict[int, dict[str, str]], str | None]:
    """Content deltas, tool calls accumulated by index, and the finish reason."""
    deltas: list[str] = []
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in stream:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        if choice.delta.content:
            deltas.append(choice.delta.content)
        for tc in choice.delta.tool_calls or []:
            acc = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
            acc["id"] += tc.id or ""
            acc["name"] += (tc.function.name or "") if tc.function else ""
            acc["arguments"] += (tc.function.arguments or "") if tc.function else ""
        finish = choice.finish_reason or finish
    return deltas, calls, finish


# --- OpenAI stand-in ----------------------------------------------------------------------------


def test_default_echo_and_tool_done(client: openai.OpenAI, llm_server: OpenAIServer) -> None:
    reply = ask(client, "hello there")
    assert reply.object == "chat.completion"
    assert reply.model == MODEL
    assert reply.choices[0].message.content == "echo: hello there"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.total_tokens > 0

    messages: list[Any] = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "w", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "x" * 300},
    ]
    reply = client.chat.completions.create(model=MODEL, messages=messages)
    assert reply.choices[0].message.content == "done: " + "x" * 200
    assert [r["messages"][-1]["role"] for r in llm_server.requests] == ["user", "tool"]


def test_non_stream_tool_calls(client: openai.OpenAI, llm_server: OpenAIServer) -> None:
    llm_server.push(ToolCalls([Call("get_weather", {"city": "Oulu"}), Call("broken", "{oops")]))
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    reply = ask(client, "go", tools=tools)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 2
    assert calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments) == {"city": "Oulu"}
    assert calls[1].function.arguments == "{oops"
    assert calls[0].id != calls[1].id
    assert llm_server.requests[0]["tools"] == tools


def test_stream_text(client: openai.OpenAI, llm_server: OpenAIServer) -> None:
    llm_server.push(Text("the quick brown fox jumps"))
    stream = ask(client, "hi", stream=True, stream_options={"include_usage": True})
    deltas, calls, finish = collect_stream(stream)
    assert len(deltas) >= 5
    assert "".join(deltas) == "the quick brown fox jumps"
    assert calls == {} and finish == "stop"


def test_stream_parallel_tool_calls(client: openai.OpenAI, llm_server: OpenAIServer) -> None:
    args = {"url": "https://example.com/live", "note": "a fairly long argument value"}
    llm_server.push(
        ToolCalls([Call("capture", args), Call("detect", "{not json")], content="Let me look.")
    )
    deltas, calls, finish = collect_stream(ask(client, "look", stream=True))
    assert "".join(deltas) == "Let me look."
    assert finish == "tool_calls"
    assert sorted(calls) == [0, 1]
    assert calls[0]["name"] == "capture" and json.loads(calls[0]["arguments"]) == args
    assert calls[1]["name"] == "detect" and calls[1]["arguments"] == "{not json"
    assert calls[0]["id"].startswith("call_") and calls[0]["id"] != calls[1]["id"]


def test_markers_and_global_queue(client: openai.OpenAI, llm_server: OpenAIServer) -> None:
    llm_server.script("[session-A]", [Text("A1"), Text("A2")])
    llm_server.script("[session-B]", [Text("B1")])
    llm_server.push(Text("global"))
    vision = [
        {"type": "text", "text": "what is this? [session-B]"},
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/AAAA"}},
    ]
    assert ask(client, "[session-A] hi").choices[0].message.content == "A1"
    vision_reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": vision}],  # type: ignore[misc]
    )
    assert vision_reply.choices[0].message.content == "B1"
    assert ask(client, "[session-A] again").choices[0].message.content == "A2"
    assert ask(client, "[session-A] more").choices[0].message.content == "echo: [session-A] more"
    assert ask(client, "no marker").choices[0].message.content == "global"
    assert ask(client, "no marker").choices[0].message.content == "echo: no marker"


def test_failures(client: openai.OpenAI, llm_server: OpenAIServer) -> None:
    llm_server.push(Fail(503, "overloaded"))
    with pytest.raises(openai.InternalServerError) as info:
        ask(client, "x")
    assert info.value.status_code == 503 and "overloaded" in str(info.value)
    llm_server.fail_all = 500
    with pytest.raises(openai.InternalServerError):
        ask(client, "x")
    with pytest.raises(openai.InternalServerError):
        list(ask(client, "x", stream=True))
    llm_server.fail_all = 429
    with pytest.raises(openai.RateLimitError) as limited:
        ask(client, "x")
    assert isinstance(limited.value.body, dict) and limited.value.body["type"] == "rate_limit_error"
    llm_server.reset()
    assert ask(client, "ok").choices[0].message.content == "echo: ok"
    assert len(llm_server.requests) == 1


def test_concurrent_requests_are_not_serialized(llm_server: OpenAIServer) -> None:
    llm_server.delay = 0.2

    async def main() -> list[str]:
        client = openai.AsyncOpenAI(base_url=llm_server.base_url, api_key="x", max_retries=0)
        async with client:
            replies = await asyncio.gather(
                *[
                    client.chat.completions.create(
                        model=MODEL, messages=[{"role": "user", "content": f"n{i}"}]
                    )
                    for i in range(50)
                ]
            )
        return [r.choices[0].message.content or "" for r in replies]

    started = time.monotonic()
    contents = asyncio.run(main())
    assert time.monotonic() - started < 5.0
    assert sorted(contents) == sorted(f"echo: n{i}" for i in range(50))
    assert len(llm_server.requests) == 50


# --- video stand-in -----------------------------------------------------------------------------


video = serving(VideoServer, slow_seconds=10)


def extract(url: str) -> dict[str, Any]:
    with yt_dlp.YoutubeDL({"quiet": True, "no_warnings": True, "socket_timeout": 5}) as ydl:
        info = ydl.extract_info(url, download=False)
    assert info is not None
    return dict(info)


def first_frame(url: str) -> np.ndarray | None:
    capture = cv2.VideoCapture(url)
    try:
        ok, frame = capture.read()
        return frame if ok else None
    finally:
        capture.release()


def assert_rendition(frame: np.ndarray | None, height: int) -> None:
    assert frame is not None
    assert frame.shape[:2] == (height, height * 16 // 9)
    assert np.abs(frame[5, 5].astype(int) - BACKGROUND_BGR[height]).max() < 25


def test_direct_mp4(video: VideoServer) -> None:
    info = extract(video.mp4_url)
    assert info["url"] == video.mp4_url and info["ext"] == "mp4"
    assert_rendition(first_frame(info["url"]), 720)


def test_range_requests(video: VideoServer) -> None:
    response = httpx.get(video.mp4_url, headers={"Range": "bytes=10-19"})
    assert response.status_code == 206
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["content-length"] == "10"
    assert response.headers["content-range"].startswith("bytes 10-19/")


def test_hls(video: VideoServer) -> None:
    info = extract(video.hls_url)
    formats = info["formats"]
    assert [(f["width"], f["height"]) for f in formats] == [(640, 360), (1280, 720), (1920, 1080)]
    for f in formats:
        assert f["protocol"] == "m3u8_native"
        assert f["url"] == video.hls_variant_url(f["height"])
        assert_rendition(first_frame(f["url"]), f["height"])


def test_html5_page_formats(video: VideoServer) -> None:
    formats = {f["url"]: f for f in extract(video.page_url)["formats"]}
    assert formats[video.mp4_url_for(360)].get("height") == 360
    assert formats[video.mp4_url_for(1080)].get("height") is None
    for height in (360, 1080):
        assert_rendition(first_frame(video.mp4_url_for(height)), height)


def test_bad_videos(video: VideoServer) -> None:
    assert extract(video.not_a_video_url)["url"] == video.not_a_video_url
    assert first_frame(video.not_a_video_url) is None
    with pytest.raises(yt_dlp.utils.DownloadError, match="Unsupported URL"):
        extract(video.no_video_page_url)
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(video.slow_url, timeout=1.0)


# --- Digitraffic stand-in -----------------------------------------------------------------------


@pytest.fixture
def digitraffic() -> Iterator[DigitrafficServer]:
    with DigitrafficServer() as server:
        yield server


def test_digitraffic_shapes(digitraffic: DigitrafficServer) -> None:
    headers = {"Digitraffic-User": "llmcam/test"}
    with httpx.Client(base_url=digitraffic.base_url, headers=headers, timeout=5) as http:
        collection = http.get("/stations").json()
        assert collection["type"] == "FeatureCollection"
        names = [f["properties"]["name"] for f in collection["features"]]
        for place in ("Porvoo", "Helsinki", "Espoo", "Oulu"):
            assert any(place in name for name in names)
        first = collection["features"][0]
        assert first["id"] == "C01503" and len(first["geometry"]["coordinates"]) == 3
        assert first["properties"]["presets"][0] == {"id": "C0150301", "inCollection": True}

        station = http.get("/stations/C01503").json()
        props = station["properties"]
        assert props["municipality"] == "Porvoo" and set(props["names"]) == {"fi", "sv", "en"}
        preset = props["presets"][0]
        assert preset["resolution"] == "1280x720" and preset["id"] == "C0150301"
        assert http.get("/stations/NOPE").status_code == 404

        image = http.get(preset["imageUrl"])
        assert image.headers["content-type"] == "image/jpeg"
        modified = datetime.strptime(image.headers["last-modified"], "%a, %d %b %Y %H:%M:%S %Z")
        assert modified.year == 2026
        decoded = cv2.imdecode(np.frombuffer(image.content, np.uint8), cv2.IMREAD_COLOR)
        assert decoded.shape == (720, 1280, 3)

        digitraffic.broken_image = True
        broken = http.get(preset["imageUrl"]).content
        assert cv2.imdecode(np.frombuffer(broken, np.uint8), cv2.IMREAD_COLOR) is None

    assert len(digitraffic.requests) == 5
    assert all(r.headers["digitraffic-user"] == "llmcam/test" for r in digitraffic.requests)


def test_digitraffic_down(digitraffic: DigitrafficServer) -> None:
    digitraffic.down = True
    digitraffic.hang_seconds = 10
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(digitraffic.base_url + "/stations", timeout=0.5)
    assert time.monotonic() - started < 3
    assert digitraffic.requests[0].path == "/api/weathercam/v1/stations"
