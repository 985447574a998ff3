"""Signing in with an OpenID Connect provider (`LLMCAM_AUTH=oidc`).

`GET /login` sends the browser to the provider (authorization-code flow, PKCE S256, `state` and
`nonce`, all by Authlib's Starlette client); `GET /auth/callback` trades the code for tokens,
checks the ID token (signature, issuer, audience, nonce, expiry) and leaves the `llmcam_user`
cookie (gateway/identity.py) that names the user as the ID token's `iss` + `sub`; `POST /logout`
removes it. In other modes these paths are 404.

Between `/login` and `/auth/callback` Authlib keeps the flow's state, nonce and PKCE verifier
in `request.session`: Starlette's `SessionMiddleware` under its own cookie (`LOGIN_COOKIE`), signed
with a key derived from `LLMCAM_SECRET_KEY`, living ten minutes; `install` adds it in `oidc`
mode only. The OAuth client is built once per app from `app.state.settings`, on first use.
"""

from __future__ import annotations

import hashlib
import logging
import re
from typing import Any

import httpx
from authlib.integrations.base_client import OAuthError
from authlib.integrations.starlette_client import OAuth
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from joserfc.errors import JoseError
from starlette.middleware.sessions import SessionMiddleware

from actors.settings import Settings
from gateway.identity import COOKIE_MAX_AGE, USER_COOKIE, Identity, IdentityDep

log = logging.getLogger(__name__)
router = APIRouter(tags=["auth"])

LOGIN_COOKIE = "llmcam_login"  # the flow's state between /login and /auth/callback
LOGIN_MAX_AGE = 600  # seconds a visitor has to finish signing in at the provider
_CLIENT = "oidc"
_ERROR_CODE = re.compile(r"[a-z_]{1,64}")


class _NotOidc(Exception):
    pass


def login_key(settings: Settings) -> str:
    """The key of the login-state cookie: derived from LLMCAM_SECRET_KEY, so that neither
    cookie's signature is valid as the other's."""
    secret = settings.secret_key.get_secret_value() if settings.secret_key else ""
    return hashlib.sha256(b"llmcam-login\0" + secret.encode()).hexdigest()


def install(app: FastAPI, settings: Settings) -> None:
    """The routes (404 outside `oidc` mode, where they are left out of the schema) and, in
    `oidc` mode, the session middleware Authlib keeps the flow's state in."""
    oidc = settings.auth == "oidc"
    app.include_router(router, include_in_schema=oidc)
    if oidc:
        app.add_middleware(SessionMiddleware, secret_key=login_key(settings),
                           session_cookie=LOGIN_COOKIE, max_age=LOGIN_MAX_AGE, path="/",
                           same_site="lax", https_only=False)


def _client(request: Request) -> Any:
    """This app's OAuth client (Authlib's StarletteOAuth2App), built on first use."""
    identity: Identity = request.app.state.identity
    if identity.mode != "oidc":
        raise _NotOidc
    if "session" not in request.scope:
        raise RuntimeError("oidc mode needs the login SessionMiddleware: call "
                           "gateway.routes.auth.install(app, settings)")
    client = getattr(request.app.state, "oidc_client", None)
    if client is None:
        settings: Settings = request.app.state.settings
        if not settings.oidc_issuer or not settings.oidc_client_id:
            raise RuntimeError("LLMCAM_AUTH=oidc needs LLMCAM_OIDC_ISSUER and "
                               "LLMCAM_OIDC_CLIENT_ID")
        secret = (settings.oidc_client_secret.get_secret_value()
                  if settings.oidc_client_secret else None)
        client_kwargs: dict[str, Any] = {"scope": "openid email profile",
                                         "code_challenge_method": "S256", "timeout": 15}
        if not secret:  # a public client: PKCE alone
            client_kwargs["token_endpoint_auth_method"] = "none"
        client = OAuth().register(
            _CLIENT, client_id=settings.oidc_client_id, client_secret=secret,
            server_metadata_url=settings.oidc_issuer.rstrip("/")
            + "/.well-known/openid-configuration",
            client_kwargs=client_kwargs)
        request.app.state.oidc_client = client
    return client


