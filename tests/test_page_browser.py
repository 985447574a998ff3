"""The chat page in a real browser (Debian's Chromium driven by Playwright) on the real gateway:
a streamed reply, a tool call with an inline image, a notification toast, history after a
reload, stopping a stream from the panel, and not one request leaving 127.0.0.1."""

from __future__ import annotations

import re
import sqlite3
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import cv2
import httpx
import numpy as np
import pytest

from actors.session.names import session_key
from actors.store import open_store
from testing.standins import Call, DigitrafficServer, OpenAIServer, Text, ToolCalls
from tests.helpers import ARTIFACTS, BROWSER, WAIT_MS, Gateway, Gateways, serving

# a file a tool names: `files/<name>` (relative to the session) or `/api/sessions/<id>/files/<name>`
FILE_URL = re.compile(r"(?:/api/sessions/[^\s()/]+/)?files/[\w.-]+?\.(?:jpe?g|png)")

pytestmark = BROWSER


class ShowImage:
    """A scripted reply made when it is due: the first file link in the last tool result, as a
    markdown image (what a real model does with a tool's answer)."""


class PageLLM(OpenAIServer):
    def _next_reply(self, messages: list[dict[str, Any]]) -> Any:
        reply = super()._next_reply(messages)
        if isinstance(reply, ShowImage):
            found = FILE_URL.search(str(messages[-1].get("content")))
            url = found.group(0) if found else "(no file)"
            return Text(f"Here is the latest picture:\n\n![capture]({url})\n\nA **calm** harbour.")
        return reply


page_llm = serving(PageLLM)


@pytest.fixture(scope="module")
def page_gateway(gateways: Gateways, page_llm: PageLLM, digitraffic: DigitrafficServer) -> Gateway:
    return gateways(llm=page_llm, weathercam_url=digitraffic.base_url)


@pytest.fixture()
def browser_page(browser: Any, page_gateway: Gateway) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 860}, color_scheme="light")
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    requests: list[str] = []  # every URL the page asks for
    page.on("request", lambda request: requests.append(request.url))
    try:
        yield page, requests
    finally:
        context.close()


def jpeg() -> bytes:
    """A small harbour-ish test picture."""
    image = np.zeros((360, 640, 3), np.uint8)
    image[:] = (200, 150, 90)
    image[220:] = (120, 80, 30)
    cv2.rectangle(image, (260, 180), (420, 240), (255, 255, 255), -1)
    cv2.putText(image, "llmcam test frame", (150, 110), cv2.FONT_HERSHEY_SIMPLEX, 1.2,
                (255, 255, 255), 2)
    ok, data = cv2.imencode(".jpg", image)
    assert ok
    return data.tobytes()


def give_session_a_picture(gateway: Gateway, llm: PageLLM, sid: str, send: Any) -> bool:
    """The session needs a capture: through the camera tool where it exists (then True),
    else written into the store the way the session's own files are."""
    base = gateway.url
    tools = {t["function"]["name"] for t in httpx.get(f"{base}/api/sessions/{sid}/tools").json()}
    used_camera = "cap" in tools
    if used_camera:
        marker = f"snap-{uuid.uuid4().hex[:6]}"
        llm.script(marker, [ToolCalls([Call("cap", {"key": "Porvoo"})]), Text("Captured.")])
        send(f"Take a picture in Porvoo ({marker})")
    files = httpx.get(f"{base}/api/sessions/{sid}/files").json()
    if any(f["kind"] == "capture" for f in files):
        return used_camera
    key = session_key(sid)
    with sqlite3.connect(gateway.settings.db_url) as db:
        (epoch,) = db.execute("SELECT epoch FROM sessions WHERE key=?", (key,)).fetchone()
    store = open_store(gateway.settings.db_url)
    try:
        store.put_file(key, epoch, "cap_2026.11.23_12.00.00_Porvoo.jpg", "capture", jpeg())
    finally:
        store.close()
    return used_camera


