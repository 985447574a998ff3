"""No secret leaves the system (API.md, after the HTTP error list): not a database password
(a malformed LLMCAM_DB), not the API key (an LLM server that quotes it back), not in an answer,
a log line or a Ray log; and the LLM client actors' names are no function of the key."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from actors.llm import LLM, LLMClient, client_name, failure
from actors.settings import Settings
from actors.store import open_store
from testing.standins import Fail, OpenAIServer, Text
from testing.standins.openai_server import FailMidStream
from tests.helpers import (
    Gateway,
    collect,
    free_port,
    make_settings,
    malformed_db_urls,
    secret_marker,
    spawn_serve,
)


def _files_containing(root: Path, needle: str) -> list[str]:
    found = []
    for path in root.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink() and needle.encode() in path.read_bytes():
                found.append(str(path))
        except OSError:  # a socket, or gone meanwhile
            continue
    return found


# -- the database password ----------------------------------------------------------------


def test_the_store_and_psycopg_logs_never_show_the_password(
        postgres: str, caplog: pytest.LogCaptureFixture) -> None:
    """A store opened with a password (the test server lets anyone in) shows none; a psycopg
    log record that would quote it (the pool logs each failed connection's text) is scrubbed."""
    caplog.set_level(logging.DEBUG)
    marker = secret_marker()
    user, host = postgres.removeprefix("postgresql://").split("@", 1)  # no password: trust
    url = f"postgresql://{user}:{marker}-pw@{host}"
    store = open_store(url)
    try:
        assert marker + "-pw" not in repr(store) + str(store.url)
        assert "***" in store.url
    finally:
        store.close()
    logging.getLogger("psycopg.pool").warning("error connecting: %s", f"password={marker}-pw")
    try:
        raise ValueError(f"connection to {url} failed")
    except ValueError:
        logging.getLogger("psycopg").exception("quoted %s", url)
    assert caplog.records and marker + "-pw" not in caplog.text
    assert all(marker + "-pw" not in (r.exc_text or "") for r in caplog.records)


@pytest.mark.parametrize("which", [0, 2])
def test_serve_with_a_malformed_db_url_leaks_no_password(which: int, tmp_path: Path,
                                                         llm: OpenAIServer) -> None:
    """`llmcam serve` with its own Ray (under a RAY_TMPDIR of ours): it fails (or answers
    503s), and neither its output nor any file of its Ray session holds the password."""
    marker = secret_marker()
    ray_tmp = Path(tempfile.mkdtemp(prefix="lr-", dir="/tmp"))  # short: Ray's socket paths
    port = free_port()
    log = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update({"LLMCAM_DATA": str(tmp_path / "data"), "OPENAI_BASE_URL": llm.base_url,
                "OPENAI_API_KEY": "k", "LLMCAM_SPARE_SESSIONS": "1", "RAY_TMPDIR": str(ray_tmp),
                "LLMCAM_DB": malformed_db_urls(marker)[which], "LLMCAM_DETECTOR_GPUS": "0"})
    proc = spawn_serve(env, log, port)
    try:
        deadline = time.monotonic() + 150
        while proc.poll() is None:
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            try:
                answer = httpx.post(f"http://127.0.0.1:{port}/api/sessions", timeout=5)
            except httpx.HTTPError:
                time.sleep(0.5)
                continue
            assert answer.status_code == 503, answer.text  # serving, but not without a store
            assert marker not in answer.text
            proc.terminate()
            break
        proc.wait(60)
        output = log.read_text(errors="replace")
        assert "LLMCAM_DB is not a valid PostgreSQL URL" in output, output[-3000:]
        assert marker not in output, output[-3000:]
        sessions = list(ray_tmp.rglob("session_*"))
        assert sessions, f"no Ray session under {ray_tmp}"  # the check below saw Ray's logs
        assert any((s / "logs").is_dir() for s in sessions)
        assert _files_containing(ray_tmp, marker) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        shutil.rmtree(ray_tmp, ignore_errors=True)


# -- the API key and the LLM server's text -------------------------------------------------


def _ray_logs() -> Path:
    import ray

    return Path(ray._private.worker.global_worker.node.get_logs_dir_path())


def _key_error(marker: str) -> str:
    return (f"Incorrect API key provided: sk-proj-{marker}...ab12. You can find your API key "
            "at https://platform.openai.com/account/api-keys.")


def _clean(text: str, marker: str) -> None:
    assert marker not in text and "Incorrect API key" not in text and "sk-proj" not in text


async def test_an_llm_that_quotes_the_key_is_summarized(
        gateway: Gateway, fresh_llm: OpenAIServer, caplog: pytest.LogCaptureFixture) -> None:
    """401 with the key's parts in its text: a JSON turn and a streamed one (and a watcher of
    it) get our summary; the conversation, the gateway's log and Ray's logs hold no part of
    the server's text."""
    caplog.set_level(logging.DEBUG)
    marker = secret_marker()
    async with gateway.async_client() as client:
        sid = (await client.post("/api/sessions")).json()["session_id"]
        fresh_llm.push(Fail(401, _key_error(marker)))
        answer = await client.post(f"/api/sessions/{sid}/messages", json={"content": "hi"})
        assert answer.status_code == 502, answer.text
        assert answer.json()["detail"] == "the LLM server refused the API key (401)"
        _clean(answer.text, marker)

        fresh_llm.push(Fail(401, _key_error(marker)))
        fresh_llm.delay = 1.5  # the turn is in flight a while: watch it too
        url = f"/api/sessions/{sid}/messages"
        streamed = asyncio.create_task(collect(client, "POST", url, json={"content": "again"}))
        watched: list[tuple[str, Any]] = []
        deadline = time.monotonic() + 30
        while not streamed.done() and time.monotonic() < deadline:
            turn = await client.get(f"/api/sessions/{sid}/turn",
                                    headers={"Accept": "text/event-stream"})
            if turn.status_code == 200:
                _clean(turn.text, marker)
                watched = [(line, None) for line in turn.text.splitlines()
                           if line.startswith("data:")]
                break
            await asyncio.sleep(0.1)
        seen = await streamed
        fresh_llm.delay = 0.0
        errors = [data for kind, data in seen if kind == "error"]
        assert errors == [{"detail": "the LLM server refused the API key (401)"}], seen
        _clean(repr(seen), marker)
        assert watched and any("refused the API key (401)" in line for line, _ in watched)

        history = await client.get(f"/api/sessions/{sid}/messages")
        assert history.status_code == 200
        _clean(history.text, marker)
        after = await client.get(f"/api/sessions/{sid}/turn")
        _clean(after.text, marker)
    _clean(caplog.text, marker)
    await asyncio.sleep(1)  # Ray's workers write their logs as they go
    assert _files_containing(_ray_logs(), marker) == []


async def test_an_llm_error_inside_a_stream_is_summarized(
        gateway: Gateway, fresh_llm: OpenAIServer, caplog: pytest.LogCaptureFixture) -> None:
    """An `{"error": ...}` a server sends mid-answer is a summary too."""
    caplog.set_level(logging.DEBUG)
    marker = secret_marker()
    fresh_llm.push(FailMidStream(_key_error(marker), content="Hello", status=401))
    async with gateway.async_client() as client:
        sid = (await client.post("/api/sessions")).json()["session_id"]
        answer = await client.post(f"/api/sessions/{sid}/messages", json={"content": "hi"})
        assert answer.status_code == 502, answer.text
        assert answer.json()["detail"] == ("the LLM server refused the API key (401) in the "
                                           "middle of its answer")
        _clean(answer.text, marker)
        _clean((await client.get(f"/api/sessions/{sid}/messages")).text, marker)
    _clean(caplog.text, marker)


SUMMARIES = [
    (Fail(400, "bad request: {marker}"), "the LLM server refused the request (400)"),
    (Fail(401, "{marker}"), "the LLM server refused the API key (401)"),
    (Fail(404, "The model {marker} does not exist"),
     "the LLM server does not know the model or the endpoint (404)"),
    (Fail(429, "slow down {marker}"), "the LLM server is rate limiting (429)"),
    (Fail(500, "Traceback ... {marker}"), "the LLM server failed (500)"),
    (FailMidStream("{marker}", content="Hi"),
     "the LLM server failed (500) in the middle of its answer"),
]


@pytest.mark.parametrize(("reply", "summary"), SUMMARIES)
async def test_every_failure_of_the_llm_client_is_a_summary(
        reply: Any, summary: str, fresh_llm: OpenAIServer) -> None:
    """The LLMClient itself (no Ray): streamed and not, each answer is our words only. The
    client retries a 429 and a 5xx once, so those are scripted twice."""
    marker = secret_marker()
    kind = type(reply)
    scripted = kind(**{**reply.__dict__, "message": reply.message.format(marker=marker)})
    client = LLMClient(Settings(openai_api_key="k", openai_base_url=fresh_llm.base_url,
                                model="m"))
    request = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    fresh_llm.push(scripted, scripted)
    chunks = [c async for c in client.stream(dict(request))]
    assert chunks[-1] == {"error": summary}, chunks
    _clean(repr(chunks), marker)
    fresh_llm.reset()
    if kind is Fail:
        fresh_llm.push(scripted, scripted)
        answer = await client.complete(dict(request))
        assert answer == {"error": summary}
    fresh_llm.reset()


async def test_an_unreachable_or_garbled_llm_is_a_summary(fresh_llm: OpenAIServer) -> None:
    request = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    closed = LLMClient(Settings(openai_api_key="k", model="m",
                                openai_base_url=f"http://127.0.0.1:{free_port()}/v1"))
    assert (await closed.complete(dict(request)))["error"] == (
        "the LLM server could not be reached (APIConnectionError)")
    chunks = [c async for c in closed.stream(dict(request))]
    assert chunks == [{"error": "the LLM server could not be reached (APIConnectionError)"}]

    import openai

    timeout = openai.APITimeoutError(request=httpx.Request("POST", "http://x/v1"))
    assert failure(timeout) == "the LLM server timed out"
    assert failure(ValueError("server said sk-secret")) == (
        "the LLM server sent an answer that could not be read (ValueError)")
    assert failure(RuntimeError("sk-secret")) == (
        "the connection to the LLM server broke (RuntimeError)")


# -- the client actors' names ---------------------------------------------------------------


def test_client_names_are_no_function_of_the_key(tmp_path: Path) -> None:
    import hashlib

    llm = type("S", (), {"base_url": "http://127.0.0.1:9/v1"})()
    keys = ["sk-proj-one", "sk-proj-two", "", "x" * 200]
    for index in range(2):
        names = {client_name(make_settings(tmp_path, llm, openai_api_key=k), index)
                 for k in keys}
        assert len(names) == 1, names
        name = names.pop()
        for key in keys[:2]:
            assert key not in name
            for digest in (hashlib.sha256(key.encode()).hexdigest(),
                           hashlib.sha256(f"{llm.base_url}|{key}".encode()).hexdigest(),
                           hashlib.md5(key.encode()).hexdigest()):
                assert digest[:6] not in name
    other = type("S", (), {"base_url": "http://127.0.0.1:10/v1"})()
    assert client_name(make_settings(tmp_path, other), 0) != client_name(
        make_settings(tmp_path, llm), 0)
    # credentials in the base URL are not part of the name either
    with_user = type("S", (), {"base_url": "http://user:pw-secret@127.0.0.1:9/v1?key=q"})()
    assert client_name(make_settings(tmp_path, with_user), 0) == client_name(
        make_settings(tmp_path, llm), 0)


async def test_gateways_with_other_keys_share_a_client_and_keep_their_keys(
        ray_address: str, tmp_path: Path, fresh_llm: OpenAIServer) -> None:
    """One actor for one server, whatever the key; each call goes with its caller's key."""
    import ray

    one = LLM(make_settings(tmp_path, fresh_llm, openai_api_key="key-one"), "same")
    two = LLM(make_settings(tmp_path, fresh_llm, openai_api_key="key-two"), "same")
    assert one._handle._actor_id == two._handle._actor_id
    request = {"model": "m", "messages": [{"role": "user", "content": "keys"}]}
    fresh_llm.push(Text("a"), Text("b"), Text("c"))
    assert await one.complete(dict(request)) == "a"
    assert await two.complete(dict(request)) == "b"
    assert [c async for c in one.stream(dict(request)) if "content" in c] == [{"content": "c"}]
    assert fresh_llm.api_keys == ["key-one", "key-two", "key-one"]
    named = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)}
    assert not any("key-one" in n or "key-two" in n for n in named)


# -- OpenAPI text the model reads ------------------------------------------------------------


