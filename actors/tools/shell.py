"""`execute_bash_command`: only where the operator enabled it (LLMCAM_ENABLE_SHELL=1).

The model chooses the commands, so each one runs in a bubblewrap (`bwrap`) sandbox built the same
way whether the server runs as root or not (see `sandbox_argv`):
- a view of the system made of what it needs and nothing else: /usr (and the /bin, /lib...
  links or directories), a few files of /etc, a synthetic /etc/passwd and /etc/group, all
  read-only; its own scratch directory read-write as working directory and HOME; private,
  size-limited tmpfs on /tmp, /var/tmp and /dev/shm that vanish with the command; a fresh /dev
  and a /proc of its own PID namespace. The data directory, the store, other sessions' scratch,
  Ray's files, /root, /home, the project and its virtualenv are simply not there;
- new user, PID, network, IPC, UTS (and cgroup) namespaces: a non-zero uid with no capabilities
  (no mount/umount, no new user namespaces either), only its own processes, no network (no Ray
  cluster, no internal services); `--die-with-parent` and `--new-session`;
- a uid of the session's own (`sandbox_uid`, reserved so that two live sessions never share one).
  As root the server starts bwrap as that uid, so even the kernel's idea of the owner (the uid
  outside the namespace) is neither root nor another session; as another user, each command's
  user namespace is its own;
- resource limits (`prlimit`, inside the sandbox): CPU time, address space, processes (counted
  per user namespace, so per command), file size, open files, no core dumps; and a wall-clock
  timeout that kills bwrap, whose PID namespace takes every process the command started with it;
- a scrubbed environment (`--clearenv`: no OPENAI_*, LLMCAM_*, RAY_*, nothing of the server's)
  and a minimal PATH without `ray` or our virtualenv.
Its scratch directory, `<tmp>/llmcam-shell/<digest>`, outlives a command (files the model made
stay for its next command) and is removed with the session (`remove_scratch`, from the session
actor on delete and passivation).

Where bwrap is missing or cannot make its namespaces (a container without the rights), the tool
says the sandbox is unavailable and runs nothing: it never falls back to an unsandboxed shell.
Commands also run with a cap on the output kept and no stdin. A plain command (no shell syntax)
runs directly from its argv; anything else through `bash -c` with an explicit argv, never
`shell=True`.

Over 300 lines on purpose: the sandbox's argv is built in one module, to be reviewed as
a whole.
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
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from actors.context import ToolContext
from actors.settings import Settings

TIMEOUT_S = 30.0
OUTPUT_CAP = 16_000
_SHELL_SYNTAX = re.compile(r"[|&;<>()$`\\\"'*?\[\]~{}!#\n=%]")

SCRATCH_ROOT = Path(tempfile.gettempdir()) / "llmcam-shell"
SANDBOX_UIDS = (100_000, 900_000)  # (first, count): each live session gets a uid of these
PROBE_UID = SANDBOX_UIDS[0] - 1  # the availability check's
MiB = 1 << 20
# prlimit options for every command (limits apply to each process; the process count to all the
# processes of the command's user namespace)
LIMITS = {"cpu": f"{int(TIMEOUT_S)}:{int(TIMEOUT_S) + 5}", "as": 1024 * MiB, "nproc": 64,
          "fsize": 256 * MiB, "nofile": 256, "core": 0}
TMPFS = {"/tmp": 128 * MiB, "/var/tmp": 32 * MiB, "/dev/shm": 64 * MiB}  # private, per command
_PATH_DIRS = ("/usr/local/bin", "/usr/bin", "/bin")
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC = ("alternatives", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "timezone",
        "nsswitch.conf", "host.conf", "hosts", "os-release", "debian_version", "magic",
        "magic.mime", "mime.types", "protocols", "services", "ssl/certs", "bash.bashrc",
        "inputrc", "terminfo", "gai.conf", "locale.alias")
_TOOL_DIRS = ("/usr/bin", "/bin", "/usr/local/bin", "/usr/sbin")  # where we look for bwrap


def scratch_path(key: str) -> Path:
    """The working directory of the session whose key (names.session_key) is `key`."""
    if not re.fullmatch(r"[0-9a-f]{32}", key):
        raise ValueError("not a session key")
    # Named by another digest of the key: `pwd` goes to the model, the key must not.
    return SCRATCH_ROOT / hashlib.sha256(f"llmcam-shell:{key}".encode()).hexdigest()[:24]


def _claims() -> Path:
    """Where the uids of live sessions are reserved: one file per uid, holding the scratch
    directory's name (outside every sandbox's view)."""
    path = SCRATCH_ROOT / ".uids"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def _probe_uids(key: str) -> list[int]:
    first, count = SANDBOX_UIDS
    start = int(hashlib.sha256(f"llmcam-uid:{key}".encode()).hexdigest()[:12], 16) % count
    return [first + (start + step) % count for step in range(min(count, 4096))]


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def sandbox_uid(key: str) -> int:
    """The uid of session `key`'s commands: its own among the live sessions of this node (the
    first free uid from a hash of the key; reserved until `remove_scratch`)."""
    SCRATCH_ROOT.mkdir(mode=0o711, exist_ok=True)
    name = scratch_path(key).name
    claims = _claims()
    for uid in _probe_uids(key):
        claim = claims / str(uid)
        try:
            fd = os.open(claim, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            owner = _read(claim)
            if owner == name:
                return uid
            if owner and not (SCRATCH_ROOT / owner).exists():  # its session is gone
                with contextlib.suppress(OSError):
                    claim.unlink()
                    fd = os.open(claim, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    os.write(fd, name.encode())
                    os.close(fd)
                    return uid
            continue
        os.write(fd, name.encode())
        os.close(fd)
        return uid
    raise RuntimeError("no free sandbox uid")


def _release_uid(key: str) -> None:
    name = scratch_path(key).name
    claims = SCRATCH_ROOT / ".uids"
    for uid in _probe_uids(key):
        owner = _read(claims / str(uid))
        if owner is None:
            return
        if owner == name:
            with contextlib.suppress(OSError):
                (claims / str(uid)).unlink()
            return


def prepare_scratch(key: str) -> tuple[Path, int]:
    """Session `key`'s working directory (made on first use, mode 0700; owned by its sandbox uid
    when we run as root) and that uid."""
    SCRATCH_ROOT.mkdir(mode=0o711, exist_ok=True)
    path = scratch_path(key)
    path.mkdir(mode=0o700, exist_ok=True)
    uid = sandbox_uid(key)
    if os.geteuid() == 0:
        os.chown(path, uid, uid)
    return path, uid


def scratch_dir(ctx: ToolContext) -> Path:
    """This session's working directory for shell commands."""
    return prepare_scratch(ctx.key)[0]


