"""`execute_bash_command`: only where the operator enabled it (LLMCAM_ENABLE_SHELL=1).

The model chooses the commands, so they run sandboxed (see `sandbox_argv`):
- a scrubbed environment (no OPENAI_*, LLMCAM_*, RAY_*, nothing of the server's) and a minimal
  PATH without `ray` or our virtualenv;
- their own working directory, `<tmp>/llmcam-shell/<session key>`, not under LLMCAM_DATA, made
  on first use and removed with the session (`remove_scratch`, from the session actor);
- new mount, PID and network namespaces (`unshare`): the data directory, the database's
  directory and Ray's temp directory are covered by empty tmpfs mounts (no store to read), /proc
  shows only the command's own processes (no /proc/<server pid>/environ), there is no network
  (so no Ray cluster to submit code to, no internal services), and when the command ends or
  times out every process it started dies with the namespace;
- as root (the server here and in CI): as an unprivileged uid of its own per session
  (`setpriv`, no new privileges, no capabilities), so the kernel refuses the server's files
  and processes besides; as another user: inside a user namespace of its own.
Where the namespaces cannot be made (a container without the rights), the tool says so and runs
nothing: it never falls back to an unsandboxed shell.

Commands also run with a timeout, a cap on the output kept and no stdin. A plain command (no
shell syntax) runs directly from its argv; anything else through `bash -c` with an explicit
argv, never `shell=True`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import shlex
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Annotated

from pydantic import Field

from actors.context import ToolContext
from actors.names import session_key
from actors.settings import Settings

TIMEOUT_S = 30.0
OUTPUT_CAP = 16_000
_SHELL_SYNTAX = re.compile(r"[|&;<>()$`\\\"'*?\[\]~{}!#\n=%]")


SCRATCH_ROOT = Path(tempfile.gettempdir()) / "llmcam-shell"
SANDBOX_UIDS = (61000, 4000)  # (first, count): each session's commands get a uid of these
_PATH_DIRS = ("/usr/local/bin", "/usr/bin", "/bin")
_WRAPPER = (  # pid 1 of the namespaces: hide the paths, then run the command and wait for it
    'while [ "$1" != -- ]; do mount -t tmpfs -o mode=000,size=4k llmcam-hidden "$1" '
    '|| exit 125; shift; done; shift; "$@"')


def scratch_path(key: str) -> Path:
    """The working directory of the session whose key (actors.names.session_key) is `key`."""
    if not re.fullmatch(r"[0-9a-f]{32}", key):
        raise ValueError("not a session key")
    # Named by another digest of the key: `pwd` goes to the model, the key must not.
    return SCRATCH_ROOT / hashlib.sha256(f"llmcam-shell:{key}".encode()).hexdigest()[:24]


def sandbox_uid(key: str) -> int:
    """A uid of this session's own: other sessions' scratch directories are closed to it."""
    first, count = SANDBOX_UIDS
    return first + int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % count


def scratch_dir(ctx: ToolContext) -> Path:
    """This session's working directory for shell commands (made on first use, mode 0700,
    owned by the session's sandbox uid when we run as root)."""
    key = session_key(ctx.session_id)
    SCRATCH_ROOT.mkdir(mode=0o711, exist_ok=True)
    path = scratch_path(key)
    path.mkdir(mode=0o700, exist_ok=True)
    if os.geteuid() == 0:
        os.chown(path, sandbox_uid(key), sandbox_uid(key))
    return path


def remove_scratch(key: str) -> None:
    """Remove the scratch directory of session `key` (the session was deleted, or its actor
    exits); nothing to do when it never ran a command."""
    with contextlib.suppress(ValueError):
        shutil.rmtree(scratch_path(key), ignore_errors=True)


def cleanup(ctx: ToolContext) -> None:
    """`remove_scratch` for the session of `ctx`."""
    remove_scratch(session_key(ctx.session_id))


def minimal_path() -> str:
    """PATH for commands: system directories only, none holding `ray` or our interpreter's."""
    ours = {str(Path(sys.prefix) / "bin"), str(Path(sys.executable).parent)}
    return ":".join(d for d in _PATH_DIRS
                    if d not in ours and not os.path.exists(os.path.join(d, "ray")))


def hidden_paths(settings: Settings) -> list[str]:
    """Directories the commands must not see: our data, the SQLite store's, Ray's temp dir."""
    paths = [settings.data]
    if "://" not in settings.db_url:
        paths.append(Path(settings.db_url).expanduser().resolve().parent)
    paths.append(Path(tempfile.gettempdir()) / "ray")
    seen: list[str] = []
    for path in paths:
        if path.is_dir() and str(path) not in seen and path.resolve() != Path("/"):
            seen.append(str(path.resolve()))
    return seen


