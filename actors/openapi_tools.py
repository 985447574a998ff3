"""An OpenAPI 3 service becomes tools: one per operation, called with httpx through the guard.

The document comes from the model, so it is untrusted: its size is bounded, its `$ref`s are
expanded by actors/openapi_refs.py (local refs only, bounded), and `load_operations` is meant
to run in a worker thread (`asyncio.to_thread`), never on a session actor's event loop. Its
summaries and descriptions become the tools' (and parameters') descriptions the model reads:
each is one line of plain text, at most `MAX_DESCRIPTION` characters (`describe`).
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any
from urllib.parse import quote

from actors.context import ToolContext
from actors.openapi_refs import expand
from actors.schema import Tool

METHODS = ("get", "post", "put", "patch", "delete")
MAX_RESULT = 16_000
MAX_DESCRIPTION = 300  # characters of a tool's or a parameter's description
# Control characters (C0, DEL, C1), and the invisible ones text can hide behind: zero-width
# and bidirectional marks, line and paragraph separators, the byte-order mark.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff]")
# OpenAPI-only keywords that are not JSON Schema: the OpenAI API would reject or ignore them.
_DROP = {"example", "examples", "xml", "externalDocs", "discriminator", "readOnly", "writeOnly",
         "deprecated", "nullable", "x-nullable", "$schema", "$id", "title"}


def _clean(node: Any, depth: int = 0) -> Any:
    if depth > 12:  # recursive schemas: cut them off rather than loop
        return {}
    if isinstance(node, dict):  # a schema's descriptions are the document's text, too
        return {k: describe(v) if k == "description" and isinstance(v, str)
                else _clean(v, depth + 1)
                for k, v in node.items() if k not in _DROP and not k.startswith("x-")}
    if isinstance(node, list):
        return [_clean(v, depth + 1) for v in node]
    return node


def describe(text: Any) -> str:
    """A summary or description from the document as the model may read it: control and
    invisible characters as spaces, runs of whitespace as one space, at most
    `MAX_DESCRIPTION` characters (cut at a word where one ends near the limit, marked `…`)."""
    if not isinstance(text, str):
        return ""
    clean = " ".join(_CONTROL.sub(" ", text).split())
    if len(clean) <= MAX_DESCRIPTION:
        return clean
    cut = clean[:MAX_DESCRIPTION - 1]
    space = cut.rfind(" ")
    if space > MAX_DESCRIPTION * 3 // 4:
        cut = cut[:space]
    return cut.rstrip() + "…"


def _tool_name(operation: dict[str, Any], method: str, path: str) -> str:
    raw = operation.get("operationId") or f"{method}_{path}"
    return re.sub(r"[^A-Za-z0-9_-]+", "_", raw).strip("_")[:64] or method


def parse_spec(text: str, max_bytes: int) -> dict[str, Any]:
    if len(text) > max_bytes:
        raise ValueError(f"the OpenAPI document is larger than {max_bytes} bytes")
    try:
        try:
            spec = json.loads(text)
        except json.JSONDecodeError:
            import yaml

            spec = yaml.safe_load(text)
    except RecursionError:
        raise ValueError("the OpenAPI document nests too deeply") from None
    except Exception as exc:  # yaml's errors: say what, not a traceback
        raise ValueError(f"the OpenAPI document is neither JSON nor YAML: {exc}") from None
    if not isinstance(spec, dict) or "paths" not in spec:
        raise ValueError("this is not an OpenAPI document (no 'paths')")
    return spec


def load_operations(text: str, max_bytes: int) -> tuple[list[dict[str, Any]], str]:
    """(operations, a note on refs that were not followed): parse, expand, describe. Blocking
    and CPU-bound: run it in a worker thread."""
    spec = parse_spec(text, max_bytes)
    expansion = expand(spec, spec.get("paths") or {}, max_bytes=max_bytes)
    note = ""
    if expansion.external:
        note = (f" {expansion.external} $ref(s) to other documents were not followed (only "
                "the document's own #/... refs are); their schemas are left open.")
    if expansion.broken:
        note += f" {expansion.broken} $ref(s) point nowhere in the document."
    return operations(expansion.value), note


def operations(paths: dict[str, Any]) -> list[dict[str, Any]]:
    """Each operation of the (already ref-free) `paths` as a plain description (what the
    store keeps)."""
    ops: list[dict[str, Any]] = []
    seen: set[str] = set()
    if not isinstance(paths, dict):
        raise ValueError("the OpenAPI document's 'paths' is not an object")
    for path, item in paths.items():
        if not isinstance(item, dict):
            continue
        shared = item.get("parameters", [])
        for method in METHODS:
            op = item.get(method)
            if not isinstance(op, dict):
                continue
            properties: dict[str, Any] = {}
            required: list[str] = []
            where: dict[str, str] = {}
            for param in [*shared, *op.get("parameters", [])]:
                if not isinstance(param, dict) or not isinstance(param.get("name"), str):
                    continue
                if param.get("in") not in ("path", "query"):
                    continue
                name = param["name"]
                schema = _clean(copy.deepcopy(param.get("schema", {"type": "string"})))
                if not isinstance(schema, dict):
                    schema = {}
                if describe(param.get("description")):
                    schema["description"] = describe(param["description"])
                properties[name] = schema
                where[name] = param["in"]
                if param.get("required") or param["in"] == "path":
                    required.append(name)
            body = (op.get("requestBody") or {}).get("content", {}).get("application/json")
            if body is not None:
                properties["body"] = _clean(copy.deepcopy(body.get("schema", {"type": "object"})))
                if op["requestBody"].get("required"):
                    required.append("body")
            name = _tool_name(op, method, path)
            while name in seen:
                name = f"{name}_"[:64]
            seen.add(name)
            ops.append({
                "name": name, "method": method.upper(), "path": path, "where": where,
                "description": (describe(op.get("summary")) or describe(op.get("description"))
                                or describe(f"{method.upper()} {path}")),
                "parameters": {"type": "object", "properties": properties,
                               "required": sorted(set(required))},
            })
    json.dumps(ops)  # fails loudly here, not in the store, if anything is still circular
    return ops


def api_tools(service: str, base_url: str, ops: list[dict[str, Any]]) -> list[Tool]:
    return [_operation_tool(service, base_url, op) for op in ops]


def _operation_tool(service: str, base_url: str, op: dict[str, Any]) -> Tool:
    async def run(ctx: ToolContext, arguments: dict[str, Any]) -> str:
        missing = [n for n in op["parameters"]["required"] if n not in arguments]
        if missing:
            raise ValueError(f"missing required arguments: {', '.join(missing)}")
        path = op["path"]
        query: dict[str, Any] = {}
        for name, value in arguments.items():
            place = op["where"].get(name)
            if place == "path":
                path = path.replace("{" + name + "}", quote(str(value), safe=""))
            elif place == "query":
                query[name] = value
            elif name != "body":
                raise ValueError(f"unknown argument {name!r}")
        from actors.net.client import read_limited, text_of

        request = ctx.http.build_request(op["method"], base_url.rstrip("/") + path,
                                         params=query, json=arguments.get("body"))
        response = await ctx.http.send(request, stream=True)
        body = await read_limited(response, ctx.settings.max_fetch_bytes)
        text = text_of(response, body)[:MAX_RESULT]
        return text if response.is_success else f"HTTP {response.status_code}: {text}"

    # describe() again: operations stored before descriptions were capped come back clean too
    return Tool(op["name"], describe(op["description"]), op["parameters"], run, service)
