"""The tools that change a session's toolbox: `add_api_tools`, `add_function_tools`,
`remove_tools`. They reach the toolbox only through the context's `Services` (no import of
the session or of the toolbox class), and every fetch goes through the guarded client."""

from __future__ import annotations

import asyncio
from typing import Annotated

from pydantic import Field

from actors.context import ToolContext
from actors.schema import Tool, function_tool
from actors.toolbox import SPEC_FETCH_TIMEOUT_S, resolve_function


async def add_api_tools(
    ctx: ToolContext,
    service_name: Annotated[str, Field(description="Name to group the new tools under")],
    base_url: Annotated[str, Field(description="Base URL of the API service")],
    oas_url: Annotated[str | None, Field(
        description="URL of its OpenAPI spec; default <base_url>/openapi.json")] = None,
) -> str:
    """Add the operations of an HTTP API, described by its OpenAPI 3 spec, as tools."""
    assert ctx.toolbox is not None
    url = oas_url or f"{base_url.rstrip('/')}/openapi.json"
    limit = ctx.settings.max_spec_bytes
    try:
        status, text = await asyncio.wait_for(_fetch_spec(ctx, url, limit), SPEC_FETCH_TIMEOUT_S)
    except TimeoutError:
        return f"Could not read the OpenAPI spec at {url}: no answer within " \
               f"{SPEC_FETCH_TIMEOUT_S:.0f} s"
    if not 200 <= status < 300:
        return f"Could not read the OpenAPI spec at {url}: HTTP {status}"
    from actors.openapi_tools import load_operations

    # parsing and $ref expansion are CPU work on untrusted input: not on the actor's loop
    ops, note = await asyncio.to_thread(load_operations, text, limit)
    if not ops:
        return f"The spec at {url} describes no operations; nothing added.{note}"
    spec = {"kind": "api", "base_url": base_url, "operations": ops}
    tools = await ctx.toolbox.add(service_name, spec, ctx.settings.tool_modules)
    return (f"Added {len(tools)} tools for {service_name}: "
            f"{', '.join(t.name for t in tools)}{note}")


async def _fetch_spec(ctx: ToolContext, url: str, limit: int) -> tuple[int, str]:
    """(status, text) of the document, through the guard, read at most `limit` bytes."""
    from actors.net.client import read_limited, text_of

    response = await ctx.http.send(ctx.http.build_request("GET", url), stream=True)
    if not response.is_success:
        await response.aclose()
        return response.status_code, ""
    body = await read_limited(response, limit)
    return response.status_code, text_of(response, body)


async def add_function_tools(
    ctx: ToolContext,
    service_name: Annotated[str, Field(description="Name to group the new tools under")],
    function_names: Annotated[list[str], Field(
        description="Functions as module.function, from the allowed modules")],
) -> str:
    """Add Python functions from the allowed modules as tools."""
    assert ctx.toolbox is not None
    if not function_names:
        return "No function names given; nothing added."
    try:
        for ref in function_names:
            resolve_function(ref, ctx.settings.tool_modules)
    except (PermissionError, ImportError) as exc:
        return f"Refused: {exc}. Nothing was added."
    tools = await ctx.toolbox.add(service_name, {"kind": "function", "functions": function_names},
                                  ctx.settings.tool_modules)
    return f"Added {len(tools)} tools for {service_name}: {', '.join(t.name for t in tools)}"


async def remove_tools(
    ctx: ToolContext,
    service_name: Annotated[str, Field(description="The service whose tools to remove")],
) -> str:
    """Remove every tool of a service that was added before."""
    assert ctx.toolbox is not None
    removed = await ctx.toolbox.remove(service_name)
    if not removed:
        known = ", ".join(ctx.toolbox.services()) or "none"
        return f"No service named {service_name!r} (added services: {known})."
    return f"Removed {removed} tools of {service_name}."


def toolbox_tools() -> list[Tool]:
    return [function_tool(fn) for fn in (add_api_tools, add_function_tools, remove_tools)]
