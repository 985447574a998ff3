"""The shell (LLMCAM_ENABLE_SHELL=1) against a model that wants the server's secrets: no store,
no other process's environment, no server variables, no `ray`; a working directory of its own
that goes away with the session; never addable through `add_function_tools`."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from actors.names import session_key
from actors.settings import BUILTIN_TOOL_MODULES
from actors.tools.shell import remove_scratch, scratch_path
from testing.standins import Call, ToolCalls
from tests.conftest import Gateway, make_settings, new_session

SECRET = f"store-secret-{uuid.uuid4().hex}"


def sandbox_works() -> bool:
    """Whether this machine lets us make the namespaces (a container may not)."""
    import subprocess

    from actors.tools.shell import sandbox_argv

    argv = sandbox_argv(["true"], "0" * 32, [])
    return subprocess.run(argv, capture_output=True, timeout=30).returncode == 0


SANDBOX = sandbox_works()
needs_sandbox = pytest.mark.skipif(not SANDBOX, reason="no namespaces here: the shell refuses")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shelldata")


@pytest.fixture(scope="module")
def shell_gateway(ray_address, llm, data_dir: Path) -> Iterator[Gateway]:
    # the operator lists the shell module as a tool module: it must still not be addable
    settings = make_settings(data_dir, llm, enable_shell=True, tool_modules=[
        *BUILTIN_TOOL_MODULES, "tests.sample_tools", "actors.tools.shell"])
    with Gateway(settings) as gw:
        yield gw


def run(c: httpx.Client, llm, sid: str, *commands: str) -> list[str]:
    text = f"shell {uuid.uuid4().hex}"
    llm.script(text, [ToolCalls([Call("execute_bash_command", {"command": command})
                                 for command in commands])])
    response = c.post(f"/api/sessions/{sid}/messages", json={"content": text})
    assert response.status_code == 200, response.text
    return [m["content"] for m in response.json()["messages"] if m["role"] == "tool"]


@needs_sandbox
def test_no_store_no_environ_no_server_variables(shell_gateway: Gateway, fresh_llm,
                                                 data_dir: Path) -> None:
    with shell_gateway.client() as c:
        victim, attacker = new_session(c), new_session(c)
        said = c.post(f"/api/sessions/{victim}/messages", json={"content": SECRET})
        assert said.status_code == 200
        store = shell_gateway.settings.db_url
        assert Path(store).exists()
        [env, ray, store_read, data_grep, environs, whoami] = run(
            c, fresh_llm, attacker,
            "env", "command -v ray; echo ray=$?",
            f"cat {store}; cat {store}-wal; echo done",
            f"grep -ra {SECRET[:20]} {data_dir} 2>&1; echo searched",
            "cat /proc/[0-9]*/environ 2>&1 | tr '\\0' '\\n'; echo listed",
            "id -u")
    for name in ("OPENAI", "LLMCAM", "RAY_", "PYTHONPATH", "VIRTUAL_ENV", "YOLO_"):
        assert name not in env, env
    path = next(line for line in env.splitlines() if line.startswith("PATH="))
    assert ".venv" not in path and "ray=1" in ray, (path, ray)
    for output in (store_read, data_grep, environs):
        assert SECRET not in output, output[:500]
    assert "SQLite format" not in store_read
    # the Ray worker running the session carries RAY_* variables: none is readable
    assert "RAY_" not in environs and "YOLO_OFFLINE" not in environs, environs[:500]
    if os.geteuid() == 0:
        assert whoami.split()[0] != "0", whoami  # root runs commands as another uid


@needs_sandbox
def test_scratch_is_private_and_removed(shell_gateway: Gateway, fresh_llm,
                                        data_dir: Path) -> None:
    with shell_gateway.client() as c:
        a, b = new_session(c), new_session(c)
        [pwd, wrote] = run(c, fresh_llm, a, "pwd", "echo hello > note.txt; cat note.txt")
        home = scratch_path(session_key(a))
        assert pwd.startswith(f"{home}\n") and wrote.startswith("hello")
        assert not home.is_relative_to(data_dir.resolve())
        [peek, stray] = run(c, fresh_llm, b, f"cat {home}/note.txt; echo rc=$?",
                            "setsid sleep 313 & echo started")
        assert "hello" not in peek and "rc=1" in peek, peek
        assert "started" in stray
    # what a command left running died with it
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        assert cmdline != b"sleep\x00313\x00", pid
    remove_scratch(session_key(a))  # what the session actor calls on delete and exit
    assert not home.exists()


def test_shell_module_is_never_a_function_tool(shell_gateway: Gateway, fresh_llm) -> None:
    refs = ["actors.tools.shell.run_command", "actors.tools.shell.execute_bash_command",
            "actors.tools.shell.argv_for", "actors.tools.shell.remove_scratch"]
    fresh_llm.script("add shell", [ToolCalls([
        Call("add_function_tools", {"service_name": f"s{i}", "function_names": [ref]})
        for i, ref in enumerate(refs)])])
    with shell_gateway.client() as c:
        sid = new_session(c)
        response = c.post(f"/api/sessions/{sid}/messages", json={"content": "add shell"})
        results = [m["content"] for m in response.json()["messages"] if m["role"] == "tool"]
        assert len(results) == len(refs)
        assert all(r.startswith("Refused") for r in results), results
        names = {t["function"]["name"] for t in c.get(f"/api/sessions/{sid}/tools").json()}
        assert not {"run_command", "argv_for", "remove_scratch"} & names


@pytest.mark.skipif(SANDBOX, reason="the sandbox works here")
def test_without_namespaces_the_shell_refuses(shell_gateway: Gateway, fresh_llm) -> None:
    with shell_gateway.client() as c:
        [result] = run(c, fresh_llm, new_session(c), "id")
    assert result.startswith("The shell is unavailable"), result
