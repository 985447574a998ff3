"""`execute_bash_command`: only where the operator enabled it (LLMCAM_ENABLE_SHELL=1).

Each session gets its own scratch directory (`<data>/shell/<session key>`) as working directory.
Commands run with a timeout, a cap on the output kept, no stdin, a small environment (no API
keys), in their own process group so a timeout kills everything they started. A plain command
(no shell syntax) runs directly from its argv; anything else through `bash -c` with an explicit
argv, never `shell=True`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import signal
from pathlib import Path
from typing import Annotated

from pydantic import Field

from actors.context import ToolContext
from actors.names import session_key

TIMEOUT_S = 30.0
OUTPUT_CAP = 16_000
_SHELL_SYNTAX = re.compile(r"[|&;<>()$`\\\"'*?\[\]~{}!#\n=%]")


def scratch_dir(ctx: ToolContext) -> Path:
    """This session's working directory for shell commands (made on first use)."""
    path = ctx.settings.data / "shell" / session_key(ctx.session_id)
    path.mkdir(parents=True, exist_ok=True)
    return path


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
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd), "LANG": "C.UTF-8",
           "TERM": "dumb", "PWD": str(cwd)}
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
    code, output = await run_command(argv_for(command), scratch_dir(ctx))
    if code is None:
        return f"{output}\n[timed out after {TIMEOUT_S:.0f} s; the command was killed]"
    return f"{output}\n[exit code {code}]" if output else f"[exit code {code}]"
