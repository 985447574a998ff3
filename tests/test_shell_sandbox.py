"""The shell (LLMCAM_ENABLE_SHELL=1) against a model that wants the server's secrets: no store,
no other process's environment, no server variables, no `ray`; a working directory of its own
that goes away with the session; never addable through `add_function_tools`.

Then the sandbox itself (bubblewrap) against a command that tries to escape, driven directly
(testing.shell_driver) both as root, like the server here and in CI, and as an unprivileged user,
like a server run as a service account: no mount or umount, nothing of the data directory, of other
sessions or of the host's /dev/shm in its view, only its own processes in /proc, a process limit
a fork bomb hits, size-limited private /tmp and /dev/shm that vanish with the command, no network,
no server variables; and where the sandbox cannot run, nothing runs.

Over 300 lines on purpose: one feature's tests (the sandbox, as root and as an ordinary user),
beside the fixtures only they use."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import site
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from actors.session.names import session_key
from actors.settings import BUILTIN_TOOL_MODULES
from actors.tools import shell
from actors.tools.shell import remove_scratch, scratch_path
from testing.standins import Call, ToolCalls
from tests.helpers import Gateway, Gateways, new_session

SECRET = f"store-secret-{uuid.uuid4().hex}"
ROOT = Path(__file__).resolve().parent.parent
TEST_USER = "llmcam-shelltest"


def sandbox_problem() -> str | None:
    """Why this machine cannot run the sandbox (no bwrap, no user namespaces...), or None."""
    return asyncio.run(shell.sandbox_problem())


PROBLEM = sandbox_problem()
SANDBOX = PROBLEM is None
needs_sandbox = pytest.mark.skipif(not SANDBOX, reason=f"no sandbox here: {PROBLEM}")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shelldata")


@pytest.fixture(scope="module")
def shell_gateway(gateways: Gateways, data_dir: Path) -> Gateway:
    # the operator lists the shell module as a tool module: it must still not be addable
    return gateways(data=data_dir, enable_shell=True, tool_modules=[
        *BUILTIN_TOOL_MODULES, "tests.sample_tools", "actors.tools.shell"])


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
    # never root, even inside its namespace; a uid of the session's own
    first, count = shell.SANDBOX_UIDS
    assert first <= int(whoami.split()[0]) < first + count, whoami


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


# The sandbox against escapes, as root and as an unprivileged user ------------------------------


@dataclass
class Driver:
    """Runs testing.shell_driver as root or as TEST_USER, with secrets in its environment."""

    mode: str
    tmpdir: Path  # its TMPDIR: the scratch root lies under it
    python: str

    def __call__(self, steps: list[dict], timeout: float = 120) -> dict:
        argv = [self.python, "-m", "testing.shell_driver"]
        if self.mode == "user":
            argv = ["runuser", "-u", TEST_USER, "--", *argv]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TMPDIR": str(self.tmpdir),
               "LANG": "C.UTF-8", "OPENAI_API_KEY": SECRET, "LLMCAM_DATA": str(self.tmpdir),
               "RAY_ADDRESS": "127.0.0.1:6379",
               "PYTHONPATH": os.pathsep.join([str(ROOT), *site.getsitepackages()])}
        done = subprocess.run(argv, input=json.dumps(steps), capture_output=True, text=True,
                              cwd=ROOT, env=env, timeout=timeout)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout)

    def scratch(self, key: str) -> Path:
        return self.tmpdir / "llmcam-shell" / scratch_path(key).name

    def host_uid(self, answer: dict, key: str) -> int:
        """The uid the kernel sees for the processes of `key`'s commands."""
        return answer["uids"][key] if self.mode == "root" else pwd.getpwnam(TEST_USER).pw_uid


