"""What the tests share that is not a fixture: settings and real gateways (uvicorn in a thread of
the test process, or `llmcam serve` in a subprocess), chat turns over HTTP, SSE readers, the
notification-stream helpers, and the chat page in a real browser. Fixtures are in conftest.py.

Over 300 lines on purpose: it is the one place test modules import from (they import nothing
from each other); its sections follow what the tests drive."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit

import httpx
import pytest
import ray
import uvicorn
from ray._private import state as ray_state

from actors.session.names import NAMESPACE, actor_name, session_key
from actors.settings import BUILTIN_TOOL_MODULES, Settings
from gateway.app import create_app
from testing import free_port
from testing.standins import Call, OpenAIServer, Text, ToolCalls

ROOT = Path(__file__).resolve().parent.parent


# ---------- settings, gateways, servers ----------


def make_settings(tmp: Path, llm: OpenAIServer, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "openai_api_key": "test-key", "openai_base_url": llm.base_url, "data": tmp,
        "model": "test-model", "vision_model": "test-vision",
        "yolo_model": "yolov8n.yaml", "detector_gpus": 0, "notify_interval": 1,
        "tool_modules": [*BUILTIN_TOOL_MODULES, "tests.sample_tools"], "spare_sessions": 2,
        # every test client is 127.0.0.1: per-user limits high, unless a test is about them
        "rate_sessions": 100_000, "rate_turns": 100_000, "user_live_sessions": 10_000,
        "user_listeners": 10_000, "user_streams": 10_000, "min_stream_interval": 1,
        "confirm_tools": [],  # tests/test_confirm.py is about confirming
    }
    values.update(overrides)
    return Settings(**values)


class Gateway:
    """The real app under real uvicorn, in a thread of the test process (which is a Ray
    driver already, so the gateway uses that Ray)."""

    started = 0  # in this test run (conftest reports it)

    def __init__(self, settings: Settings, deploy_detector: bool = False,
                 port: int | None = None, graceful_s: float | None = None) -> None:
        self.settings = settings
        self.port = port or free_port()
        app = create_app(settings, deploy_detector=deploy_detector)
        self.server = uvicorn.Server(uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False,
            timeout_graceful_shutdown=graceful_s))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Gateway:
        Gateway.started += 1
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "gateway did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)

    def configure_registry(self) -> None:
        """What the gateway's start does to the cluster's registry (its live cap, its store's
        sweep), again: for a gateway used again after another one started."""
        from actors.session.registry import live_cap, registry_handle

        live = registry_handle()
        assert live is not None, "no registry: the gateway is not started"
        ray.get(live.configure.remote(live_cap(self.settings), self.settings), timeout=60)

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=120, **kwargs)  # type: ignore[arg-type]

    def async_client(self, **kwargs: object) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=120, **kwargs)  # type: ignore[arg-type]


def new_session(client: httpx.Client) -> str:
    response = client.post("/api/sessions")
    assert response.status_code == 201, response.text
    return response.json()["session_id"]


class Gateways:
    """`gateways(**overrides)`: a real gateway with `make_settings(..., **overrides)`, started
    once and given again for the same settings (to this module or a later one). The few last
    used stay open; older ones are closed once no module that is running still uses them."""

    KEEP_OPEN = 4  # each open gateway holds its spare session actors

    def __init__(self, tmp: pytest.TempPathFactory, llm: OpenAIServer) -> None:
        self.tmp, self.llm = tmp, llm
        self.open: OrderedDict[str, tuple[Gateway, str]] = OrderedDict()
        self.module = ""  # the test module running now (conftest sets it)
        self.started = 0

    def __call__(self, *, llm: OpenAIServer | None = None, deploy_detector: bool = False,
                 **overrides: Any) -> Gateway:
        llm = llm or self.llm
        key = repr((llm.base_url, deploy_detector, sorted(overrides.items())))
        module = self.module
        if key in self.open:
            gw, _ = self.open.pop(key)
            gw.configure_registry()  # the cluster's cap is the last started gateway's
        else:
            data = overrides.pop("data", None) or self.tmp.mktemp("gateway")
            gw = Gateway(make_settings(data, llm, **overrides), deploy_detector).__enter__()
            self.started += 1
        self.open[key] = (gw, module)
        for old in [k for k, (_, m) in self.open.items() if m != module]:
            if len(self.open) <= self.KEEP_OPEN:
                break
            self.open.pop(old)[0].__exit__()
        return gw

    def close(self) -> None:
        while self.open:
            self.open.popitem()[1][0].__exit__()


def spawn_serve(env: dict[str, str], log: Path, port: int) -> subprocess.Popen[bytes]:
    """`llmcam serve --port port` in a subprocess with exactly `env`, its output in `log`."""
    return subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)],
                            env=env, cwd=ROOT, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 180,
                 every: float = 0.5) -> None:
    """Until `url`/healthz answers 200; fails with the log's tail if the process ends first
    or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "no /healthz: " + log.read_text()[-3000:]
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(every)