def _open_up(path: str) -> None:
    """chmod 0700 the directory `path`, never what a symlink put in its place points to."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY)
        try:
            os.chmod(f"/proc/self/fd/{fd}", 0o700)
        finally:
            os.close(fd)


def _force_rmtree(path: Path) -> None:
    """rmtree (which never follows symlinks); not as root, first open to their owner (us) the
    directories a command closed with chmod 000."""
    if not path.is_dir() or path.is_symlink():
        return
    if os.geteuid() != 0:
        _open_up(str(path))
        for parent, dirs, _files in os.walk(path):
            for name in dirs:
                _open_up(os.path.join(parent, name))
    shutil.rmtree(path, ignore_errors=True)


def remove_scratch(key: str) -> None:
    """Remove the scratch directory of session `key` and free its uid (the session was deleted,
    or its actor exits); nothing to do when it never ran a command."""
    with contextlib.suppress(ValueError):
        _force_rmtree(scratch_path(key))
        _release_uid(key)


def cleanup(ctx: ToolContext) -> None:
    """`remove_scratch` for the session of `ctx`."""
    remove_scratch(ctx.key)


def minimal_path() -> str:
    """PATH for commands: system directories only, none holding `ray` or our interpreter's."""
    ours = {str(Path(sys.prefix) / "bin"), str(Path(sys.executable).parent)}
    return ":".join(d for d in _PATH_DIRS
                    if d not in ours and not os.path.exists(os.path.join(d, "ray")))


def protected_paths(settings: Settings) -> list[str]:
    """Our data, the SQLite store's directory, Ray's temp dir: never in the view. They are not
    under what the sandbox binds on any sane setup; if one is, it is covered as well."""
    paths = [settings.data]
    if "://" not in settings.db_url:
        paths.append(Path(settings.db_url).expanduser().resolve().parent)
    paths.append(Path(tempfile.gettempdir()) / "ray")
    return sorted({str(p.resolve()) for p in paths if p.is_dir()})


