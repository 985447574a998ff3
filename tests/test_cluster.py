"""Two Ray nodes on this machine (a second raylet through Ray's own Node class, in its own
process group): with PostgreSQL, session actors spread over both and a node killed hard loses
nothing; with SQLite they stay on the gateway's node. A gateway with another Ray and another
data directory, given the same PostgreSQL, sees every session whole."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import ray

from actors.session.names import NAMESPACE, actor_name
from testing.ray_node import RayNode
from testing.standins import OpenAIServer
from tests.helpers import (
    Gateway,
    free_port,
    fresh_database,
    make_settings,
    new_session,
    spawn_serve,
    wait_healthy,
)

SESSIONS = 10


@pytest.fixture(scope="module")
def second_node(ray_address: str) -> Iterator[RayNode]:
    node = RayNode(ray_address, resources={"node2": 1}, num_cpus=1)
    node.start(timeout=120)
    yield node
    node.kill()


def placement(sids: list[str]) -> dict[str, str]:
    """Session ID -> the node its live actor runs on (asked of the actor itself)."""
    where = {}
    for sid in sids:
        try:
            handle = ray.get_actor(actor_name(sid), namespace=NAMESPACE)
        except ValueError:
            continue
        where[sid] = ray.get(handle.__ray_call__.remote(
            lambda self: ray.get_runtime_context().get_node_id()), timeout=60)
    return where


def chat(c: httpx.Client, sid: str, text: str) -> None:
    response = c.post(f"/api/sessions/{sid}/messages", json={"content": text})
    assert response.status_code == 200, response.text
    assert response.json()["reply"] == f"echo: {text}"


def test_sqlite_sessions_stay_on_the_gateways_node(second_node: RayNode, llm: OpenAIServer,
                                                   tmp_path: Path) -> None:
    settings = make_settings(tmp_path, llm, spare_sessions=0)
    with Gateway(settings) as gw, gw.client() as c:
        sids = [new_session(c) for _ in range(6)]
        for sid in sids:
            chat(c, sid, "hello")
        where = placement(sids)
    head = ray.get_runtime_context().get_node_id()
    assert len(where) == 6 and set(where.values()) == {head}


def test_postgres_sessions_spread_and_survive_a_node_killed(
        second_node: RayNode, llm: OpenAIServer, postgres: str, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, llm, spare_sessions=0, db=fresh_database(postgres))
    with Gateway(settings) as gw, gw.client() as c:
        sids = [new_session(c) for _ in range(SESSIONS)]
        for sid in sids:
            chat(c, sid, "before the node died")
        where = placement(sids)
        assert second_node.node_id in where.values(), where  # spread over both nodes
        assert len(set(where.values())) == 2
        lost = [s for s, node in where.items() if node == second_node.node_id]
        second_node.kill()  # SIGKILL to the raylet's whole process group
        for sid in sids:  # every session answers, history intact, the lost ones elsewhere
            chat(c, sid, "after")
            texts = [m["content"] for m in c.get(f"/api/sessions/{sid}/messages").json()]
            assert texts == ["before the node died", "echo: before the node died",
                             "after", "echo: after"]
        now = placement(lost)
        assert now and second_node.node_id not in now.values()


def test_another_gateway_with_its_own_ray_sees_everything(ray_address: str, llm: OpenAIServer,
                                                           postgres: str,
                                                           tmp_path: Path) -> None:
    db = fresh_database(postgres)
    settings = make_settings(tmp_path / "one", llm, spare_sessions=0, db=db)
    with Gateway(settings) as gw, gw.client() as c:
        sids = [new_session(c) for _ in range(3)]
        for sid in sids:
            chat(c, sid, "on the first gateway")
        other = _serve_alone(db, tmp_path / "two", llm, tmp_path / "other.log")
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{other[1]}", timeout=120) as c2:
                for sid in sids:
                    texts = [m["content"] for m in c2.get(f"/api/sessions/{sid}/messages").json()]
                    assert texts == ["on the first gateway", "echo: on the first gateway"]
                chat(c2, sids[0], "on the second")
            # The first gateway's actor of that session is stale now: it notices and hands over.
            texts = [m["content"] for m in c.get(f"/api/sessions/{sids[0]}/messages").json()]
            assert texts[-2:] == ["on the second", "echo: on the second"]
            chat(c, sids[0], "back on the first")
        finally:
            other[0].terminate()
            assert other[0].wait(60) == 0
    assert not any(s in (tmp_path / "other.log").read_text() for s in sids)


def _serve_alone(db: str, data: Path, llm: OpenAIServer,
                 log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """`llmcam serve` with an embedded Ray of its own (no RAY_ADDRESS), the same database."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update({"LLMCAM_DB": db, "LLMCAM_DATA": str(data), "OPENAI_BASE_URL": llm.base_url,
                "OPENAI_API_KEY": "test-key", "LLMCAM_MODEL": "test-model",
                "LLMCAM_YOLO_MODEL": "yolov8n.yaml", "LLMCAM_SPARE_SESSIONS": "0"})
    proc = spawn_serve(env, log, port)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc, log)
    except AssertionError:
        proc.kill()
        raise
    return proc, port
