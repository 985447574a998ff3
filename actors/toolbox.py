"""A session's toolbox: the built-in tools plus the services it added, and the tools that
change it (`add_api_tools`, `add_function_tools`, `remove_tools`).

A Toolbox belongs to one session actor; services it adds are journaled as specs so a rebuilt
actor gets the same tools back without fetching anything.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from actors.schema import Tool, function_tool

Persist = Callable[[str, dict[str, Any] | None], Awaitable[None]]
# Modules whose functions never become tools, whatever LLMCAM_TOOL_MODULES says: the shell runs
# arbitrary commands and is only added (to new sessions) by LLMCAM_ENABLE_SHELL.
NEVER_TOOL_MODULES = frozenset({"actors.tools.shell", "actors.tools.services"})
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