def _bound_sources() -> list[tuple[str, str]]:
    """(host path, sandbox path) of the read-only system view, plus the links for merged /usr."""
    binds: list[tuple[str, str]] = []
    for d in _SYSTEM_DIRS:
        if os.path.islink(d):
            binds.append(("symlink", d))
        elif os.path.isdir(d):
            binds.append((d, d))
    for name in _ETC:
        path = f"/etc/{name}"
        if os.path.exists(path):
            binds.append((path, path))
    return binds


def _closed_to_others(path: Path) -> Path | None:
    """The first directory above `path` that other users may not enter (as root, bwrap runs as
    the sandbox's uid and must reach the scratch directory), or None."""
    for parent in reversed(path.parents):
        with contextlib.suppress(OSError):
            if not parent.stat().st_mode & 0o001:
                return parent
    return None


def _find_tool(name: str) -> str | None:
    return shutil.which(name, path=os.pathsep.join(_TOOL_DIRS))


_PASSWD = ("root:x:0:0:root:/nonexistent:/usr/sbin/nologin\n"
           "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
           "sandbox:x:{uid}:{uid}:llmcam shell:{home}:/bin/bash\n")
_GROUP = "root:x:0:\nnogroup:x:65534:\nsandbox:x:{uid}:\n"


def sandbox_argv(argv: list[str], uid: int, scratch: Path | None, *, passwd_fd: int,
                 group_fd: int, protect: Sequence[str] = (), bwrap: str = "bwrap",
                 prlimit: str = "/usr/bin/prlimit", features: frozenset[str] = frozenset(
                     {"--size", "--perms", "--disable-userns"})) -> list[str]:
    """`argv` inside bwrap: see the module's docstring. `scratch` (None: a tmpfs) is the
    working directory; `passwd_fd`/`group_fd` are read for /etc/passwd and /etc/group."""
    out = [bwrap, "--unshare-user", "--uid", str(uid), "--gid", str(uid), "--unshare-pid",
           "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
           "--hostname", "sandbox", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    if "--disable-userns" in features:
        out.append("--disable-userns")
    for src, dest in _bound_sources():
        if src == "symlink":
            out += ["--symlink", os.readlink(dest), dest]
        else:
            out += ["--ro-bind", src, dest]
    perms = ["--perms", "0444"] if "--perms" in features else []
    out += [*perms, "--ro-bind-data", str(passwd_fd), "/etc/passwd",
            *perms, "--ro-bind-data", str(group_fd), "/etc/group",
            "--dev", "/dev", "--proc", "/proc"]
    for dest, size in TMPFS.items():
        if "--perms" in features:
            out += ["--perms", "1777"]
        if "--size" in features:
            out += ["--size", str(size)]
        out += ["--tmpfs", dest]
    binds = [dest for src, dest in _bound_sources() if src != "symlink"]
    for path in protect:  # belt and braces: only if an operator put them under /usr or so
        if any(path == b or path.startswith(b.rstrip("/") + "/") for b in binds):
            out += ["--perms", "0000", "--tmpfs", path] if "--perms" in features else [
                "--tmpfs", path]
    home = str(scratch) if scratch is not None else "/tmp"
    if scratch is not None:
        out += ["--bind", home, home]
    out += ["--chdir", home, "--clearenv"]
    env = {"PATH": minimal_path(), "HOME": home, "PWD": home, "LANG": "C.UTF-8", "TERM": "dumb",
            "TMPDIR": "/tmp", "USER": "sandbox", "LOGNAME": "sandbox"}
    for name, value in env.items():
        out += ["--setenv", name, value]
    limits = [f"--{name}={value}" for name, value in LIMITS.items()]
    return [*out, "--", prlimit, *limits, "--", *argv]


_sandbox_error: str | None = None
_sandbox_checked = False
_features: frozenset[str] = frozenset()


def _unavailable(why: str) -> str:
    return ("The shell is unavailable: its sandbox (bubblewrap) cannot run on this machine, so "
            f"nothing was run: {why}")


async def _spawn_sandboxed(argv: list[str], uid: int, scratch: Path | None, home: str,
                           protect: Sequence[str], timeout: float) -> tuple[int | None, str]:
    """Run `argv` in the sandbox as `uid` (bwrap itself too, when we are root)."""
    bwrap, prlimit, setpriv = _find_tool("bwrap"), _find_tool("prlimit"), _find_tool("setpriv")
    if bwrap is None or prlimit is None or (os.geteuid() == 0 and setpriv is None):
        return 127, "bwrap, prlimit or setpriv is not installed"
    fds = []
    try:
        for text in (_PASSWD.format(uid=uid, home=home), _GROUP.format(uid=uid)):
            read, write = os.pipe()
            fds.append(read)
            os.write(write, text.encode())
            os.close(write)
        full = sandbox_argv(argv, uid, scratch, passwd_fd=fds[0], group_fd=fds[1],
                            protect=protect, bwrap=bwrap, prlimit=prlimit, features=_features)
        if os.geteuid() == 0:  # never root outside the namespace either (setpriv, not Popen's
            # user=: Ray's event loop, uvloop, has no such argument)
            full = [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", *full]
        return await run_command(full, Path("/"), timeout=timeout,
                                 env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                                 pass_fds=fds)
    finally:
        for fd in fds:
            os.close(fd)


async def sandbox_problem() -> str | None:
    """Why the sandbox cannot run on this machine (checked once per process by running `true`
    in it: missing bwrap, no user namespaces for unprivileged users...), or None."""
    global _sandbox_checked, _sandbox_error, _features
    if not _sandbox_checked:
        bwrap = _find_tool("bwrap")
        if bwrap is None:
            _sandbox_error = "bwrap is not installed (Debian package bubblewrap)"
        elif _find_tool("prlimit") is None or _find_tool("setpriv") is None:
            _sandbox_error = "prlimit or setpriv is not installed (Debian package util-linux)"
        else:
            _, usage = await run_command([bwrap, "--help"], Path("/"), timeout=10)
            _features = frozenset(re.findall(r"--[a-z-]+", usage))
            code, output = await _spawn_sandboxed(["true"], PROBE_UID, None, "/tmp", [], 10)
            if code is None:  # a loaded machine, not an answer: ask again next time
                return "the check (bwrap running `true`) timed out"
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
                      cap: int = OUTPUT_CAP, env: dict[str, str] | None = None,
                      **popen: Any) -> tuple[int | None, str]:
    """(exit code, or None on timeout; stdout and stderr interleaved, at most `cap` chars).
    On timeout the whole process group is killed."""
    if env is None:  # built from nothing: the server's environment never leaks in
        env = {"PATH": minimal_path(), "HOME": str(cwd), "LANG": "C.UTF-8", "TERM": "dumb",
               "PWD": str(cwd)}
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True, **popen)
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
        # bwrap leads the group; its sandbox (--die-with-parent, PID namespace) dies with it
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
    text = kept.decode("utf-8", errors="replace")
    if dropped:
        text += f"\n[output truncated: {dropped} more bytes]"
    return code, text


