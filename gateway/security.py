"""The gateway's checks against other sites: Host, Origin, and the headers every response gets.

Why each one:
- `Host`: a page on another site can rebind its own name to 127.0.0.1 and then drive a laptop's
  server from the victim's browser (same-origin for the browser, since the name is theirs).
  Only the names in `LLMCAM_TRUSTED_HOSTS` are answered (Starlette's `TrustedHostMiddleware`);
  by default the loopback names when the gateway listens on loopback, any name otherwise.
- `Origin`: a cross-site form POST (`/api/sessions` replaces the victim's cookie) or DELETE is
  refused when the browser says it comes from another site. No `Origin` (curl, scripts, a
  same-origin GET) is allowed: this is about browsers acting for someone else.
- Headers: no MIME sniffing (a session file served as an image must not run as HTML), no
  referrer (URLs carry session IDs), no framing (clickjacking), and a CSP that only lets the
  server's own scripts and styles run, on every answer: /docs too (Swagger UI is served from
  this server with a start script of its own, see `gateway/routes/docs.py`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from urllib.parse import urlsplit

from fastapi import FastAPI
from starlette._utils import parse_host_header
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from actors.settings import Settings
from gateway.asgi import HttpMiddleware

LOOPBACK_NAMES = ["localhost", "127.0.0.1", "[::1]"]
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")
HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "X-Frame-Options": "DENY"}


def is_loopback(host: str | None) -> bool:
    """Whether the gateway listens on loopback only (`localhost`, 127.0.0.0/8, ::1)."""
    if not host:
        return True  # the CLI's default
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def trusted_hosts(settings: Settings, listen_host: str | None) -> list[str]:
    """The `Host` names to answer: the setting, else loopback names on loopback, else any."""
    if settings.trusted_hosts is not None:
        return list(settings.trusted_hosts)
    return list(LOOPBACK_NAMES) if is_loopback(listen_host) else ["*"]


class HostCheck:
    """Starlette's `TrustedHostMiddleware`, answering a refusal in our error format (JSON
    `{"detail"}`, 400) instead of its plain text; no `www.` redirects."""

    def __init__(self, app: ASGIApp, allowed_hosts: Sequence[str]) -> None:
        self.app = app
        self._check = TrustedHostMiddleware(self._passed, allowed_hosts=list(allowed_hosts),
                                            www_redirect=False)

    async def _passed(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["llmcam.host_ok"] = True
        await self.app(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._check(scope, receive, send)
            return

        async def refuse_or_pass(message: Message) -> None:
            if scope.get("llmcam.host_ok"):
                await send(message)
            elif message["type"] == "http.response.start":  # TrustedHost's plain-text 400
                await JSONResponse({"detail": "this server does not answer to that Host "
                                    "header (see LLMCAM_TRUSTED_HOSTS)"},
                                   status_code=400)(scope, receive, send)

        await self._check(scope, receive, refuse_or_pass)


def _origin_key(scheme: str, host: str, port: int | None) -> tuple[str, str, int]:
    scheme = scheme.lower()
    default = 443 if scheme in ("https", "wss") else 80
    return scheme, host.strip("[]").lower().rstrip("."), port or default


def same_origin(origin: str, scope: Scope) -> bool:
    """Whether `Origin` names the site this request was sent to (scheme, host and port)."""
    try:
        parts = urlsplit(origin)
        theirs = _origin_key(parts.scheme, parts.hostname or "", parts.port)
    except ValueError:  # a malformed port, `null`: another (or an opaque) site
        return False
    if not parts.hostname:
        return False
    host = parse_host_header(Headers(scope=scope).get("host"))
    if host is None:
        return False
    ours = _origin_key(scope.get("scheme", "http"), host.host,
                       int(host.port) if host.port else None)
    return theirs == ours


class OriginCheck(HttpMiddleware):
    """403 for a state-changing request that a browser sent from another site."""

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("method") in UNSAFE_METHODS:
            origin = Headers(scope=scope).get("origin")
            if origin is not None and not same_origin(origin, scope):
                await JSONResponse({"detail": "cross-site request refused: the Origin header "
                                    "names another site"}, status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class SecurityHeaders(HttpMiddleware):
    """The headers every response gets (a route's own values win)."""

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        wanted = {**HEADERS, "Content-Security-Policy": CSP}

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                headers = MutableHeaders(scope=message)
                for name, value in wanted.items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, with_headers)


def install(app: FastAPI, settings: Settings, listen_host: str | None) -> None:
    """Add the three, outermost last: headers on every answer, refusals included."""
    app.add_middleware(OriginCheck)
    app.add_middleware(HostCheck, allowed_hosts=trusted_hosts(settings, listen_host))
    app.add_middleware(SecurityHeaders)
