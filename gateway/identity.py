"""Who is calling: resolved once per request (`get_caller`, a FastAPI dependency), from the
mode `LLMCAM_AUTH` names.

- `none` (or unset): nobody signs in; the caller is its client address (the socket's peer, or
  the nearest `X-Forwarded-For` hop that a trusted proxy added), which the limits count by.
- `proxy`: a reverse proxy that signed the user in names them in `LLMCAM_AUTH_HEADER`; the
  header is believed only from a peer in `LLMCAM_TRUSTED_PROXIES`.
- `oidc`: the gateway signed the user in itself (gateway/routes/auth.py) and left a cookie
  `llmcam_user`, signed with `LLMCAM_SECRET_KEY` (itsdangerous, as Starlette's own session
  cookie), that every gateway sharing the key accepts. A tampered or expired cookie is no user.

Routes and the session client get a `Caller`, never a raw header.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from itsdangerous import BadSignature, URLSafeTimedSerializer

from actors.errors import SignInNeeded
from actors.settings import Settings

USER_COOKIE = "llmcam_user"
COOKIE_MAX_AGE = 7 * 24 * 3600  # a sign-in lasts a week, then the provider is asked again
_SALT = "llmcam-user"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Caller:
    """The user (None when nobody signed in) and the client address of one request."""

    user: str | None
    name: str | None
    address: str

    @property
    def account(self) -> str:
        """What limits and costs are counted under: the user, else the client address."""
        return f"user:{self.user}" if self.user else f"addr:{self.address}"

    def __repr__(self) -> str:
        return f"Caller({self.name or self.address})"


class Identity:
    def __init__(self, settings: Settings) -> None:
        self.mode = settings.auth or "none"
        self.header = settings.auth_header
        self.proxies: list[Network] = [ipaddress.ip_network(cidr.strip(), strict=False)
                                       for cidr in settings.trusted_proxies]
        secret = settings.secret_key.get_secret_value() if settings.secret_key else None
        if self.mode == "oidc" and not secret:
            raise ValueError("LLMCAM_AUTH=oidc needs LLMCAM_SECRET_KEY (the key that signs "
                             "the sign-in cookie; the same on every gateway)")
        if self.mode == "oidc" and not (settings.oidc_issuer and settings.oidc_client_id):
            raise ValueError("LLMCAM_AUTH=oidc needs LLMCAM_OIDC_ISSUER and "
                             "LLMCAM_OIDC_CLIENT_ID (and, for a confidential client, "
                             "LLMCAM_OIDC_CLIENT_SECRET)")
        self._signer = URLSafeTimedSerializer(secret, salt=_SALT) if secret else None

    # addresses ----------------------------------------------------------------------------------
    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.strip().strip("[]"))
        except ValueError:
            return False
        return any(ip in network for network in self.proxies)

    def client_address(self, request: Request) -> str:
        """The peer, or the nearest X-Forwarded-For hop a trusted proxy added."""
        peer = request.client.host if request.client else "unknown"
        if not self._trusted(peer):
            return peer
        hops = [h.strip() for h in ",".join(request.headers.getlist("x-forwarded-for"))
                .split(",") if h.strip()]
        address = peer
        while hops and self._trusted(address):
            address = hops.pop()
        return address

    # users --------------------------------------------------------------------------------------
    def resolve(self, request: Request) -> Caller:
        address = self.client_address(request)
        if self.mode == "proxy":
            peer = request.client.host if request.client else ""
            user = request.headers.get(self.header, "").strip() if self._trusted(peer) else ""
            return Caller(user[:256] or None, user[:256] or None, address)
        if self.mode == "oidc":
            found = self.read_cookie(request.cookies.get(USER_COOKIE))
            if found:
                return Caller(found["u"], found.get("n") or found["u"], address)
            return Caller(None, None, address)
        return Caller(None, None, address)

    def cookie_value(self, user: str, name: str | None) -> str:
        assert self._signer is not None
        return self._signer.dumps({"u": user, "n": name})

    def read_cookie(self, value: str | None) -> dict[str, Any] | None:
        if not value or self._signer is None:
            return None
        try:
            found = self._signer.loads(value, max_age=COOKIE_MAX_AGE)
        except BadSignature:  # tampered, or expired (SignatureExpired is a BadSignature)
            return None
        return found if isinstance(found, dict) and isinstance(found.get("u"), str) else None

    @property
    def signs_in(self) -> bool:
        return self.mode in ("proxy", "oidc")


def get_identity(request: Request) -> Identity:
    return request.app.state.identity


def get_caller(request: Request) -> Caller:
    """The caller of this request; in `proxy` and `oidc` modes an /api request without a user
    ends here with 401."""
    identity = get_identity(request)
    caller = identity.resolve(request)
    if identity.signs_in and caller.user is None:
        raise SignInNeeded(identity.mode)
    return caller


CallerDep = Annotated[Caller, Depends(get_caller)]
IdentityDep = Annotated[Identity, Depends(get_identity)]
