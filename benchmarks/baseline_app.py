"""The baseline for `chat_load.py`: the original llmcam's design, rebuilt for comparison.

One web process; every session's messages and tools live in module-level dicts keyed by session
ID (as in the original's `llmcam/application/session.py`); a turn runs the original's
function-calling loop shape (`llmcam/core/fc.py`: call the model with the full history and the
session's tools, run any tool calls, call again until the model answers in text). Differences
from the original, all in the baseline's favour or neutral: the routes are shaped like ours
(JSON over HTTP instead of FastHTML websockets), the client is the async OpenAI client streaming
(the original ran the blocking client in a thread), the loop is bounded at 10 rounds, and
nothing is persisted.

    python -m benchmarks.baseline_app --port 8001

Reads OPENAI_BASE_URL / OPENAI_API_KEY as the OpenAI client does, and LLMCAM_MODEL.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
from typing import Any

import openai
import uvicorn
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

MAX_ROUNDS = 10
SYSTEM_PROMPT = (
    "You are a helpful assistant. Use the supplied tools to assist the user. If asked to show "
    "or display an image or plot, do it by embedding its path in Markdown syntax. When asked "
    "to monitor or notify about a process, start a detached notification stream and do not "
    "wait for it to stop in chat response. Use the available tools to stop stream or send "
    "notifications from the stream."
)

# The original's state: module-level dicts keyed by session ID.
session_messages: dict[str, list[dict[str, Any]]] = {}
session_tools: dict[str, list[dict[str, Any]]] = {}

MODEL = os.environ.get("LLMCAM_MODEL", "gpt-4o")
_client: openai.AsyncOpenAI | None = None


def client() -> openai.AsyncOpenAI:
    """One client for the process, made on first use (like `openai.chat` in the original)."""
    global _client
    if _client is None:
        _client = openai.AsyncOpenAI(max_retries=1, timeout=120)
    return _client


def _schema(name: str, description: str, params: dict[str, tuple[str, str]],
            required: tuple[str, ...] = ()) -> dict[str, Any]:
    """A tool schema in OpenAI's shape; params maps name -> (JSON type, description)."""
    properties: dict[str, Any] = {}
    for pname, (ptype, pdesc) in params.items():
        prop: dict[str, Any] = {"type": ptype, "description": pdesc}
        if ptype == "array":
            prop["items"] = {"type": "string"}
        properties[pname] = prop
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "properties": properties, "required": list(required)},
    }}


# The original's default tools (names and parameters as listed in shared/API.md).
DEFAULT_TOOLS = [
    _schema("select_youtube_live_url", "Select a YouTube Live stream URL for a location.",
            {"location": ("string", "Place to look for a live camera"),
             "provider": ("string", "Video provider, default YouTube")}, ("location",)),
    _schema("capture_youtube_live_frame",
            "Capture a frame from a YouTube Live stream and store it as a JPEG file.",
            {"link": ("string", "Stream URL; default a preset stream"),
             "place": ("string", "Name of the place, used in the file name")}),
    _schema("camera_address_book", "List the known weather cameras and their addresses.",
            {"update": ("boolean", "Refresh the list from the camera service first")}),
    _schema("cap", "Capture an image from a Digitraffic weather camera by its key.",
            {"key": ("string", "Camera key or place name, default Porvoo")}),
    _schema("ask_gpt4v_about_image_file",
            "Describe an image file and extract quantitative information about it.",
            {"path": ("string", "File name as listed, or an http(s) URL")}, ("path",)),
    _schema("detect_objects", "Detect objects in an image with YOLO and store the annotated "
            "image; answers the counts per class.",
            {"image_path": ("string", "File name as listed, or an http(s) URL"),
             "conf": ("number", "Confidence threshold, default 0.25")}, ("image_path",)),
    _schema("plot_object", "Plot the number of an object over a series of images.",
            {"images": ("array", "File names of the images, in time order"),
             "object": ("string", "The object to count"),
             "methods": ("array", "Counting methods: gpt, yolo")}, ("images", "object")),
    _schema("list_image_files", "List the session's captured images.", {}),
    _schema("list_detection_files", "List the session's detection images.", {}),
    _schema("start_notification_stream", "Start a notification stream to monitor a process "
            "described in the conversation; answers its ID.",
            {"task": ("string", "What to monitor and when to notify"),
             "interval_seconds": ("integer", "Seconds between two rounds")}, ("task",)),
    _schema("stop_notification", "Stop the notification stream.",
            {"noti_id": ("string", "ID of the notification stream, given when it started")},
            ("noti_id",)),
]


