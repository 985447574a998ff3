"""Shared fixtures: one real Ray for the test run, stand-in servers, and real gateways (uvicorn
in a thread of this process, or `llmcam serve` in a subprocess) on 127.0.0.1."""

from __future__ import annotations

import os

from actors.settings import worker_env

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER_ENV = {**worker_env(), "PYTHONPATH": ROOT_DIR}
os.environ.update(WORKER_ENV)  # before Ray is imported: it reads these at import time
# The test Ray's GCS declares a node dead after ~3 s of failed health checks (Ray's default is
# ~15 s): the node-loss tests kill a raylet and wait for its actors to come back elsewhere.
os.environ.setdefault("RAY_health_check_period_ms", "1000")
os.environ.setdefault("RAY_health_check_failure_threshold", "3")

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
import uvicorn

from actors.settings import BUILTIN_TOOL_MODULES, Settings
from gateway.app import create_app
from testing.standins import DigitrafficServer, OpenAIServer, VideoServer

ROOT = Path(ROOT_DIR)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_address() -> Iterator[str]:
    """One local Ray for the whole run, on loopback; gateways in subprocesses join it."""
    ray.init(address="local", _node_ip_address="127.0.0.1", namespace="llmcam",
             include_dashboard=False, num_cpus=2, runtime_env={"env_vars": WORKER_ENV},
             logging_level="WARNING")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def llm() -> Iterator[OpenAIServer]:
    with OpenAIServer() as server:
        yield server


@pytest.fixture()
def fresh_llm(llm: OpenAIServer) -> OpenAIServer:
    llm.reset()
    return llm


@pytest.fixture(scope="module")
def digitraffic() -> Iterator[DigitrafficServer]:
    with DigitrafficServer() as server:
        yield server


@pytest.fixture(scope="module")
def video() -> Iterator[VideoServer]:
    with VideoServer() as server:
        yield server


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
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "gateway did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=120, **kwargs)  # type: ignore[arg-type]

    def async_client(self, **kwargs: object) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=120, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def gateway(ray_address: str, llm: OpenAIServer,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    settings = make_settings(tmp_path_factory.mktemp("data"), llm)
    with Gateway(settings) as gw:
        yield gw


@pytest.fixture()
def client(gateway: Gateway) -> Iterator[httpx.Client]:
    with gateway.client() as c:
        yield c


def new_session(client: httpx.Client) -> str:
    response = client.post("/api/sessions")
    assert response.status_code == 201, response.text
    return response.json()["session_id"]


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
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--port", str(self.port)],
            env=env, cwd=ROOT, stdout=log.open("ab"), stderr=subprocess.STDOUT)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 90) -> ServeProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise AssertionError("llmcam serve did not become ready: " + self.log.read_text()[-3000:])

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(30)


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """One real PostgreSQL server (temp dir, loopback port) for the whole run: its URL."""
    from testing.postgres import PostgresServer

    with PostgresServer() as server:
        yield server.url


def fresh_database(url: str) -> str:
    """A new, empty database on the same server (so tests do not see each other's rows)."""
    import uuid

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
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)],
                            env=env, cwd=ROOT, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium through Playwright, headless (never a downloaded browser); modules
    that need other launch options define their own."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            yield browser
        finally:
            browser.close()
