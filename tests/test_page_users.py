"""The chat page with users, in a real browser (Debian's Chromium through Playwright) on the real
gateway, under its Content-Security-Policy: who is signed in and "Sign out"; "Your chats" from
the server for a signed-in user, the same in a second browser with nothing shared; "Sign-in
needed" where the proxy named nobody; a limit's 429 said in words (never raw JSON), with the
unsent text still in the input box; and the whole OpenID Connect round through a real provider's
form (oidc-provider-mock).

Over 300 lines on purpose: one feature's browser tests, beside the fixtures only they use."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from testing.standins import OpenAIServer
from tests.helpers import (
    BROWSER,
    USER_HEADER,
    BrowserPage,
    Gateway,
    Gateways,
    OidcProvider,
    free_port,
    make_settings,
)

pytestmark = BROWSER


class Page(BrowserPage):
    """The chat page in one browser context on a gateway; `user` is sent as the sign-in
    proxy's header on every request, and nothing leaves this machine (the provider's form
    links a stylesheet on a CDN)."""

    def __init__(self, browser: Any, base: str, user: str | None = None) -> None:
        super().__init__(browser, base, {USER_HEADER: user} if user else None)
        self.context.route(re.compile(r"^https?://(?!127\.0\.0\.1[:/])"),
                           lambda route: route.abort())

    @property
    def chats(self) -> Any:
        return self.page.get_by_test_id("chat")

    def new_chat(self) -> None:
        from playwright.sync_api import expect

        self.page.get_by_role("button", name="New chat").click()
        expect(self.role("user")).to_have_count(0)
        expect(self.send_button).to_be_enabled()


@pytest.fixture()
def pages(browser: Any) -> Iterator[Any]:
    """Opens pages (`pages(base, user=None)`); closes them all after the test."""
    opened: list[Page] = []

    def open_page(base: str, user: str | None = None) -> Page:
        opened.append(Page(browser, base, user))
        return opened[-1]

    try:
        yield open_page
    finally:
        for page in opened:
            page.close()


def titles(gw: Gateway, user: str) -> list[str]:
    with gw.client(headers={USER_HEADER: user}) as client:
        listed = client.get("/api/sessions")
    assert listed.status_code == 200, listed.text
    return [s["title"] for s in listed.json()]


# ---------- proxy mode: the sign-in proxy names the user ----------

@pytest.fixture(scope="module")
def proxy_gateway(gateways: Gateways) -> Gateway:
    return gateways(auth="proxy")


def test_signed_in_user_sees_their_chats_from_the_server(pages: Any,
                                                         proxy_gateway: Gateway) -> None:
    from playwright.sync_api import expect

    alice = "alice-" + uuid.uuid4().hex[:6]
    first = pages(proxy_gateway.url, user=alice)
    first.open()
    account = first.page.get_by_test_id("account")
    expect(account).to_be_visible()
    expect(account).to_contain_text(f"Signed in as {alice}")
    expect(first.page.get_by_test_id("user-name")).to_have_text(alice)
    expect(first.page.get_by_role("button", name="Sign out")).to_be_visible()
    expect(first.chats).to_have_count(1)  # the chat the page started, on the server's list
    assert first.page.get_by_test_id("chats").get_attribute("data-source") == "server"

    first.send("alpha-question about Porvoo")
    expect(first.role("assistant")).to_have_text(["echo: alpha-question about Porvoo"])
    alpha = first.sid()
    first.new_chat()
    expect(first.chats).to_have_count(2)
    first.send("beta-question about Oulu")
    beta = first.sid()
    assert beta != alpha
    expect(first.chats.locator(".chat-title")).to_have_text(["beta-question about Oulu",
                                                             "alpha-question about Porvoo"])
    expect(first.chats.nth(0)).to_have_class("chat-item current")
    # the list is the server's, not this browser's
    assert first.page.evaluate("localStorage.getItem('llmcam.chats')") in (None, "[]")
    assert titles(proxy_gateway, alice) == ["beta-question about Oulu",
                                            "alpha-question about Porvoo"]
    first.shot("users_signed_in.png")

    # another device: a fresh browser context (no shared cookies or localStorage), same user
    second = pages(proxy_gateway.url, user=alice)
    second.open()
    expect(second.chats.locator(".chat-title")).to_have_text(["beta-question about Oulu",
                                                              "alpha-question about Porvoo"])
    expect(second.role("user")).to_have_text(["beta-question about Oulu"])  # the newest
    second.chats.nth(1).locator(".chat-open").click()
    expect(second.role("user")).to_have_text(["alpha-question about Porvoo"])
    expect(second.role("assistant")).to_have_text(["echo: alpha-question about Porvoo"])
    assert second.sid() == alpha
    second.shot("users_second_device.png")

    # another user sees none of alice's chats
    bob = pages(proxy_gateway.url, user="bob-" + uuid.uuid4().hex[:6])
    bob.open()
    expect(bob.chats).to_have_count(1)
    expect(bob.chats.locator(".chat-title")).to_have_text(["New chat"])
    assert bob.sid() not in (alpha, beta)

    # deleting a chat from the list deletes it on the server (it is on every device's list)
    second.chats.nth(1).get_by_role(
        "button", name="Delete chat: alpha-question about Porvoo").click()
    dialog = second.page.get_by_role("dialog")
    expect(dialog).to_contain_text("is deleted on the server")
    expect(dialog.get_by_label("Also delete it on the server")).to_be_hidden()
    dialog.get_by_role("button", name="Delete").click()
    expect(second.chats.locator(".chat-title")).to_have_text(["beta-question about Oulu"])
    expect(second.role("user")).to_have_text(["beta-question about Oulu"])  # the open one went
    assert titles(proxy_gateway, alice) == ["beta-question about Oulu"]
    with proxy_gateway.client(headers={USER_HEADER: alice}) as client:
        assert client.get(f"/api/sessions/{alpha}").status_code == 404
    # the first device sees it gone when it looks again
    first.page.reload()
    expect(first.chats.locator(".chat-title")).to_have_text(["beta-question about Oulu"])

    # Sign out asks the server to end the sign-in (POST /logout), then reloads; behind a proxy
    # the proxy still names the user, so the page is signed in again
    with first.page.expect_request(lambda r: r.method == "POST"
                                   and urlsplit(r.url).path == "/logout"), \
            first.page.expect_navigation():  # the reload after it, loaded
        first.page.get_by_role("button", name="Sign out").click()
    first.page.wait_for_load_state()
    expect(first.page.get_by_test_id("user-name")).to_have_text(alice)
    expect(first.send_button).to_be_enabled()
    for page in (first, second, bob):
        page.check_clean()


def test_without_a_user_the_page_says_sign_in_is_needed(pages: Any,
                                                        proxy_gateway: Gateway) -> None:
    from playwright.sync_api import expect

    nobody = pages(proxy_gateway.url)  # the proxy named nobody
    nobody.page.goto(proxy_gateway.url + "/")
    notice = nobody.page.get_by_test_id("notice")
    expect(notice).to_be_visible()
    expect(notice).to_contain_text("Sign-in needed")
    expect(nobody.page.get_by_test_id("account")).to_be_hidden()
    expect(nobody.send_button).to_be_disabled()
    expect(nobody.input).to_be_disabled()
    expect(nobody.page.get_by_role("button", name="New chat")).to_be_disabled()
    nobody.page.wait_for_timeout(500)
    assert ("POST", proxy_gateway.url + "/api/sessions") not in nobody.sent
    assert nobody.chats.count() == 0
    assert '{"detail"' not in nobody.page.inner_text("body")
    nobody.shot("users_sign_in_needed.png")
    nobody.check_clean()


# ---------- limits: a 429 in words ----------

@pytest.fixture(scope="module")
def limited_gateway(gateways: Gateways) -> Gateway:
    return gateways(rate_turns=1, rate_sessions=1)


def assert_readable(page: Page) -> None:
    text = page.page.inner_text("body")
    for raw in ('{"detail"', '"limit"', "Traceback", "Error 429", "[object Object]"):
        assert raw not in text, text


def test_a_limit_is_said_in_words_and_the_text_stays(pages: Any,
                                                     limited_gateway: Gateway) -> None:
    from playwright.sync_api import expect

    chat = pages(limited_gateway.url)
    chat.open()
    chat.send("first-question about Porvoo")
    # a second turn within the minute: LLMCAM_RATE_TURNS=1
    chat.input.fill("second-question, too soon")
    chat.send_button.click()
    alert = chat.role("error")
    expect(alert).to_have_count(1)
    expect(alert).to_contain_text("Limit reached: ")
    expect(alert).to_contain_text("LLMCAM_RATE_TURNS")
    expect(alert).to_contain_text(re.compile(r"LLMCAM_RATE_TURNS.* — try again in \d+ s"))
    expect(chat.input).to_have_value("second-question, too soon")  # nothing typed is lost
    expect(chat.role("user")).to_have_text(["first-question about Porvoo"])  # not recorded
    expect(chat.send_button).to_be_enabled()
    assert_readable(chat)
    chat.shot("users_limit_429.png")
    with limited_gateway.client() as client:
        stored = client.get(f"/api/sessions/{chat.sid()}/messages").json()
    assert "second-question" not in json.dumps(stored)

    # a new chat over LLMCAM_RATE_SESSIONS=1 (the page made one already)
    chat.page.get_by_role("button", name="New chat").click()
    refused = alert.filter(has_text="Could not start a new chat")
    expect(refused).to_contain_text("Limit reached: ")
    expect(refused).to_contain_text("LLMCAM_RATE_SESSIONS")
    expect(chat.input).to_have_value("second-question, too soon")
    expect(chat.role("user")).to_have_text(["first-question about Porvoo"])  # same chat

    # an upload refused by a limit (a 429 as the gateway words them)
    def refuse(route: Any) -> None:
        if route.request.method != "POST":
            route.continue_()
            return
        route.fulfill(status=429, headers={"Retry-After": "9"}, content_type="application/json",
                      body=json.dumps({"detail": "too many uploads: at most 1 a minute",
                                       "limit": "LLMCAM_TEST_UPLOADS"}))

    chat.page.route("**/api/sessions/*/files", refuse)
    chat.page.locator("#file-input").set_input_files(
        files=[{"name": "harbour.png", "mimeType": "image/png", "buffer": png()}])
    toast = chat.page.get_by_test_id("toast").filter(has_text="harbour.png")
    expect(toast).to_contain_text("Limit reached: too many uploads: at most 1 a minute "
                                  "(LLMCAM_TEST_UPLOADS) — try again in 9 s")
    expect(chat.page.get_by_test_id("attachments").locator(".chip")).to_have_count(0)

    # /events refused by the listeners' limit: said once, retried when the server allows
    events: list[str] = []

    def listeners_full(route: Any) -> None:
        events.append(route.request.url)
        route.fulfill(status=429, headers={"Retry-After": "30"}, content_type="application/json",
                      body=json.dumps({"detail": "you have 16 open streams (/events and turns "
                                       "watched), the most allowed (LLMCAM_USER_LISTENERS); "
                                       "close a tab or a stream",
                                       "limit": "LLMCAM_USER_LISTENERS"}))

    chat.page.route("**/api/sessions/*/events", listeners_full)
    chat.page.reload()
    expect(chat.role("user")).to_have_text(["first-question about Porvoo"])
    paused = chat.page.get_by_test_id("events-problem")
    expect(paused).to_be_visible()
    expect(paused).to_contain_text("Notifications cannot be received just now. Limit reached: ")
    expect(paused).to_contain_text("LLMCAM_USER_LISTENERS")
    expect(paused).to_contain_text("try again in 30 s")
    chat.page.wait_for_timeout(1500)
    assert len(events) == 1  # no retry before Retry-After
    assert_readable(chat)
    chat.shot("users_limit_events.png")
    chat.check_clean()


def png() -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (64, 48), (40, 120, 200)).save(out, "PNG")
    return out.getvalue()


# ---------- oidc: the gateway signs users in through an OpenID provider ----------

SECRET_KEY = "page-test-key-" + uuid.uuid4().hex
ALICE = {"sub": "alice-" + uuid.uuid4().hex[:8], "email": "alice@example.org", "name": "Alice"}


@pytest.fixture(scope="module")
def oidc(ray_address: str, llm: OpenAIServer,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OidcProvider, Gateway]]:
    with OidcProvider() as provider:
        provider.set_user(ALICE)
        port = free_port()
        client_id, client_secret = provider.register(f"http://127.0.0.1:{port}/auth/callback")
        settings = make_settings(tmp_path_factory.mktemp("oidc"), llm, auth="oidc",
                                 oidc_issuer=provider.issuer, oidc_client_id=client_id,
                                 oidc_client_secret=client_secret, secret_key=SECRET_KEY)
        with Gateway(settings, port=port) as gw:
            yield provider, gw


def test_sign_in_with_the_provider_and_sign_out(pages: Any,
                                                oidc: tuple[OidcProvider, Gateway]) -> None:
    from playwright.sync_api import expect

    provider, gw = oidc
    login = httpx.get(gw.url + "/login")
    assert login.status_code == 302, ("GET /login does not start the sign-in: is "
                                      "gateway.routes.auth installed in gateway/app.py? "
                                      f"{login.status_code} {login.text[:200]}")
    authorize = re.compile(re.escape(provider.issuer) + r"/oauth2/authorize\?.*")
    chat = pages(gw.url)
    chat.page.goto(gw.url + "/")
    # nobody signed in: the page sends the browser to /login, and on to the provider's form
    chat.page.wait_for_url(authorize)
    assert ("GET", gw.url + "/login") in chat.sent
    assert not any(m == "POST" and u.startswith(gw.url + "/api/") for m, u in chat.sent)
    chat.page.locator('input[name="sub"]').fill(ALICE["sub"])
    chat.page.get_by_role("button", name="Authorize").click()
    # back at the page, signed in
    chat.page.wait_for_url(gw.url + "/")
    expect(chat.page.get_by_test_id("user-name")).to_have_text(ALICE["email"])
    expect(chat.page.get_by_test_id("account")).to_contain_text("Signed in as alice@example.org")
    expect(chat.send_button).to_be_enabled()
    chat.send("gamma-question about Kotka")
    expect(chat.chats.locator(".chat-title")).to_have_text(["gamma-question about Kotka"])
    chat.shot("users_oidc_signed_in.png")
    chat.check_clean()

    # Sign out: the cookie goes, and the next load goes to sign in again
    chat.page.get_by_role("button", name="Sign out").click()
    chat.page.wait_for_url(authorize)
    assert not [c for c in chat.context.cookies(gw.url) if c["name"] == "llmcam_user"]
    with httpx.Client(base_url=gw.url) as client:
        assert client.get("/api/me").status_code == 401