def user_python() -> str | None:
    """An interpreter TEST_USER may run: ours, or the system's of the same version (ours may
    live under /root, as with pyenv); the virtualenv's packages come through PYTHONPATH."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for python in (sys.executable, f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        if subprocess.run(["runuser", "-u", TEST_USER, "--", python, "-c", "pass"], cwd="/",
                          capture_output=True, timeout=60).returncode == 0:
            return python
    return None


def ensure_test_user() -> str | None:
    """Why TEST_USER cannot be used here, or None (made with useradd when missing)."""
    if os.geteuid() != 0:
        return "not root: cannot switch to another user"
    if shutil.which("runuser") is None:
        return "no runuser"
    try:
        pwd.getpwnam(TEST_USER)
    except KeyError:
        made = subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                               "/usr/sbin/nologin", TEST_USER], capture_output=True, text=True)
        if made.returncode != 0:
            return f"useradd failed: {made.stderr.strip()}"
    return None


@pytest.fixture(scope="module", params=["root", "user"])
def driver(request: pytest.FixtureRequest) -> Iterator[Driver]:
    if not SANDBOX:
        pytest.skip(f"no sandbox here: {PROBLEM}")
    if request.param == "root" and os.geteuid() != 0:
        pytest.skip("not root")
    python: str | None = sys.executable
    if request.param == "user":
        if why := ensure_test_user():
            pytest.skip(why)
        if (python := user_python()) is None:
            pytest.skip(f"no Python interpreter that {TEST_USER} may run")
    tmpdir = Path(tempfile.mkdtemp(prefix="llmcam-shelltest-"))
    tmpdir.chmod(0o711)  # like /tmp: as root, bwrap runs as the sandbox's uid and passes through
    if request.param == "user":
        os.chown(tmpdir, pwd.getpwnam(TEST_USER).pw_uid, pwd.getpwnam(TEST_USER).pw_gid)
    yield Driver(request.param, tmpdir, python)
    shutil.rmtree(tmpdir, ignore_errors=True)


def new_key() -> str:
    return session_key(uuid.uuid4().hex)


def uid_processes(uid: int) -> list[int]:
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        real = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
        if int(real) == uid:
            pids.append(int(pid))
    return pids


def wait_no_processes(uid: int, within: float = 10.0) -> list[int]:
    deadline = time.monotonic() + within
    while (left := uid_processes(uid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


UMOUNTS = """
for m in /proc /tmp /dev/shm /dev /usr /etc/passwd "$PWD" /; do
  umount "$m" 2>/dev/null && echo "UNMOUNTED $m"
  umount -l "$m" 2>/dev/null && echo "UNMOUNTED $m"
done
mount -t tmpfs none /tmp 2>/dev/null && echo MOUNTED
mount -t proc proc /proc 2>/dev/null && echo MOUNTED
unshare -r true 2>/dev/null && echo USERNS
unshare -rm sh -c 'umount -l /proc && echo UNMOUNTED-IN-USERNS' 2>/dev/null
python3 - <<'PY'
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
for target in (b"/proc", b"/tmp", b"/dev/shm", os.getcwd().encode(), b"/"):
    if libc.umount2(target, 2) == 0:  # MNT_DETACH
        print("UNMOUNTED", target)
    else:
        print("umount2", target, os.strerror(ctypes.get_errno()))
