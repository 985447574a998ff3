"""`LLMCAM_AUTH=oidc` as a user meets it: signing in through a real OpenID provider
(oidc-provider-mock, Authlib under Flask, its real form), the `llmcam_user` cookie, what a user
without it (or with a tampered or expired one) gets, whose sessions each user sees, signing out,
and a second gateway sharing the key."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from itsdangerous import TimestampSigner, URLSafeTimedSerializer

from actors.settings import Settings
from gateway.identity import _SALT, COOKIE_MAX_AGE, USER_COOKIE
from testing.standins import OpenAIServer
from tests.helpers import Gateway, OidcProvider, free_port, make_settings, new_session

SECRET_KEY = "test-secret-key-" + uuid.uuid4().hex
ALICE = {"sub": "alice-" + uuid.uuid4().hex[:8], "email": "alice@example.org", "name": "Alice"}
BOB = {"sub": "bob-" + uuid.uuid4().hex[:8], "name": "Bob Builder"}  # no email: name is shown


@dataclass
class Setup:
    provider: OidcProvider
    gw: Gateway
    other: Gateway  # a second gateway: same key, same data directory
    client_secret: str


def oidc_settings(tmp: Path, llm: OpenAIServer, provider: OidcProvider, client_id: str,
                  client_secret: str, secret_key: str = SECRET_KEY) -> Settings:
    return make_settings(tmp, llm, auth="oidc", oidc_issuer=provider.issuer,
                         oidc_client_id=client_id, oidc_client_secret=client_secret,
                         secret_key=secret_key)


@pytest.fixture(scope="module")
def oidc(ray_address: str, llm: OpenAIServer,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    with OidcProvider() as provider:
        provider.set_user(ALICE)
        provider.set_user(BOB)
        ports = free_port(), free_port()
        client_id, client_secret = provider.register(
            *(f"http://127.0.0.1:{port}/auth/callback" for port in ports))
        settings = oidc_settings(tmp_path_factory.mktemp("data"), llm, provider, client_id,
                                 client_secret)
        with Gateway(settings, port=ports[0]) as gw, Gateway(settings, port=ports[1]) as other:
            yield Setup(provider, gw, other, client_secret)


def start_login(client: httpx.Client, provider: OidcProvider, gw: Gateway) -> str:
    """GET /login: the provider's authorization URL it redirects to (checked for PKCE S256,
    state, nonce and our callback)."""
    response = client.get("/login")
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith(f"{provider.issuer}/oauth2/authorize?")
    query = parse_qs(urlsplit(location).query)
    assert query["response_type"] == ["code"]
    assert query["redirect_uri"] == [f"{gw.url}/auth/callback"]
    assert query["code_challenge_method"] == ["S256"] and query["code_challenge"][0]
    assert query["state"][0] and query["nonce"][0]
    assert set(query["scope"][0].split()) >= {"openid", "email", "profile"}
    return location


def authorize(location: str, sub: str) -> str:
    """The user at the provider's real form: it shows, then submitting `sub` sends the browser
    back; the callback URL it redirects to."""
    page = httpx.get(location)
    assert page.status_code == 200 and 'name="sub"' in page.text, page.text[:500]
    response = httpx.post(location, data={"sub": sub})
    assert response.status_code == 302, response.text[:500]
    return response.headers["location"]


@contextmanager
def sign_in(setup: Setup, user: dict[str, str],
            gw: Gateway | None = None) -> Iterator[httpx.Client]:
    """A browser-like client of `gw` signed in as `user`."""
    gw = gw or setup.gw
    with gw.client() as client:
        yield login(client, setup, user, gw)


def login(client: httpx.Client, setup: Setup, user: dict[str, str], gw: Gateway) -> httpx.Client:
    """The whole round: /login, the provider's form, /auth/callback; the cookie is set."""
    callback = authorize(start_login(client, setup.provider, gw), user["sub"])
    assert callback.startswith(f"{gw.url}/auth/callback?")
    response = client.get(callback)
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/"
    assert client.cookies.get(USER_COOKIE)
    assert "llmcam_login" not in client.cookies  # the flow's state went with it
    return client


def expect_401(response: httpx.Response) -> str:
    assert response.status_code == 401, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail
    assert "Traceback" not in response.text
    return detail


def test_sign_in_through_the_provider(oidc: Setup) -> None:
    with sign_in(oidc, ALICE) as client:
        me = client.get("/api/me")
        assert me.status_code == 200, me.text
        assert me.json()["user"] == ALICE["email"] and me.json()["auth"] == "oidc"
    with sign_in(oidc, BOB) as client:  # no email claim: the name is shown
        assert client.get("/api/me").json()["user"] == BOB["name"]


def test_cookie_attributes(oidc: Setup) -> None:
    with oidc.gw.client() as client:
        callback = authorize(start_login(client, oidc.provider, oidc.gw), ALICE["sub"])
        response = client.get(callback)
    assert response.status_code == 303
    set_cookie = next(h for h in response.headers.get_list("set-cookie")
                      if h.startswith(f"{USER_COOKIE}="))
    attributes = {part.strip().split("=")[0].lower() for part in set_cookie.split(";")[1:]}
    assert {"httponly", "samesite", "path", "max-age"} <= attributes
    assert "samesite=lax" in set_cookie.lower() and "path=/" in set_cookie.lower()
    assert f"max-age={COOKIE_MAX_AGE}" in set_cookie.lower()
    assert "secure" not in attributes  # served over plain http here
    assert oidc.client_secret not in response.text + str(response.headers)