def sandbox_argv(argv: list[str], key: str, hide: list[str]) -> list[str]:
    """`argv` wrapped in fresh mount, PID and network namespaces, with `hide` covered, and
    (as root) as the session's own unprivileged uid."""
    unshare = shutil.which("unshare") or "/usr/bin/unshare"
    outer = [unshare, "--mount", "--pid", "--fork", "--mount-proc", "--net", "--kill-child"]
    if os.geteuid() == 0:
        uid = str(sandbox_uid(key))
        inner = [shutil.which("setpriv") or "/usr/bin/setpriv", f"--reuid={uid}",
                 f"--regid={uid}", "--clear-groups", "--no-new-privs", "--inh-caps=-all",
                 "--bounding-set=-all", "--"]
    else:
        outer[1:1] = ["--user", "--map-root-user"]
        inner = []
    return [*outer, "--", "/bin/sh", "-c", _WRAPPER, "sh", *hide, "--", *inner, *argv]


_sandbox_error: str | None = None
_sandbox_checked = False


async def sandbox_problem(cwd: Path) -> str | None:
    """Why the sandbox cannot be made on this machine (checked once per process), or None."""
    global _sandbox_checked, _sandbox_error
    if not _sandbox_checked:
        code, output = await run_command(sandbox_argv(["true"], "0" * 32, []), cwd, timeout=10)
        if code != 0:
            _sandbox_error = output.strip()[:300] or f"exit code {code}"
        _sandbox_checked = True
    return _sandbox_error


def argv_for(command: str) -> list[str]:
    """The argv to run: the words themselves when the command uses no shell syntax."""
    if not _SHELL_SYNTAX.search(command):
        words = shlex.split(command)
        if words:
            return words
    return ["bash", "-c", command]


async def run_command(argv: list[str], cwd: Path, timeout: float = TIMEOUT_S,
                      cap: int = OUTPUT_CAP) -> tuple[int | None, str]:
    """(exit code, or None on timeout; stdout and stderr interleaved, at most `cap` chars)."""
    # built from nothing: the server's environment (API keys, LLMCAM_*, RAY_*) never leaks in
    env = {"PATH": minimal_path(), "HOME": str(cwd), "LANG": "C.UTF-8", "TERM": "dumb",
           "PWD": str(cwd)}
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True)
    except FileNotFoundError:
        return 127, f"{argv[0]}: command not found"
    except PermissionError:
        return 126, f"{argv[0]}: permission denied"
    assert process.stdout is not None
    kept = bytearray()
    dropped = 0

    async def drain() -> None:
        nonlocal dropped
        while chunk := await process.stdout.read(65536):  # type: ignore[union-attr]
            room = cap - len(kept)
            kept.extend(chunk[:max(0, room)])
            dropped += max(0, len(chunk) - max(0, room))
        await process.wait()

    code: int | None
    try:
        await asyncio.wait_for(drain(), timeout)
        code = process.returncode
    except TimeoutError:
        code = None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
    text = kept.decode("utf-8", errors="replace")
    if dropped:
        text += f"\n[output truncated: {dropped} more bytes]"
    return code, text


async def execute_bash_command(
    ctx: ToolContext,
    command: Annotated[str, Field(description="The bash command line to run", max_length=10_000)],
) -> str:
    """Execute a bash command in this session's scratch directory; returns its output and exit
    code."""
    if not ctx.settings.enable_shell:
        return "The shell is disabled on this server (LLMCAM_ENABLE_SHELL is off)."
    cwd = scratch_dir(ctx)
    problem = await sandbox_problem(cwd)
    if problem is not None:
        return ("The shell is unavailable: its sandbox (unshare: mount, PID and network "
                f"namespaces) cannot be made on this machine: {problem}")
    words = argv_for(command)
    if "/" not in words[0] and shutil.which(words[0], path=minimal_path()) is None:
        return f"{words[0]}: command not found\n[exit code 127]"
    argv = sandbox_argv(words, session_key(ctx.session_id), hidden_paths(ctx.settings))
    code, output = await run_command(argv, cwd)
    if code is None:
        return f"{output}\n[timed out after {TIMEOUT_S:.0f} s; the command was killed]"
    return f"{output}\n[exit code {code}]" if output else f"[exit code {code}]"
