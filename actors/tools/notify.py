"""Notification-stream tools: start and stop in the chat; send and stop inside a stream."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from actors.context import Streams, ToolContext


async def start_notification_stream(
    ctx: ToolContext,
    task: Annotated[str, Field(description="What to watch for and when to notify the user")],
    interval_seconds: Annotated[float | None, Field(
        description="Seconds between two checks (at least 1); default from the server")] = None,
) -> str:
    """Start a background notification stream that watches a camera or task and alerts the user."""
    return await _streams(ctx).start(task, interval_seconds, ctx.account)


async def stop_notification(
    ctx: ToolContext,
    noti_id: Annotated[str, Field(description="ID of the notification stream to stop")],
) -> str:
    """Stop a notification stream by its ID."""
    return await _streams(ctx).stop(noti_id)


async def send_notification(
    ctx: ToolContext,
    msg: Annotated[str, Field(description="Notification message to send to the user")],
) -> str:
    """Send a notification with a message to the user."""
    return await _streams(ctx).send(msg)


def _streams(ctx: ToolContext) -> Streams:
    assert ctx.streams is not None  # every session's context has its streams
    return ctx.streams


TOOLS = [start_notification_stream, stop_notification]
STREAM_TOOLS = [send_notification, stop_notification]
