"""Tools: a typed Python function becomes an OpenAI tool schema plus a validated call.

pydantic builds both the JSON schema and the argument validation from the signature, so the
schema holds only what the OpenAI API accepts and a wrongly typed call gets a readable error.
"""

from __future__ import annotations

import inspect
import json
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

Runner = Callable[[Any, dict[str, Any]], Awaitable[str]]


@dataclass(frozen=True)
class Tool:
    """One tool a session offers the model. `service` groups tools that were added together."""

    name: str
    description: str
    parameters: dict[str, Any]
    run: Runner = field(repr=False, compare=False)
    service: str | None = None

    def schema(self) -> dict[str, Any]:
        return {"type": "function", "function": {
            "name": self.name, "description": self.description, "parameters": self.parameters}}


def _strip_titles(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_titles(v) for k, v in node.items()
                if not (k == "title" and isinstance(v, str))}
    if isinstance(node, list):
        return [_strip_titles(v) for v in node]
    return node


def arguments_model(fn: Callable[..., Any], skip: int = 0) -> type[BaseModel]:
    """A pydantic model of fn's parameters, after the first `skip` (the injected context)."""
    hints = typing.get_type_hints(fn, include_extras=True)
    fields: dict[str, Any] = {}
    for i, (name, param) in enumerate(inspect.signature(fn).parameters.items()):
        if i < skip or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        default = ... if param.default is param.empty else param.default
        fields[name] = (hints.get(name, Any), default)
    return create_model(f"{fn.__name__}_args", __config__=ConfigDict(extra="forbid"), **fields)


def parameters_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = _strip_titles(model.model_json_schema())
    schema.pop("additionalProperties", None)
    schema.setdefault("properties", {})
    return schema


def describe(fn: Callable[..., Any]) -> str:
    return inspect.cleandoc(fn.__doc__ or fn.__name__.replace("_", " ")).split("\n\n")[0]


def function_tool(fn: Callable[..., Any], *, takes_context: bool = True,
                  service: str | None = None, name: str | None = None) -> Tool:
    """Wrap a function (sync or async, optionally taking the session's context first)."""
    model = arguments_model(fn, skip=1 if takes_context else 0)

    async def run(ctx: Any, arguments: dict[str, Any]) -> str:
        values = model.model_validate(arguments)
        kwargs = {k: getattr(values, k) for k in model.model_fields}
        args = (ctx,) if takes_context else ()
        if inspect.iscoroutinefunction(fn):
            result = await fn(*args, **kwargs)
        else:
            import asyncio

            result = await asyncio.to_thread(fn, *args, **kwargs)
        return result if isinstance(result, str) else json.dumps(result, default=str)

    return Tool(name or fn.__name__, describe(fn), parameters_schema(model), run, service)


def validation_message(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}" for e in error.errors())