class ServeProcess:
    """`llmcam serve` in a subprocess, joined to the test run's Ray."""

    def __init__(self, ray_address: str, settings: Settings, log: Path) -> None:
        self.port = free_port()
        env = {**os.environ, "RAY_ADDRESS": ray_address, "LLMCAM_DATA": str(settings.data),
               "OPENAI_BASE_URL": settings.openai_base_url or "", "OPENAI_API_KEY": "test-key",
               "LLMCAM_MODEL": settings.model, "LLMCAM_YOLO_MODEL": settings.yolo_model,
               "LLMCAM_DETECTOR_GPUS": "0", "LLMCAM_RATE_SESSIONS": "100000",
               "LLMCAM_RATE_TURNS": "100000", "LLMCAM_USER_LIVE_SESSIONS": "10000",
               "LLMCAM_CONFIRM_TOOLS": ""}
        self.log = log
        self.proc = spawn_serve(env, log, self.port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 90) -> ServeProcess:
        wait_healthy(self.url, self.proc, self.log, timeout, every=0.3)
        return self

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(30)


def fresh_database(url: str) -> str:
    """A new, empty database on the same server (so tests do not see each other's rows)."""
    import psycopg

    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return url.rsplit("/", 1)[0] + "/" + name


def serve_embedded(data: Path, log: Path, **env_vars: str) -> tuple[subprocess.Popen[bytes], str]:
    """`llmcam serve` with an embedded Ray on `data`, ready; without OPENAI_* unless given."""
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "OPENAI_API_KEY", "OPENAI_BASE_URL")}
    env.update({"LLMCAM_DATA": str(data), "LLMCAM_SPARE_SESSIONS": "0", **env_vars})
    proc = spawn_serve(env, log, port)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, log)
    except AssertionError:
        proc.kill()
        raise
    return proc, url