def test_without_a_user_api_is_401(oidc: Setup) -> None:
    with oidc.gw.client() as client:
        for method, path in [("GET", "/api/me"), ("GET", "/api/sessions"),
                             ("POST", "/api/sessions"), ("GET", "/api/sessions/current")]:
            expect_401(client.request(method, path))
        assert client.get("/healthz").status_code == 200
        assert client.get("/login").status_code == 302
        assert client.get("/").status_code == 200  # the page itself


def test_each_user_sees_only_their_own_sessions(oidc: Setup) -> None:
    with sign_in(oidc, ALICE) as alice, sign_in(oidc, BOB) as bob:
        mine = new_session(alice)
        theirs = new_session(bob)
        assert alice.get(f"/api/sessions/{mine}").status_code == 200
        stolen = bob.get(f"/api/sessions/{mine}")  # even with the ID
        assert stolen.status_code == 404, stolen.text
        assert bob.get(f"/api/sessions/{mine}/messages").status_code == 404
        listed = alice.get("/api/sessions")
        assert listed.status_code == 200, listed.text
        alice_ids = [s["session_id"] for s in listed.json()]
        bob_ids = [s["session_id"] for s in bob.get("/api/sessions").json()]
        assert mine in alice_ids and theirs not in alice_ids
        assert theirs in bob_ids and mine not in bob_ids


def test_tampered_or_expired_cookie_is_401(oidc: Setup) -> None:
    with sign_in(oidc, ALICE) as signed_in:
        good = signed_in.cookies[USER_COOKIE]
    at = len(good) // 3  # inside the signed payload
    tampered = good[:at] + ("A" if good[at] != "A" else "B") + good[at + 1:]

    class SignedLongAgo(TimestampSigner):  # the signer stamps the time, not the serializer
        def get_timestamp(self) -> int:
            return int(time.time()) - COOKIE_MAX_AGE - 60

    claims = {"u": f"{oidc.provider.issuer}#{ALICE['sub']}", "n": ALICE["email"]}
    expired = URLSafeTimedSerializer(SECRET_KEY, salt=_SALT, signer=SignedLongAgo).dumps(claims)
    other_key = URLSafeTimedSerializer("another-key", salt=_SALT).dumps(claims)
    fresh = URLSafeTimedSerializer(SECRET_KEY, salt=_SALT).dumps(claims)  # the control
    for value in (tampered, expired, other_key, "garbage"):
        with oidc.gw.client(cookies={USER_COOKIE: value}) as client:
            expect_401(client.get("/api/me"))
    with oidc.gw.client(cookies={USER_COOKIE: fresh}) as client:
        assert client.get("/api/me").json()["user"] == ALICE["email"]


def test_logout_ends_the_sign_in(oidc: Setup) -> None:
    with sign_in(oidc, ALICE) as client:
        assert client.get("/api/me").status_code == 200
        response = client.post("/logout", headers={"Origin": oidc.gw.url})  # as the page's fetch
        assert response.status_code == 204, response.text
        assert USER_COOKIE not in client.cookies
        expect_401(client.get("/api/me"))


def test_forged_or_failed_callback_is_401(oidc: Setup) -> None:
    gw = oidc.gw
    with gw.client() as client:  # a state this gateway never issued
        detail = expect_401(client.get("/auth/callback", params={"code": "x", "state": "y"}))
        assert oidc.client_secret not in detail
    with gw.client() as victim, gw.client() as attacker:  # login CSRF: someone else's answer
        callback = authorize(start_login(attacker, oidc.provider, gw), BOB["sub"])
        expect_401(victim.get(callback))
        assert USER_COOKIE not in victim.cookies
    with gw.client() as client:  # the user denies at the provider
        location = start_login(client, oidc.provider, gw)
        denied = httpx.post(location, data={"action": "deny"})
        assert denied.status_code == 302
        detail = expect_401(client.get(denied.headers["location"]))
        assert "access_denied" in detail
        expect_401(client.get("/api/me"))
    with gw.client() as client:  # an answer used twice
        callback = authorize(start_login(client, oidc.provider, gw), ALICE["sub"])
        assert client.get(callback).status_code == 303
        expect_401(client.get(callback))


def test_wrong_client_secret_is_refused(oidc: Setup, llm: OpenAIServer,
                                        tmp_path: Path) -> None:
    port = free_port()
    client_id, secret = oidc.provider.register(f"http://127.0.0.1:{port}/auth/callback")
    settings = oidc_settings(tmp_path, llm, oidc.provider, client_id, "wrong-" + secret)
    with Gateway(settings, port=port) as gw, gw.client() as client:
        callback = authorize(start_login(client, oidc.provider, gw), ALICE["sub"])
        response = client.get(callback)
        detail = expect_401(response)
        assert "invalid_client" in detail and secret not in response.text
        assert USER_COOKIE not in client.cookies


def test_another_gateway_with_the_same_key_accepts_the_cookie(oidc: Setup) -> None:
    with sign_in(oidc, ALICE) as alice:
        sid = new_session(alice)
        cookie = alice.cookies[USER_COOKIE]
    with oidc.other.client(cookies={USER_COOKIE: cookie}) as there:
        me = there.get("/api/me")
        assert me.status_code == 200 and me.json()["user"] == ALICE["email"]
        assert there.get(f"/api/sessions/{sid}").status_code == 200
        assert sid in [s["session_id"] for s in there.get("/api/sessions").json()]
    with sign_in(oidc, BOB, gw=oidc.other) as bob:  # signing in there works too
        assert bob.get(f"/api/sessions/{sid}").status_code == 404


def test_login_is_404_in_other_modes(gateway: Gateway) -> None:
    with gateway.client() as client:  # the default gateway: LLMCAM_AUTH unset
        assert client.get("/login").status_code == 404
        assert client.get("/auth/callback", params={"code": "x", "state": "y"}).status_code \
            == 404
        assert client.post("/logout").status_code == 404