def test_chat_page_end_to_end(page_gateway: Gateway, page_llm: PageLLM, browser_page: Any) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=WAIT_MS)
    (page, requests), base = browser_page, page_gateway.url
    page.goto(base + "/")
    expect(page.get_by_role("button", name="Send")).to_be_enabled()
    sid = next(c["value"] for c in page.context.cookies() if c["name"] == "llmcam_session")
    box = page.get_by_label("Message")

    def send(text: str) -> None:
        count = page.locator('[data-role="assistant"]').count()
        box.fill(text)
        page.get_by_role("button", name="Send").click()
        expect(page.locator('[data-role="assistant"]')).to_have_count(count + 1)
        expect(page.get_by_role("button", name="Send")).to_be_enabled()

    # 1. a streamed reply: the bubble grows token by token
    page.evaluate("""() => {
        window.__sizes = [];
        new MutationObserver(() => {
            const b = document.querySelector('[data-role="assistant"]');
            if (b) window.__sizes.push(b.textContent.length);
        }).observe(document.getElementById('messages'),
                   {childList: true, subtree: true, characterData: true});
    }""")
    page_llm.chunk_delay = 0.05
    words = "the harbour camera shows calm water and two moored boats near the pier " * 2
    page_llm.script("hello-page", [Text(words.strip())])
    send("hello-page, what do you see?")
    page_llm.chunk_delay = 0.0
    expect(page.locator('[data-role="user"]').first).to_have_text("hello-page, what do you see?")
    expect(page.locator('[data-role="assistant"]').first).to_have_text(words.strip())
    sizes = page.evaluate("window.__sizes")
    assert len({s for s in sizes if 0 < s < len(words.strip())}) >= 3, sizes

    # 2. a tool call and the picture it finds, inline
    used_camera = give_session_a_picture(page_gateway, page_llm, sid, send)
    page_llm.script("latest-picture", [ToolCalls([Call("list_image_files", {})]), ShowImage()])
    send("Show me the latest-picture please")
    tool = page.locator('[data-role="tool"][data-tool="list_image_files"]')
    expect(tool).to_have_count(1)
    expect(tool.locator(".tool-result")).to_contain_text("cap_")
    image = page.locator('[data-role="assistant"] img').last
    expect(image).to_be_visible()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                           arg=image.element_handle())
    assert image.get_attribute("src").startswith(f"/api/sessions/{sid}/files/cap_")

    # 3. a notification stream started from the chat; its notification pops up
    task = f"watch-the-harbour-{uuid.uuid4().hex[:6]}"
    page_llm.script(task, [ToolCalls([Call("send_notification",
                                           {"msg": "A boat is entering the harbour"})]),
                           Text("Sent.")])
    page_llm.script("start-watching", [ToolCalls([Call(
        "start_notification_stream", {"task": task, "interval_seconds": 1})])])
    send("Please start-watching the harbour for boats")
    toast = page.get_by_test_id("toast")
    expect(toast.filter(has_text="A boat is entering the harbour")).to_be_visible()
    expect(page.get_by_test_id("notifications")).to_contain_text("A boat is entering")
    noti_id = httpx.get(f"{base}/api/sessions/{sid}/notifications").json()[0]["noti_id"]
    stop = page.get_by_role("button", name=f"Stop stream {noti_id[:8]}")
    expect(stop).to_be_visible()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chat_page.png"), full_page=True)

    # 4. a reload shows the history, the received notification, and no stale toast
    page.reload()
    expect(page.locator('[data-role="user"]')).to_have_count(4 if used_camera else 3)
    expect(page.locator('[data-role="tool"][data-tool="list_image_files"]')).to_have_count(1)
    expect(page.locator('[data-role="tool"][data-tool="start_notification_stream"]')) \
        .to_contain_text("Notification stream started with ID")
    expect(page.locator('[data-role="assistant"] img')).to_have_count(1)
    expect(page.get_by_test_id("notifications")).to_contain_text("A boat is entering")
    assert page.get_by_test_id("toast").count() == 0  # a replayed notification is not news
    expect(page.get_by_test_id("streams")).to_contain_text(noti_id[:8])

    # 5. the stream's Stop button stops it
    page.get_by_role("button", name=f"Stop stream {noti_id[:8]}").click()
    expect(page.get_by_test_id("streams").locator(".badge")).to_have_text("stopped")
    expect(page.get_by_role("button", name=f"Stop stream {noti_id[:8]}")).to_have_count(0)
    assert httpx.get(f"{base}/api/sessions/{sid}/notifications").json()[0]["status"] == \
        "stopped"

    # nothing left 127.0.0.1
    hosts = {urlsplit(url).netloc for url in requests if not url.startswith("data:")}
    assert hosts == {urlsplit(base).netloc}, requests
