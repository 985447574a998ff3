"""The built-in tools every session starts with.

Each tool module lists its tools in `TOOLS`; a tool is a typed function whose first parameter
is the session's `ToolContext`. Modules here stay light: heavy work (OpenCV, matplotlib, YOLO)
runs in Ray tasks or the detector, never in the session actor's process.
"""

from __future__ import annotations

import importlib

from actors.schema import Tool, function_tool
from actors.settings import BUILTIN_TOOL_MODULES, Settings
from actors.tools.services import toolbox_tools


def builtin_tools(settings: Settings, *, in_stream: bool = False) -> list[Tool]:
    """The session's fixed tools; inside a notification stream, the stream's own set."""
    tools = [] if in_stream else toolbox_tools()
    for name in BUILTIN_TOOL_MODULES:
        tools += [function_tool(fn) for fn in importlib.import_module(name).TOOLS]
    from actors.tools import notify

    tools += [function_tool(fn) for fn in (notify.STREAM_TOOLS if in_stream else notify.TOOLS)]
    if settings.enable_shell:
        from actors.tools import shell

        tools.append(function_tool(shell.execute_bash_command))
    return tools