PY
grep CapEff /proc/self/status; id -u
echo end
"""


def test_no_umount_and_nothing_of_others_in_view(driver: Driver) -> None:
    marker = f"marker-{uuid.uuid4().hex}"
    # a data directory any user of the host may read, and a file in the host's /dev/shm
    data = Path(tempfile.mkdtemp(prefix="llmcam-shelltest-data-"))
    data.chmod(0o755)
    (data / marker).write_text(SECRET)
    (data / marker).chmod(0o644)
    shm = Path("/dev/shm") / marker
    shm.write_text(SECRET)
    shm.chmod(0o644)
    try:
        if driver.mode == "user":  # the host's permissions would let this user read it
            peek = subprocess.run(["runuser", "-u", TEST_USER, "--", "cat", str(data / marker)],
                                  capture_output=True, text=True, timeout=30)
            assert peek.stdout == SECRET
        victim, attacker = new_key(), new_key()
        other = driver.scratch(victim)
        answer = driver([
            {"key": victim, "command": f"echo {SECRET} > {marker}; chmod 644 {marker}"},
            {"key": attacker, "command": UMOUNTS},
            {"key": attacker, "command": f"cat {data}/{marker} {other}/{marker} /dev/shm/{marker}"
                                         f" {ROOT}/pyproject.toml /root/.bashrc 2>&1; echo rc=$?"},
            {"key": attacker, "command": f"find / -name '{marker}*' 2>/dev/null; echo found"},
            {"key": attacker, "command": "ls -a /; echo ---; ls -d /root /home /work /opt /srv "
                                         "/run /sys /var/lib /mnt /media 2>&1; echo listed"},
        ])
    finally:
        shutil.rmtree(data, ignore_errors=True)
        shm.unlink()
    _, umounts, cats, found, listing = answer["results"]
    assert (other / marker).read_text().strip() == SECRET  # the victim's file is there...
    for output in answer["results"][1:]:
        assert SECRET not in output, output  # ...but no other command saw it
    assert "UNMOUNTED" not in umounts and "MOUNTED" not in umounts, umounts
    assert "USERNS" not in umounts and "end" in umounts, umounts
    if Path("/usr/bin/python3").exists():  # the raw syscall too: every umount2 failed
        assert umounts.count("umount2") == 5, umounts
    assert "CapEff:\t0000000000000000" in umounts, umounts
    assert umounts.split("CapEff:")[1].split()[1] != "0", umounts  # not root inside either
    assert "rc=1" in cats and "No such file" in cats, cats
    assert found.split("[exit code")[0].split() == ["found"], found
    assert set(listing.split("---")[0].split()) <= {
        ".", "..", "bin", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "sbin", "tmp",
        "usr", "var"}, listing
    assert listing.count("No such file") == 10, listing


def test_proc_shows_only_its_own_processes(driver: Driver) -> None:
    host = subprocess.Popen(["sleep", "3131"])
    try:
        answer = driver([{"key": new_key(), "command":
                          "ls /proc | grep -c '^[0-9]*$'; cat /proc/[0-9]*/cmdline | tr '\\0' ' ';"
                          f" echo; kill -9 -1 {host.pid} 2>&1; echo killed"}])
        [output] = answer["results"]
        assert host.poll() is None, "the sandbox killed a host process"
    finally:
        host.kill()
        host.wait()
    count, cmdlines = output.split("\n")[:2]
    assert 1 <= int(count) <= 6, output  # bwrap's init, bash, ls, grep...
    assert "3131" not in cmdlines and "python" not in cmdlines and "ray" not in cmdlines, output
    assert "killed" in output


def test_fork_bomb_hits_the_process_limit(driver: Driver) -> None:
    key, limits = new_key(), new_key()
    started = time.monotonic()
    answer = driver([
        {"key": key, "command": ":(){ :|:& };:; sleep 60", "timeout": 6},
        {"key": key, "command": "for i in $(seq 1000); do sleep 30 & done; wait", "timeout": 6},
        {"key": limits, "command": "ulimit -u -v -f -t -n -c; "
                                   "dd if=/dev/zero of=/dev/null bs=1500M count=1 2>&1; "
                                   "truncate -s 1G big 2>&1; echo rc=$?; ls -l big"},
    ])
    assert time.monotonic() - started < 60
    bomb, loop, ulimits = answer["results"]
    for output in (bomb, loop):
        assert "timed out after 6 s" in output, output[-2000:]
        assert "Resource temporarily unavailable" in output, output[-2000:]
    values = [line.split()[-1] for line in ulimits.splitlines()[:6]]
    assert values == ["64", "1048576", "262144", "30", "256", "0"], ulimits
    assert "memory exhausted" in ulimits, ulimits  # a 1.5 GB buffer: over the address space
    assert "rc=153" in ulimits and " 0 " in ulimits.split("rc=153")[1], ulimits  # SIGXFSZ
    # every process of the command is gone, and the host still forks
    assert wait_no_processes(driver.host_uid(answer, key)) == []
    assert subprocess.run(["true"], timeout=10).returncode == 0


def test_tmp_and_shm_are_private_capped_and_gone(driver: Driver) -> None:
    key, tag = new_key(), uuid.uuid4().hex
    left = [f"/tmp/left-{tag}", f"/var/tmp/left-{tag}", f"/dev/shm/left-{tag}"]
    answer = driver([
        {"key": key, "command": f"for f in {' '.join(left)}; do echo x > $f; done; "
                                f"ls {' '.join(left)} && echo wrote; "
                                f"dd if=/dev/zero of=/dev/shm/big-{tag} bs=1M count=2048 2>&1; "
                                f"dd if=/dev/zero of=/tmp/big-{tag} bs=1M count=2048 2>&1; "
                                "df -m --output=size,target /dev/shm /tmp"},
        {"key": key, "command": f"ls {' '.join(left)} /dev/shm/big-{tag} /tmp/big-{tag}; "
                                "echo rc=$?"},
    ])
    wrote, later = answer["results"]
    assert "wrote" in wrote and wrote.count("No space left on device") == 2, wrote
    sizes = {line.split()[1]: int(line.split()[0]) for line in wrote.splitlines()
             if line.endswith((" /dev/shm", " /tmp"))}
    assert sizes["/dev/shm"] <= 64 and sizes["/tmp"] <= 128, wrote
    assert "rc=2" in later and later.count("No such file") == 5, later
    for where in ("/tmp", "/var/tmp", "/dev/shm"):
        assert not list(Path(where).glob(f"*{tag}*")), where
    assert not list(driver.tmpdir.rglob(f"*{tag}*"))


def test_no_network_no_server_variables(driver: Driver) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    try:
        answer = driver([{"key": new_key(), "command":
                          f"exec 3<>/dev/tcp/127.0.0.1/{port} && echo CONNECTED; echo rc=$?; "
                          "echo ---; tail -n +3 /proc/net/dev; echo ---; env"}])
        with pytest.raises(TimeoutError):
            listener.accept()
    finally:
        listener.close()
    [output] = answer["results"]
    assert "CONNECTED" not in output and "rc=1" in output, output
    interfaces = [line.split(":")[0].strip() for line in output.split("---")[1].splitlines()]
    assert [name for name in interfaces if name] == ["lo"], output
    assert SECRET not in output
    for name in ("OPENAI", "LLMCAM", "RAY_", "PYTHONPATH", "VIRTUAL_ENV"):
        assert name not in output, output
    assert f"TMPDIR={driver.tmpdir}" not in output and ".venv" not in output, output


def test_scratch_outlives_commands_and_goes_with_the_session(driver: Driver) -> None:
    key, other = new_key(), new_key()
    answer = driver([
        {"key": key, "command": "echo kept > note; mkdir -p locked/deep; touch locked/deep/f; "
                                "chmod 000 locked/deep locked; pwd"},
        {"key": key, "command": "cat note"},
        {"key": other, "command": "id -u"},
    ])
    first, second, other_uid = answer["results"]
    scratch = driver.scratch(key)
    assert first.startswith(f"{scratch}\n") and second.startswith("kept"), (first, second)
    assert answer["uids"][key] != answer["uids"][other] == int(other_uid.split()[0])
    assert driver([{"remove": key}, {"remove": other}])["results"] == [None, None]
    assert not scratch.exists() and not driver.scratch(other).exists()
    claims = driver.tmpdir / "llmcam-shell" / ".uids"
    assert not (claims / str(answer["uids"][key])).exists()  # their uids are free again
    assert not (claims / str(answer["uids"][other])).exists()


def test_live_sessions_never_share_a_uid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shell, "SCRATCH_ROOT", tmp_path / "llmcam-shell")
    keys = [new_key() for _ in range(200)]
    uids = [shell.prepare_scratch(key)[1] for key in keys]
    first, count = shell.SANDBOX_UIDS
    assert len(set(uids)) == len(keys) and all(first <= u < first + count for u in uids)
    assert [shell.sandbox_uid(key) for key in keys] == uids  # stable while the session lives
    # a range of two uids: the second session probes past the first one's
    monkeypatch.setattr(shell, "SANDBOX_UIDS", (first, 2))
    a, b, c = new_key(), new_key(), new_key()
    ua, ub = shell.prepare_scratch(a)[1], shell.prepare_scratch(b)[1]
    assert {ua, ub} == {first, first + 1}
    shell.remove_scratch(a)
    assert shell.prepare_scratch(c)[1] == ua  # freed with its session


@pytest.mark.parametrize("bwrap", ["missing", "broken"])
def test_no_sandbox_runs_nothing(bwrap: str, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    fake = Path(tempfile.mkdtemp(prefix="llmcam-shelltest-bwrap-")) / "bwrap"
    fake.parent.chmod(0o755)  # as root, bwrap is started as the sandbox's uid
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\n"
                    "exit 1\n")
    fake.chmod(0o755)
    found = shell._find_tool
    monkeypatch.setattr(shell, "_find_tool", lambda name: (
        None if bwrap == "missing" else str(fake)) if name == "bwrap" else found(name))
    monkeypatch.setattr(shell, "_sandbox_checked", False)
    monkeypatch.setattr(shell, "_sandbox_error", None)
    monkeypatch.setattr(shell, "_features", shell._features)
    monkeypatch.setattr(shell, "SCRATCH_ROOT", tmp_path / "llmcam-shell")
    witness = tmp_path / "ran"
    answer = asyncio.run(shell.run_sandboxed(f"touch {witness}", new_key()))
    assert answer.startswith("The shell is unavailable"), answer
    assert ("not installed" if bwrap == "missing" else "No permissions") in answer, answer
    assert not witness.exists()
    shutil.rmtree(fake.parent)