def handler_tools() -> list[dict[str, Any]]:
    """The toolbox handlers, built per session as in the original."""
    return [
        _schema("add_api_tools", "Add the operations of an HTTP API as tools.",
                {"service_name": ("string", "Name to group the new tools under"),
                 "base_url": ("string", "Base URL of the API"),
                 "oas_url": ("string", "URL of its OpenAPI spec")},
                ("service_name", "base_url")),
        _schema("add_function_tools", "Add Python functions from the allowed modules as tools.",
                {"service_name": ("string", "Name to group the new tools under"),
                 "function_names": ("array", "Functions as module.function")},
                ("service_name", "function_names")),
        _schema("remove_tools", "Remove every tool of a service that was added before.",
                {"service_name": ("string", "The service whose tools to remove")},
                ("service_name",)),
    ]


def execute(session_id: str, name: str, arguments: str) -> str:
    """The original looked a tool up by name in the session's list and ran it; here every tool
    answers a stub (the benchmark's stand-in never asks for one)."""
    known = {t["function"]["name"] for t in session_tools[session_id]}
    try:
        args = json.loads(arguments or "{}")
    except ValueError:
        args = {}
    result = f"{name} done" if name in known else f"unknown tool {name}"
    return json.dumps({**args, name: result})


async def complete(session_id: str, messages: list[dict[str, Any]]) -> str:
    """The original's `complete`: call, run tool calls, call again, until a text answer."""
    tools = session_tools[session_id]
    content = ""
    for _ in range(MAX_ROUNDS):
        stream = await client().chat.completions.create(
            model=MODEL, messages=messages, tools=tools, stream=True)
        content, calls = "", {}
        async for chunk in stream:
            if not chunk.choices:
                continue
            delta = chunk.choices[0].delta
            content += delta.content or ""
            for tc in delta.tool_calls or []:
                call = calls.setdefault(tc.index, {"id": "", "type": "function",
                                                   "function": {"name": "", "arguments": ""}})
                call["id"] = tc.id or call["id"]
                if tc.function:
                    call["function"]["name"] += tc.function.name or ""
                    call["function"]["arguments"] += tc.function.arguments or ""
        message: dict[str, Any] = {"role": "assistant", "content": content or None}
        if calls:
            message["tool_calls"] = [calls[i] for i in sorted(calls)]
        messages.append(message)
        if not calls:
            return content
        for call in message["tool_calls"]:
            messages.append({"role": "tool", "tool_call_id": call["id"],
                             "content": execute(session_id, call["function"]["name"],
                                                call["function"]["arguments"])})
    return content


class PostMessage(BaseModel):
    content: str = Field(min_length=1, max_length=32000)


app = FastAPI(title="llmcam baseline (original design)")


@app.post("/api/sessions", status_code=201)
async def create_session() -> dict[str, str]:
    session_id = secrets.token_urlsafe(32)
    session_tools[session_id] = [*handler_tools(), *DEFAULT_TOOLS]
    session_messages[session_id] = []
    return {"session_id": session_id}


@app.post("/api/sessions/{sid}/messages")
async def post_message(sid: str, body: PostMessage) -> dict[str, Any]:
    if sid not in session_messages:
        raise HTTPException(404, "unknown session")
    messages = session_messages[sid]
    if not messages:
        messages.append({"role": "system", "content": SYSTEM_PROMPT})
    start = len(messages)
    messages.append({"role": "user", "content": body.content})
    try:
        reply = await complete(sid, messages)
    except openai.OpenAIError as exc:
        raise HTTPException(502, f"the LLM backend failed: {type(exc).__name__}") from exc
    return {"reply": reply, "messages": messages[start:]}


@app.get("/api/sessions/{sid}/tools")
async def get_tools(sid: str) -> list[dict[str, Any]]:
    if sid not in session_tools:
        raise HTTPException(404, "unknown session")
    return session_tools[sid]


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    # The original ran uvicorn with its defaults (access log on).
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