def serving(server: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A module-scoped fixture that runs `server(*args, **kwargs)`, a context manager (a stand-in, a
    canary), for the module: `images = serving(ImageServer)`."""

    @pytest.fixture(scope="module")
    def fixture() -> Iterator[Any]:
        with server(*args, **kwargs) as running:
            yield running

    return fixture


CANARY_HOST = "127.0.0.2"  # loopback, but outside an allow-list of 127.0.0.1
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class Canary:
    """A TCP listener on CANARY_HOST that counts every connection it accepts and answers each
    with `response` (a bare 404): whatever a test guards, the canary must see nothing."""

    def __init__(self, response: bytes = NOT_FOUND) -> None:
        self.response = response
        self.sock = socket.create_server((CANARY_HOST, 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{CANARY_HOST}:{self.port}"

    def __enter__(self) -> Canary:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.sendall(self.response)


# ---------- secrets and pictures ----------

CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # a control character (for text that must be clean)


def secret_marker() -> str:
    """A password-like string to look for where it must never be."""
    return f"MARKER{uuid.uuid4().hex[:16]}"


def malformed_db_urls(marker: str) -> list[str]:
    """PostgreSQL URLs with `marker` as (part of) the password that libpq cannot parse."""
    return [
        f"postgresql://u:{marker}-s3cret@127.0.0.1:1/db?bogus_option=1",
        f"postgresql://u:{marker}@host:notaport/db",
        f"postgresql://u:{marker}@[::1/db",  # libpq quotes this whole URL in its error
        f"postgresql://u:{marker}%zz@127.0.0.1/db",  # ... and this password
        f"postgresql://u@127.0.0.1/db?password={marker}&bogus=1",
    ]


def jpeg_frame(width: int, height: int, bgr: tuple[int, int, int] = (60, 130, 90)) -> bytes:
    """A JPEG of one colour with a bright rectangle (something to detect on, or to draw)."""
    import cv2
    import numpy as np

    frame = np.full((height, width, 3), bgr, np.uint8)
    cv2.rectangle(frame, (width // 4, height // 4), (width // 2, height // 2), (0, 230, 255), -1)
    ok, data = cv2.imencode(".jpg", frame)
    assert ok
    return data.tobytes()


# ---------- chat turns over HTTP ----------

def say(client: httpx.Client, sid: str, text: str) -> dict[str, Any]:
    """One message to the session; the turn's answer (200 expected)."""
    response = client.post(f"/api/sessions/{sid}/messages", json={"content": text})
    assert response.status_code == 200, response.text
    return response.json()


def tool_results(body: dict[str, Any]) -> list[str]:
    """The tools' results in a turn's answer."""
    return [m["content"] for m in body["messages"] if m["role"] == "tool"]


def turn(client: httpx.Client, sid: str, llm: OpenAIServer, text: str,
         calls: list[Call]) -> list[str]:
    """One chat turn in which the model calls `calls` (at once); the tools' results."""
    llm.script(text, [ToolCalls(calls)])
    return tool_results(say(client, sid, text))


# ---------- a long conversation, as the session stores it ----------

SYSTEM = {"role": "system", "content": "You are llmcam, a helpful camera assistant. " * 8}


def conversation(messages: int, seed: int = 7) -> list[dict[str, Any]]:
    """A system message, then turns (user; some rounds of parallel tool calls, each answered;
    an assistant reply) until there are at least `messages` messages."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = [dict(SYSTEM)]
    turn = 0
    while len(out) < messages:
        out.append({"role": "user", "content": f"turn {turn}: " + "ask " * rng.randint(1, 60)})
        for group in range(rng.choice([0, 0, 1, 2])):
            calls = [{"id": f"call_{turn}_{group}_{k}", "type": "function",
                      "function": {"name": "cap", "arguments": json.dumps({"key": f"k{k}"})}}
                     for k in range(rng.randint(1, 3))]
            out.append({"role": "assistant", "content": rng.choice([None, "Let me look."]),
                        "tool_calls": calls})
            out.extend({"role": "tool", "tool_call_id": c["id"],
                        "content": "result " * rng.randint(1, 300)} for c in calls)
        out.append({"role": "assistant", "content": "Answer, Porvoo ä. " * rng.randint(1, 40)})
        turn += 1
    out.append({"role": "user", "content": "the newest question"})
    return out


def tool_call_delta(index: int, id: str | None = None, name: str | None = None,
                    arguments: str | None = None) -> dict[str, Any]:
    """One piece of a streamed tool call, as `actors.llm.merge` takes it."""
    return {"index": index, "id": id, "name": name, "arguments": arguments}


# ---------- SSE answers (chat, turn) ----------

async def events(response: httpx.Response) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """(event, data) of an SSE answer, as they arrive."""
    kind, data = "message", []
    async for line in response.aiter_lines():
        if line == "":
            if data:
                yield kind, json.loads("\n".join(data))
            kind, data = "message", []
        elif line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


async def collect(client: httpx.AsyncClient, method: str, url: str,
                  started: asyncio.Event | None = None,
                  **kwargs: Any) -> list[tuple[str, dict[str, Any]]]:
    """Every event of a streamed answer; `started` is set at its first token."""
    seen: list[tuple[str, dict[str, Any]]] = []
    headers = {"Accept": "text/event-stream"}
    async with client.stream(method, url, headers=headers, **kwargs) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        async for item in events(response):
            seen.append(item)
            if started is not None and item[0] == "token":
                started.set()
    return seen


def text_of(seen: list[tuple[str, dict[str, Any]]]) -> str:
    return "".join(data["text"] for kind, data in seen if kind == "token")


# ---------- notification streams and /events ----------

STARTED = re.compile(r"Notification stream started with ID ([0-9a-f-]{36})")


WAIT = 90.0  # seconds any one condition may take on a loaded 2-core machine


async def until(condition: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Poll (bounded) until `condition()` is truthy; an async condition is awaited."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


class Listener:
    """One /events client (like a browser tab): collects events and comment lines."""

    def __init__(self, base_url: str, sid: str, last_event_id: int | str | None = None) -> None:
        self.url = f"{base_url}/api/sessions/{sid}/events"
        self.headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            self.headers["Last-Event-ID"] = str(last_event_id)
        self.events: list[dict[str, Any]] = []
        self.comments: list[str] = []
        self.status: int | None = None
        self.content_type = ""
        self.cache_control = ""
        self.ended = False
        self._opened = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        timeout = httpx.Timeout(30, read=None)
        try:
            async with httpx.AsyncClient(timeout=timeout) as client:
                async with client.stream("GET", self.url, headers=self.headers) as response:
                    self.status = response.status_code
                    self.content_type = response.headers.get("content-type", "")
                    self.cache_control = response.headers.get("cache-control", "")
                    self._opened.set()
                    fields: dict[str, str] = {}
                    async for line in response.aiter_lines():
                        if line.startswith(":"):
                            self.comments.append(line)
                        elif line == "":
                            if "data" in fields:
                                self.events.append({"id": int(fields["id"]),
                                                    "event": fields.get("event", "message"),
                                                    **json.loads(fields["data"])})
                            fields = {}
                        else:
                            name, _, value = line.partition(":")
                            value = value.removeprefix(" ")
                            fields[name] = (fields[name] + "\n" + value
                                            if name == "data" and name in fields else value)
        finally:
            self.ended = True
            self._opened.set()

    async def opened(self) -> Listener:
        await asyncio.wait_for(self._opened.wait(), WAIT)
        return self

    @property
    def ids(self) -> list[int]:
        return [e["id"] for e in self.events]

    @property
    def messages(self) -> list[str]:
        return [e["message"] for e in self.events]

    async def wait_for(self, count: int) -> list[dict[str, Any]]:
        await until(lambda: len(self.events) >= count or self.ended,
                    f"{count} events (have {len(self.events)})")
        assert len(self.events) >= count, f"stream ended after {self.events}"
        return self.events

    async def close(self) -> None:
        self._task.cancel()
        try:
            await self._task
        except (asyncio.CancelledError, httpx.HTTPError):
            pass


async def new_sid(c: httpx.AsyncClient) -> str:
    response = await c.post("/api/sessions")
    assert response.status_code == 201, response.text
    return response.json()["session_id"]


async def chat(c: httpx.AsyncClient, sid: str, content: str) -> dict[str, Any]:
    response = await c.post(f"/api/sessions/{sid}/messages", json={"content": content})
    assert response.status_code == 200, response.text
    return response.json()


def send(msg: str) -> list[Any]:
    """One stream round that sends `msg`: the call, then the model's closing answer."""
    return [ToolCalls([Call("send_notification", {"msg": msg})]), Text("sent it")]


def started_ids(turn: dict[str, Any]) -> list[str]:
    return [m.group(1) for msg in turn["messages"] if msg["role"] == "tool"
            for m in [STARTED.search(msg["content"] or "")] if m]


async def start_streams(c: httpx.AsyncClient, llm: OpenAIServer, sid: str,
                        tasks: list[str]) -> list[str]:
    """Start one stream per task through a chat turn; the stand-in model calls the tool."""
    marker = f"start-{uuid.uuid4().hex[:8]}"
    llm.script(marker, [ToolCalls([Call("start_notification_stream",
                                        {"task": t, "interval_seconds": 1}) for t in tasks])])
    turn = await chat(c, sid, f"please watch ({marker})")
    ids = started_ids(turn)
    assert len(ids) == len(tasks), turn["messages"]
    return ids


async def streams_of(c: httpx.AsyncClient, sid: str) -> dict[str, dict[str, Any]]:
    response = await c.get(f"/api/sessions/{sid}/notifications")
    assert response.status_code == 200, response.text
    return {s["noti_id"]: s for s in response.json()}


def stream_requests(llm: OpenAIServer, noti_id: str) -> list[dict[str, Any]]:
    """The model calls that stream `noti_id` made (its first message names it)."""
    mark = f"notification stream {noti_id}"
    return [r for r in llm.requests
            if r["messages"] and r["messages"][0].get("role") == "system"
            and mark in str(r["messages"][0].get("content"))]


def session_actor_info(sid: str) -> dict[str, Any] | None:
    """The live session actor, from the GCS (no dashboard needed)."""
    name = actor_name(sid)
    alive = [a for a in ray_state.actors().values()
             if a.get("Name") == name and a.get("State") == "ALIVE"]
    return alive[0] if alive else None


def stream_children(sid: str) -> list[dict[str, Any]]:
    """The session's notification actors that are not dead (at most one, by design)."""
    name = f"notify:{session_key(sid)}"
    return [a for a in ray_state.actors().values()
            if a.get("ActorClassName") == "NotificationActor" and a.get("Name") == name
            and a.get("State") != "DEAD"]


def child_streams(sid: str) -> set[str] | None:
    """The streams the session's notification actor runs now; None when it has none."""
    try:
        child = ray.get_actor(f"notify:{session_key(sid)}", namespace=NAMESPACE)
        return set(ray.get(child.status.remote(), timeout=30)["streams"])
    except (ValueError, ray.exceptions.RayActorError):
        return None


def kill_session_actor(sid: str, restart: bool = False) -> None:
    """Kill the session's actor as a crash would: Ray restarts it (`restart`), or it stays
    dead until the next request rebuilds it."""
    ray.kill(ray.get_actor(actor_name(sid), namespace=NAMESPACE), no_restart=not restart)


def assert_valid_conversation(messages: list[dict[str, Any]]) -> None:
    """What the OpenAI API insists on: every tool call answered, no answer without a call."""
    pending: set[str] = set()
    for m in messages:
        assert m["role"] in ("system", "user", "assistant", "tool"), m
        if m["role"] == "tool":
            assert m["tool_call_id"] in pending, f"tool result without a call: {m}"
            pending.discard(m["tool_call_id"])
        else:
            assert not pending, f"unanswered tool calls {pending} before {m}"
        if m["role"] == "assistant":
            pending |= {call["id"] for call in m.get("tool_calls") or []}
    assert messages[-1]["role"] in ("user", "tool")


# ---------- the chat page in a real browser ----------

CHROMIUM = Path("/usr/bin/chromium")
NEEDS_CHROMIUM = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's Chromium "
                                    "(/usr/bin/chromium) is not installed; this test never "
                                    "downloads a browser")
