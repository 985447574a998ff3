"""A session's toolbox: the built-in tools plus the services it added, and the tools that
change it (`add_api_tools`, `add_function_tools`, `remove_tools`).

A Toolbox belongs to one session actor; services it adds are journaled as specs so a rebuilt
actor gets the same tools back without fetching anything.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from pydantic import Field

from actors.context import ToolContext
from actors.schema import Tool, function_tool

Persist = Callable[[str, dict[str, Any] | None], Awaitable[None]]
# Modules whose functions never become tools, whatever LLMCAM_TOOL_MODULES says: the shell runs
# arbitrary commands and is only added (to new sessions) by LLMCAM_ENABLE_SHELL.
NEVER_TOOL_MODULES = frozenset({"actors.tools.shell"})
SPEC_FETCH_TIMEOUT_S = 30.0  # the whole fetch of an OpenAPI document, however slow it drips


class Toolbox:
    def __init__(self, fixed: list[Tool], persist: Persist) -> None:
        self._fixed = {tool.name: tool for tool in fixed}
        self._services: dict[str, list[Tool]] = {}
        self._persist = persist

    def get(self, name: str) -> Tool | None:
        for tools in reversed(list(self._services.values())):
            for tool in tools:
                if tool.name == name:
                    return tool
        return self._fixed.get(name)

    def tools(self) -> list[Tool]:
        named = dict(self._fixed)
        for tools in self._services.values():
            named.update({tool.name: tool for tool in tools})
        return list(named.values())

    def schemas(self) -> list[dict[str, Any]]:
        return [tool.schema() for tool in self.tools()]

    def services(self) -> list[str]:
        return list(self._services)

    def restore(self, name: str, spec: dict[str, Any], tool_modules: list[str]) -> None:
        """Rebuild a journaled service (no network: the spec holds everything)."""
        self._services[name] = tools_from_spec(name, spec, tool_modules)

    async def add(self, name: str, spec: dict[str, Any], tool_modules: list[str]) -> list[Tool]:
        tools = tools_from_spec(name, spec, tool_modules)
        clash = [t.name for t in tools if t.name in self._fixed]
        if clash:
            raise ValueError(f"these names belong to built-in tools: {', '.join(clash)}")
        await self._persist(name, spec)
        self._services[name] = tools
        return tools

    async def remove(self, name: str) -> int:
        tools = self._services.pop(name, None)
        if tools is None:
            return 0
        await self._persist(name, None)
        return len(tools)


def tools_from_spec(service: str, spec: dict[str, Any], tool_modules: list[str]) -> list[Tool]:
    if spec["kind"] == "api":
        from actors.openapi_tools import api_tools

        return api_tools(service, spec["base_url"], spec["operations"])
    return [function_tool(resolve_function(ref, tool_modules),
                          takes_context=_takes_context(resolve_function(ref, tool_modules)),
                          service=service) for ref in spec["functions"]]


def resolve_function(ref: str, tool_modules: list[str]) -> Callable[..., Any]:
    """`module.function`, only from the allowed modules, only a plain public function."""
    module_name, _, attr = ref.rpartition(".")
    if module_name in NEVER_TOOL_MODULES or module_name.startswith(
            tuple(f"{m}." for m in NEVER_TOOL_MODULES)):
        raise PermissionError(f"{ref!r}: functions of {module_name} are never added as tools")
    if not module_name or module_name not in tool_modules:
        allowed = ", ".join(tool_modules) or "none"
        raise PermissionError(f"{ref!r} is not in an allowed module (allowed: {allowed})")
    if not attr.isidentifier() or attr.startswith("_") or any(
            part.startswith("_") for part in module_name.split(".")):
        raise PermissionError(f"{ref!r}: private and dunder names are not tools")
    module = importlib.import_module(module_name)
    fn = getattr(module, attr, None)
    if not inspect.isfunction(fn) or fn.__module__ != module_name:
        raise PermissionError(f"{ref!r} is not a function defined in {module_name}")
    return fn


def _takes_context(fn: Callable[..., Any]) -> bool:
    params = list(inspect.signature(fn).parameters)
    return bool(params) and params[0] == "ctx"


# The tools that change the toolbox ----------------------------------------------------------

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
    from actors.http import read_limited, text_of

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