def _not_found() -> JSONResponse:
    return JSONResponse({"detail": "not found: this server does not sign users in itself "
                         "(LLMCAM_AUTH is not oidc)"}, status_code=404)


def _refused(detail: str) -> JSONResponse:
    return JSONResponse({"detail": f"sign-in failed: {detail}; open /login to try again"},
                        status_code=401, headers={"Cache-Control": "no-store"})


def _unreachable() -> JSONResponse:
    return JSONResponse({"detail": "the sign-in provider (LLMCAM_OIDC_ISSUER) is unreachable "
                         "or answered badly; try again shortly"}, status_code=502,
                        headers={"Retry-After": "5", "Cache-Control": "no-store"})


@router.get("/login")
async def login(request: Request) -> Response:
    """Send the browser to the OpenID provider to sign in; it comes back at /auth/callback."""
    try:
        client = _client(request)
    except _NotOidc:
        return _not_found()
    try:
        response = await client.authorize_redirect(request, request.url_for("auth_callback"))
    except (httpx.HTTPError, ValueError, KeyError, RuntimeError) as exc:
        log.warning("OIDC discovery failed: %s", type(exc).__name__)
        return _unreachable()
    response.headers["Cache-Control"] = "no-store"
    return response


@router.get("/auth/callback", name="auth_callback")
async def callback(request: Request, identity: IdentityDep) -> Response:
    """Where the provider sends the browser back: check the answer, set the user cookie, go
    to the page."""
    try:
        client = _client(request)
    except _NotOidc:
        return _not_found()
    try:
        token = await client.authorize_access_token(request)
    except OAuthError as exc:  # the provider's error, a state we did not issue, a bad token
        code = exc.error if isinstance(exc.error, str) and _ERROR_CODE.fullmatch(exc.error) \
            else "oauth_error"
        log.info("OIDC sign-in refused: %s", code)
        if code == "mismatching_state":
            return _refused("this answer does not belong to a sign-in started here (state "
                            "mismatch or expired)")
        return _refused(f"the provider answered {code}")
    except JoseError as exc:  # ID token: bad signature, issuer, audience, nonce, expiry
        log.info("OIDC ID token rejected: %s", type(exc).__name__)
        return _refused("the ID token was not valid")
    except httpx.HTTPError as exc:
        log.warning("OIDC token request failed: %s", type(exc).__name__)
        return _unreachable()
    except Exception as exc:  # anything else the provider's answer makes Authlib raise
        log.warning("OIDC callback failed: %s", type(exc).__name__)
        return _refused("the provider's answer could not be read")
    finally:
        request.session.clear()  # this flow is over, passed or not: its cookie goes
    claims = token.get("userinfo") or {}
    iss, sub = claims.get("iss"), claims.get("sub")
    if not isinstance(iss, str) or not isinstance(sub, str) or not iss or not sub:
        return _refused("the provider sent no ID token with iss and sub")
    shown = next((v for v in (claims.get("email"), claims.get("name"))
                  if isinstance(v, str) and v.strip()), sub)
    response = RedirectResponse("/", status_code=303, headers={"Cache-Control": "no-store"})
    response.set_cookie(USER_COOKIE, identity.cookie_value(f"{iss}#{sub}", shown[:256]),
                        max_age=COOKIE_MAX_AGE, path="/", httponly=True, samesite="lax",
                        secure=request.url.scheme == "https")
    return response


@router.post("/logout", status_code=204)
async def logout(request: Request) -> Response:
    """End the sign-in on this browser (the cookie goes; the provider's own sign-in stays)."""
    if request.app.state.identity.mode != "oidc":
        return _not_found()
    response = Response(status_code=204, headers={"Cache-Control": "no-store"})
    response.delete_cookie(USER_COOKIE, path="/", httponly=True, samesite="lax",
                           secure=request.url.scheme == "https")
    return response
