"""The API's /docs page (Swagger UI) in a real browser (Debian's Chromium through Playwright) on
the real gateway: it renders the operations, runs one, loads nothing from any other host (it
works offline), and runs under the same strict Content-Security-Policy as the chat page with
nothing reported against it."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from gateway.security import CSP
from tests.helpers import ARTIFACTS, NEEDS_CHROMIUM, WATCH, Gateway

WAIT_MS = 60_000


def test_docs_assets_come_from_the_gateway(client: httpx.Client) -> None:
    """Swagger UI 5 (4.x cannot show OpenAPI 3.1), our start script, and nothing else."""
    bundle = client.get("/docs/assets/swagger-ui-bundle.js")
    assert bundle.status_code == 200
    assert "javascript" in bundle.headers["content-type"]
    version = re.search(r'PACKAGE_VERSION:"(\d+)\.\d+\.\d+"', bundle.text)
    assert version and version.group(1) == "5", "Swagger UI 5.x expected in fastapi-offline"
    assert client.get("/docs/assets/swagger-ui.css").headers["content-type"].startswith("text/css")
    start = client.get("/docs/assets/start.js")
    assert start.status_code == 200 and "SwaggerUIBundle(" in start.text
    for name in ("redoc.standalone.js", "index.html", "..%2Fdocs%2Findex.html", "nope.js"):
        assert client.get(f"/docs/assets/{name}").status_code == 404, name
    assert client.get("/redoc").status_code == 404
    assert client.get("/docs/oauth2-redirect").status_code == 404
    assert client.get("/openapi.json").json()["openapi"].startswith("3.1")


@pytest.mark.browser
@NEEDS_CHROMIUM
def test_docs_render_offline_under_the_strict_csp(browser: Any, gateway: Gateway) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=WAIT_MS)
    context = browser.new_context(viewport={"width": 1280, "height": 900}, color_scheme="light")
    context.add_init_script(WATCH)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    requests: list[str] = []
    console: list[str] = []
    errors: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        response = page.goto(gateway.url + "/docs")
        assert response is not None and response.status == 200
        assert response.headers["content-security-policy"] == CSP

        # the operations list, from /openapi.json
        expect(page.get_by_role("heading", level=1)).to_contain_text("llmcam")
        expect(page.locator('.opblock-summary-path[data-path="/healthz"]')).to_have_count(1)
        expect(page.locator('.opblock-summary-path[data-path="/api/sessions"]').first
               ).to_be_visible()
        # and one run from the page: GET /healthz answers 200
        page.locator('.opblock-summary-path[data-path="/healthz"]').click()
        block = page.locator(".opblock.is-open")
        block.get_by_role("button", name="Try it out").click()
        block.get_by_role("button", name="Execute").click()
        expect(block.locator(".live-responses-table tbody .response-col_status").first
               ).to_have_text("200")
        expect(block.locator(".live-responses-table")).to_contain_text('"status": "ok"')

        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "docs_page.png"), full_page=True)

        assert page.evaluate("window.__violations") == [], page.evaluate("window.__violations")
        assert [m for m in console if "Content Security Policy" in m] == []
        assert [m for m in console if m.startswith("error:")] == []
        assert errors == []
        ours = urlsplit(gateway.url).netloc
        away = [u for u in requests
                if not u.startswith(("data:", "blob:")) and urlsplit(u).netloc != ours]
        assert away == [], away
        assert any(u.endswith("/openapi.json") for u in requests)
        assert any(u.endswith("/docs/assets/swagger-ui-bundle.js") for u in requests)
    finally:
        context.close()
