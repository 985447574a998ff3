"""Listing a session's own files, by name and with links relative to the session
(`files/<name>`, which the page resolves): the session ID never reaches the model."""

from __future__ import annotations

from actors.context import ToolContext


async def _listing(ctx: ToolContext, kind: str) -> str:
    files = await ctx.files.list(kind)
    if not files:
        return f"No {kind} files in this session yet."
    return "\n".join(f"{f.name} ({ctx.file_url(f.name)})" for f in files)


async def list_image_files(ctx: ToolContext) -> str:
    """List all captured image files of this session (names start with cap_)."""
    return await _listing(ctx, "capture")


async def list_detection_files(ctx: ToolContext) -> str:
    """List all detection images of this session (names start with detection_)."""
    return await _listing(ctx, "detection")


TOOLS = [list_image_files, list_detection_files]
