"""A session's files are reached only through that session, by a name it owns: over HTTP every
other name (another session's, traversal, absolute paths, encodings) is a 404, and tools answer
"no such file"; nothing reads the disk by name. Shell commands run in the session's own
scratch directory."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from actors.session.names import session_key
from actors.tools.shell import argv_for, run_command, scratch_path
from testing.standins import Call, DigitrafficServer, OpenAIServer, Text
from tests.helpers import Gateway, Gateways, new_session, turn

SAVED = re.compile(r"saved it as (\S+?)\. ")
SECRET = b"top secret bytes"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("isolation")
    (path / "secret.jpg").write_bytes(SECRET)  # a file on disk beside the store
    return path


@pytest.fixture(scope="module")
def gateway(gateways: Gateways, digitraffic: DigitrafficServer, data_dir: Path) -> Gateway:
    return gateways(data=data_dir, allow_hosts=["127.0.0.1"], weathercam_url=digitraffic.base_url,
                    enable_shell=True, max_tool_calls=16)


@pytest.fixture(scope="module")
def two(client: httpx.Client, llm: OpenAIServer) -> tuple[tuple[str, str], tuple[str, str]]:
    """Sessions A and B, each with one capture: ((sid, file name), (sid, file name))."""
    a, b = new_session(client), new_session(client)
    [ra] = turn(client, a, llm, "A captures Porvoo", [Call("cap", {"key": "Porvoo"})])
    [rb] = turn(client, b, llm, "B captures Oulu", [Call("cap", {"key": "Oulu"})])
    return (a, SAVED.search(ra)[1]), (b, SAVED.search(rb)[1])  # type: ignore[index]


def raw_get(client: httpx.Client, raw_path: str) -> httpx.Response:
    """GET a path exactly as written (httpx would otherwise resolve ./ and ../)."""
    request = client.build_request("GET", "/")
    request.url = request.url.copy_with(raw_path=raw_path.encode())
    return client.send(request)


def test_own_files_only_over_http(client: httpx.Client, two: tuple) -> None:
    (a, name_a), (b, name_b) = two
    assert client.get(f"/api/sessions/{a}/files/{name_a}").status_code == 200
    assert client.get(f"/api/sessions/{b}/files/{name_a}").status_code == 404
    assert [f["name"] for f in client.get(f"/api/sessions/{b}/files").json()] == [name_b]
    key_a = session_key(a)
    attempts = [
        # (a plain "../../<A>/files/<name>" is A's own URL by RFC 3986: it needs A's ID)
        f"..%2F..%2F{a}%2Ffiles%2F{name_a}", f"..%2F..%2F{key_a}%2Ffiles%2F{name_a}",
        f"%2e%2e/%2e%2e/{a}/files/{name_a}", f"%2e%2e%2f%2e%2e%2f{a}%2ffiles%2f{name_a}",
        "../secret.jpg", "%2e%2e/secret.jpg", "%2e%2e%2fsecret.jpg", "%252e%252e%252fsecret.jpg",
        "..%5csecret.jpg", "..\\secret.jpg", "/etc/passwd", "%2Fetc%2Fpasswd",
        "../../../../../../etc/passwd", "llmcam.sqlite3", "../llmcam.sqlite3", "%2e", "%2e%2e",
        f"shell/{key_a}", f"%2e%2f{name_b}", f"sub/{name_b}", f"%2F{name_b}",
    ]
    for attempt in attempts:
        response = raw_get(client, f"/api/sessions/{b}/files/{attempt}")
        assert response.status_code == 404, (attempt, response.status_code)
        assert SECRET not in response.content and b"SQLite" not in response.content
        assert response.json()["detail"]


def test_tools_see_only_their_session(client: httpx.Client, fresh_llm: OpenAIServer,
                                      two: tuple, data_dir: Path) -> None:
    (a, name_a), (b, name_b) = two
    fresh_llm.script("Describe this image quantitatively", [Text('{"car": 1}')])
    results = turn(client, b, fresh_llm, "B looks around", [
        Call("ask_gpt4v_about_image_file", {"path": name_a}),
        Call("detect_objects", {"image_path": name_a}),
        Call("plot_object", {"images": [name_b, name_a], "object": "car", "methods": ["gpt"]}),
        Call("ask_gpt4v_about_image_file", {"path": "../secret.jpg"}),
        Call("ask_gpt4v_about_image_file", {"path": str(data_dir / "secret.jpg")}),
        Call("ask_gpt4v_about_image_file", {"path": "%2e%2e%2fllmcam.sqlite3"}),
        Call("detect_objects", {"image_path": "/etc/passwd"}),
        Call("ask_gpt4v_about_image_file", {"path": f"/anything/../{name_b}"}),  # B's own
        Call("list_image_files", {}),
    ])
    for result in results[:7]:
        assert "no such file" in result, result
        assert "top secret" not in result
    assert results[7] == '{"car": 1}'
    assert name_b in results[8] and name_a not in results[8]
    visions = [r for r in fresh_llm.requests if r.get("model") == "test-vision"]
    assert len(visions) == 1  # only B's own file reached the vision model


def test_shell_runs_in_the_sessions_scratch_directory(client: httpx.Client,
                                                      fresh_llm: OpenAIServer, two: tuple,
                                                      data_dir: Path) -> None:
    (a, _), (b, _) = two
    [pwd_a, wrote, env] = turn(client, a, fresh_llm, "A uses the shell", [
        Call("execute_bash_command", {"command": "pwd"}),
        Call("execute_bash_command", {"command": "echo hello > note.txt; cat note.txt; exit 3"}),
        Call("execute_bash_command", {"command": "echo key=${OPENAI_API_KEY:-none}"}),
    ])
    [pwd_b, listing, missing, long] = turn(client, b, fresh_llm, "B uses the shell", [
        Call("execute_bash_command", {"command": "pwd"}),
        Call("execute_bash_command", {"command": "ls -a"}),
        Call("execute_bash_command", {"command": "no-such-program --flag"}),
        Call("execute_bash_command", {"command": "head -c 100000 /dev/zero | tr '\\0' x"}),
    ])
    home_a, home_b = scratch_path(session_key(a)), scratch_path(session_key(b))
    assert session_key(a) not in pwd_a and a not in pwd_a  # pwd goes to the model
    assert pwd_a == f"{home_a}\n\n[exit code 0]" and pwd_b == f"{home_b}\n\n[exit code 0]"
    assert wrote == "hello\n\n[exit code 3]" and (home_a / "note.txt").exists()
    assert env.startswith("key=none")  # the server's secrets are not in the environment
    assert "note.txt" not in listing and "[exit code 0]" in listing
    assert "command not found" in missing and "[exit code 127]" in missing
    assert "[output truncated" in long and len(long) < 20_000


async def test_shell_timeout_kills_the_command(tmp_path: Path) -> None:
    assert argv_for("ls -la /tmp") == ["ls", "-la", "/tmp"]  # plain: no shell in between
    assert argv_for("sleep 1 && echo done") == ["bash", "-c", "sleep 1 && echo done"]
    code, output = await run_command(argv_for("echo start; sleep 30; echo never"), tmp_path,
                                     timeout=1)
    assert code is None and output.startswith("start") and "never" not in output
