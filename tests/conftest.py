"""Shared fixtures: one real Ray for the test run, the stand-in servers, PostgreSQL, Chromium,
and `gateways`, the one factory of real gateways (uvicorn in a thread of this process) that
gives the same gateway again for the same settings. What is not a fixture is in helpers.py."""

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

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import ray

from testing.standins import DigitrafficServer, OpenAIServer, VideoServer
from tests.helpers import Gateway, Gateways

SHARED: dict[str, Any] = {}  # the session-wide llm and gateways, once made


@pytest.fixture(scope="session")
def ray_address() -> Iterator[str]:
    """One local Ray for the whole run, on loopback; gateways in subprocesses join it."""
    ray.init(address="local", _node_ip_address="127.0.0.1", namespace="llmcam",
             include_dashboard=False, num_cpus=2, runtime_env={"env_vars": WORKER_ENV},
             logging_level="WARNING")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="session")
def llm() -> Iterator[OpenAIServer]:
    """The model stand-in, one for the run (so gateways can be shared); each module starts it
    afresh (`_module_bounds`)."""
    with OpenAIServer() as server:
        SHARED["llm"] = server
        yield server


@pytest.fixture()
def fresh_llm(llm: OpenAIServer) -> OpenAIServer:
    llm.reset()
    return llm


@pytest.fixture(scope="session")
def digitraffic() -> Iterator[DigitrafficServer]:
    with DigitrafficServer() as server:
        yield server


@pytest.fixture(scope="session")
def video() -> Iterator[VideoServer]:
    with VideoServer() as server:
        yield server


def _stop_all_streams() -> None:
    """Stop every notification stream still running, as its user would (the child's `stop`):
    a module's streams must not keep calling the shared model stand-in in the next module."""
    from actors.session.names import NAMESPACE
    from actors.session.notification import PREFIX

    for named in ray.util.list_named_actors(all_namespaces=True):
        if named["namespace"] != NAMESPACE or not named["name"].startswith(PREFIX):
            continue
        try:
            child = ray.get_actor(named["name"], namespace=NAMESPACE)
            for noti_id in ray.get(child.status.remote(), timeout=30)["streams"]:
                ray.get(child.stop.remote(noti_id), timeout=30)
        except (ValueError, ray.exceptions.RayError):
            pass  # gone meanwhile, or dead (a node the module killed)


@pytest.fixture(scope="session")
def gateways(ray_address: str, llm: OpenAIServer,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateways]:
    factory = SHARED["gateways"] = Gateways(tmp_path_factory, llm)
    factory.module = SHARED.get("module", "")
    yield factory
    factory.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    terminalreporter.write_line(f"gateways started in this process: {Gateway.started} "
                                f"({getattr(SHARED.get('gateways'), 'started', 0)} by the "
                                f"factory)")


@pytest.fixture(scope="module", autouse=True)
def _module_bounds(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each module starts with a fresh model stand-in and leaves no stream running."""
    SHARED["module"] = request.module.__name__
    if "gateways" in SHARED:
        SHARED["gateways"].module = SHARED["module"]
    if "llm" in SHARED:
        SHARED["llm"].reset()
    yield
    if ray.is_initialized():
        _stop_all_streams()


@pytest.fixture(scope="module")
def gateway(request: pytest.FixtureRequest, gateways: Gateways) -> Gateway:
    """The module's gateway: the default one, or `tools_gateway` in a module that says
    `GATEWAY = "tools"`."""
    if getattr(request.module, "GATEWAY", None) == "tools":
        return request.getfixturevalue("tools_gateway")
    return gateways()


@pytest.fixture(scope="module")
def tools_gateway(gateways: Gateways, digitraffic: DigitrafficServer) -> Gateway:
    """The one for the tool tests: tools may reach 127.0.0.1 (the stand-ins live there), the
    weather cameras are the stand-in's, the detector is deployed."""
    return gateways(deploy_detector=True, allow_hosts=["127.0.0.1"],
                    weathercam_url=digitraffic.base_url)


@pytest.fixture(scope="module")
def client(gateway: Gateway) -> Iterator[httpx.Client]:
    with gateway.client() as c:
        yield c


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """One real PostgreSQL server (temp dir, loopback port) for the whole run: its URL."""
    from testing.postgres import PostgresServer

    with PostgresServer() as server:
        yield server.url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium through Playwright, headless (never a downloaded browser)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            yield browser
        finally:
            browser.close()