BROWSER = [pytest.mark.browser, NEEDS_CHROMIUM]  # a browser module's `pytestmark`
ARTIFACTS = ROOT / "test-artifacts"
WAIT_MS = 90_000
SLOW = 0.12  # seconds between two words of a slow reply
STORY = " ".join(f"Line {i} of a long and slowly told harbour story." for i in range(12))
USER_HEADER = "X-Forwarded-User"  # the sign-in proxy's header (LLMCAM_AUTH=proxy)
# Recorded in the page from its first script on: every CSP violation the browser reports.
WATCH = """
window.__violations = [];
document.addEventListener('securitypolicyviolation',
    (e) => window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));
"""


class BrowserPage:
    """One browser context (its own cookies and localStorage) on a gateway's chat page, with
    what it requested (`requests`: URLs, `sent`: (method, URL)) and the script errors it saw."""

    def __init__(self, browser: Any, base: str, headers: dict[str, str] | None = None) -> None:
        from playwright.sync_api import expect

        expect.set_options(timeout=WAIT_MS)
        self.base = base
        self.context = browser.new_context(viewport={"width": 1280, "height": 860},
                                           color_scheme="light", extra_http_headers=headers)
        self.context.add_init_script(WATCH)
        self.page = self.context.new_page()
        self.page.set_default_timeout(WAIT_MS)
        self.sent: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self.page.on("request", lambda r: self.sent.append((r.method, r.url)))
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on("console", lambda msg: self.errors.append(msg.text)
                     if msg.type == "error" else None)

    @property
    def requests(self) -> list[str]:
        return [url for _, url in self.sent]

    def open(self) -> None:
        from playwright.sync_api import expect

        self.page.goto(self.base + "/")
        expect(self.send_button).to_be_enabled()

    @property
    def send_button(self) -> Any:
        return self.page.get_by_role("button", name="Send", exact=True)

    @property
    def stop_button(self) -> Any:
        return self.page.get_by_role("button", name="Stop", exact=True)

    @property
    def input(self) -> Any:
        return self.page.get_by_label("Message")

    def role(self, role: str) -> Any:
        return self.page.locator(f'[data-role="{role}"]')

    def type_and_send(self, text: str) -> None:
        self.input.fill(text)
        self.send_button.click()

    def send(self, text: str) -> None:
        """Send and wait for the whole reply."""
        from playwright.sync_api import expect

        count = self.role("assistant").count()
        self.type_and_send(text)
        expect(self.role("assistant")).to_have_count(count + 1)
        expect(self.send_button).to_be_enabled()

    def sid(self) -> str:
        return self.page.evaluate("localStorage.getItem('llmcam.current')")

    def shot(self, name: str) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / name))

    def check_clean(self) -> None:
        """No CSP violation and no script error (a refused request's own console line aside)."""
        assert self.page.evaluate("window.__violations") == []
        assert [e for e in self.errors if "Failed to load resource" not in e] == []

    def close(self) -> None:
        self.context.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Page(BrowserPage):
    """The chat page of `gateway`, whose model is `llm`."""

    def __init__(self, browser: Any, gateway: Gateway, llm: OpenAIServer) -> None:
        super().__init__(browser, gateway.url)
        self.llm = llm

    def chats(self) -> list[dict[str, Any]]:
        return self.page.evaluate("JSON.parse(localStorage.getItem('llmcam.chats') || '[]')")

    def check_clean(self) -> None:
        """No CSP violation, no script error, and not one request away from the gateway."""
        super().check_clean()
        hosts = {urlsplit(u).netloc for u in self.requests if not u.startswith(("data:", "blob:"))}
        assert hosts == {urlsplit(self.base).netloc}, self.requests


# ---------- sign-in through a real OpenID provider ----------

class OidcProvider:
    """oidc-provider-mock (its real authorization form) on 127.0.0.1 in a thread; clients
    must register (so the redirect URI and the client secret are really checked) and the
    nonce is required."""

    def __init__(self) -> None:
        import oidc_provider_mock
        import werkzeug.serving

        app = oidc_provider_mock.app(require_client_registration=True, require_nonce=True)
        self.server = werkzeug.serving.make_server("127.0.0.1", 0, app, threaded=True)
        self.issuer = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.1,),
                                       daemon=True)

    def __enter__(self) -> OidcProvider:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def register(self, *callbacks: str) -> tuple[str, str]:
        """Dynamic client registration: (client_id, client_secret)."""
        response = httpx.post(f"{self.issuer}/oauth2/clients", json={
            "redirect_uris": list(callbacks), "token_endpoint_auth_method": "client_secret_basic"})
        assert response.status_code == 201, response.text
        body = response.json()
        return body["client_id"], body["client_secret"]

    def set_user(self, user: dict[str, str]) -> None:
        claims = {k: v for k, v in user.items() if k != "sub"}
        response = httpx.put(f"{self.issuer}/users/{user['sub']}", json=claims)
        assert response.status_code == 204, response.text