async def run_sandboxed(command: str, key: str, *, protect: Sequence[str] = (),
                        timeout: float = TIMEOUT_S) -> str:
    """Run `command` for session `key` in its sandbox; the tool's answer (output, exit code)."""
    problem = await sandbox_problem()
    if problem is not None:
        return _unavailable(problem)
    words = argv_for(command)
    if "/" not in words[0] and shutil.which(words[0], path=minimal_path()) is None:
        return f"{words[0]}: command not found\n[exit code 127]"
    with contextlib.suppress(FileNotFoundError):
        if (owner := SCRATCH_ROOT.lstat()).st_uid != os.geteuid() or SCRATCH_ROOT.is_symlink():
            return _unavailable(f"{SCRATCH_ROOT} belongs to uid {owner.st_uid}, not to us")
    if os.geteuid() == 0 and (closed := _closed_to_others(SCRATCH_ROOT)) is not None:
        return _unavailable(f"{closed} is closed to other users, so the sandbox's uid cannot "
                            f"reach its scratch directory under {SCRATCH_ROOT} (set TMPDIR)")
    scratch, uid = prepare_scratch(key)
    code, output = await _spawn_sandboxed(words, uid, scratch, str(scratch), list(protect),
                                          timeout)
    if code is None:
        return f"{output}\n[timed out after {timeout:.0f} s; the command was killed]"
    return f"{output}\n[exit code {code}]" if output else f"[exit code {code}]"


async def execute_bash_command(
    ctx: ToolContext,
    command: Annotated[str, Field(description="The bash command line to run", max_length=10_000)],
) -> str:
    """Execute a bash command in this session's scratch directory; returns its output and exit
    code."""
    if not ctx.settings.enable_shell:
        return "The shell is disabled on this server (LLMCAM_ENABLE_SHELL is off)."
    return await run_sandboxed(command, ctx.key,
                               protect=protected_paths(ctx.settings))
