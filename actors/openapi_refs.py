"""`$ref` expansion for OpenAPI documents that come from the model: local refs only, bounded.

A document a model asks us to load is untrusted. A general JSON-reference resolver (jsonref's
default loader) fetches any URL a ref names, with no guard and no timeout, and opens `file:`
URLs: what it loads would end up in a tool schema, the store, the LLM request and `GET /tools`.
So only the document's own refs (`#` and `#/...`) are followed, and never with a fetch; every
other ref (`http:`, `file:`, a relative file name, any scheme) is refused: it becomes an empty
schema and is counted, so the caller can say so. Expansion copies (refs can fan out
exponentially: a few KB can expand to GB), so the copy is bounded in size and in nesting depth,
and a ref cycle is cut where it closes. The caller runs this in a worker thread, off the actor's
event loop.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

MAX_DEPTH = 64  # nesting of the expanded copy (refs and plain containers alike)


class SpecTooLarge(ValueError):
    """The document, once its refs are expanded, passes the size or depth bound."""


@dataclass
class Expansion:
    """The expanded value and what was left out on the way."""

    value: Any
    external: int = 0  # refs refused because they point outside the document
    broken: int = 0  # local refs that point nowhere
    cycles: int = 0  # refs cut because they lead back into themselves
    size: int = 0  # approximate bytes of the expanded copy (its JSON length)
    skipped: set[str] = field(default_factory=set)


def _pointer(root: Any, ref: str) -> Any:
    """The node a local ref (`#/a/b~1c`) names; KeyError if none."""
    fragment = unquote(ref[1:])
    if fragment == "":
        return root
    if not fragment.startswith("/"):
        raise KeyError(ref)  # `#name` anchors: not supported, treated as broken
    node = root
    for token in fragment[1:].split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            raise KeyError(ref)
    return node


def expand(root: Any, node: Any, *, max_bytes: int, max_depth: int = MAX_DEPTH) -> Expansion:
    """A ref-free copy of `node` (a part of document `root`), at most `max_bytes` of JSON."""
    result = Expansion(value=None)

    def grow(amount: int) -> None:
        result.size += amount
        if result.size > max_bytes:
            raise SpecTooLarge(f"the OpenAPI document expands to more than {max_bytes} bytes "
                               "once its $refs are followed")

    def walk(value: Any, depth: int, active: tuple[str, ...]) -> Any:
        if depth > max_depth:
            raise SpecTooLarge(f"the OpenAPI document nests deeper than {max_depth} levels")
        if isinstance(value, dict):
            ref = value.get("$ref")
            if isinstance(ref, str):
                siblings = {k: v for k, v in value.items() if k != "$ref"}
                target = _follow(ref, active)
                if target is _CUT:
                    return walk(siblings, depth, active) if siblings else {}
                expanded = walk(target, depth + 1, (*active, ref))
                if siblings and isinstance(expanded, dict):  # OpenAPI 3.1: siblings apply
                    expanded = {**expanded, **walk(siblings, depth, active)}
                return expanded
            grow(2)
            out: dict[str, Any] = {}
            for key, item in value.items():
                grow(len(str(key)) + 4)
                out[str(key)] = walk(item, depth + 1, active)
            return out
        if isinstance(value, list):
            grow(2)
            return [walk(item, depth + 1, active) for item in value]
        grow(len(json.dumps(value, default=str)) + 1)
        return value

    def _follow(ref: str, active: tuple[str, ...]) -> Any:
        if not ref.startswith("#"):
            result.external += 1
            result.skipped.add(ref[:200])
            return _CUT
        if ref in active:
            result.cycles += 1
            return _CUT
        try:
            return _pointer(root, ref)
        except KeyError:
            result.broken += 1
            return _CUT

    result.value = walk(node, 0, ())
    return result


_CUT = object()  # a ref that is not followed: it becomes an empty schema
