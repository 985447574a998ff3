"""The chat page people expect, in a real browser (Debian's Chromium through Playwright) on the
real gateway, under the gateway's own Content-Security-Policy: a turn survives a reload, Stop
ends a turn, Markdown renders (and raw HTML in a reply does nothing), a user's image goes in by
the paperclip or by drag-and-drop, a tool's image shows as its result arrives, and the browser
keeps a list of its chats to switch between and forget."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from testing.standins import Call, DigitrafficServer, OpenAIServer, Text, ToolCalls
from tests.helpers import BROWSER, SLOW, STORY, Gateway, Gateways, Page, serving

pytestmark = BROWSER

chat_llm = serving(OpenAIServer)


@pytest.fixture(scope="module")
def chat_gateway(gateways: Gateways, chat_llm: OpenAIServer,
                 digitraffic: DigitrafficServer) -> Gateway:
    return gateways(llm=chat_llm, weathercam_url=digitraffic.base_url, spare_sessions=1)


@pytest.fixture()
def chat(browser: Any, chat_gateway: Gateway, chat_llm: OpenAIServer) -> Iterator[Page]:
    chat_llm.reset()
    with Page(browser, chat_gateway, chat_llm) as page:
        yield page


def jpeg(size: tuple[int, int] = (480, 320)) -> bytes:
    image = Image.new("RGB", size, (70, 130, 180))
    image.paste((240, 240, 240), (size[0] // 3, size[1] // 2, size[0] // 3 * 2, size[1] - 20))
    out = io.BytesIO()
    image.save(out, "JPEG")
    return out.getvalue()


def test_a_reload_mid_turn_shows_the_same_reply(chat: Page) -> None:
    from playwright.sync_api import expect

    chat.open()
    chat.llm.script("tell-a-story", [Text(STORY, chunk_delay=SLOW)])
    chat.type_and_send("Please tell-a-story about the harbour")
    expect(chat.role("assistant").first).to_contain_text("Line 2 of")
    expect(chat.stop_button).to_be_visible()
    chat.page.reload()
    # the turn from its start, still streaming, with the Stop button
    expect(chat.role("user")).to_have_count(1)
    expect(chat.role("user")).to_have_text("Please tell-a-story about the harbour")
    expect(chat.role("assistant").first).to_contain_text("Line 0 of")
    expect(chat.stop_button).to_be_visible()
    assert "Line 11" not in chat.role("assistant").first.inner_text()  # still streaming
    chat.shot("reload_mid_turn.png")
    # then done: the same reply, once
    expect(chat.send_button).to_be_enabled()
    expect(chat.role("assistant")).to_have_count(1)
    expect(chat.role("assistant")).to_have_text(STORY)
    expect(chat.stop_button).to_be_hidden()
    chat.shot("reload_mid_turn_done.png")
    # and a reload after the turn shows it from the history, once
    chat.page.reload()
    expect(chat.role("assistant")).to_have_text(STORY)
    expect(chat.role("user")).to_have_count(1)
    chat.check_clean()


def test_stop_ends_the_turn_and_the_next_one_answers(chat: Page) -> None:
    from playwright.sync_api import expect

    chat.open()
    chat.llm.script("ramble-on", [Text(STORY * 2, chunk_delay=SLOW)])
    chat.type_and_send("ramble-on please")
    expect(chat.role("assistant").first).to_contain_text("Line 1 of")
    chat.stop_button.click()
    stopped = chat.page.locator('[data-role="assistant"][data-stopped="true"]')
    expect(stopped).to_have_count(1)
    expect(stopped.locator(".stopped-note")).to_have_text("Stopped")
    expect(chat.send_button).to_be_enabled()
    expect(chat.stop_button).to_be_hidden()
    partial = stopped.inner_text()
    assert "Line 1 of" in partial and "Line 11 of" not in partial
    chat.shot("stopped_turn.png")

    chat.send("and-then a short one")
    expect(chat.role("assistant").last).to_have_text("echo: and-then a short one")
    # the stopped reply stays, marked, after a reload
    chat.page.reload()
    expect(stopped).to_have_count(1)
    expect(stopped).to_contain_text("Line 1 of")
    assert "_(stopped)_" not in stopped.inner_text()
    expect(chat.role("assistant").last).to_have_text("echo: and-then a short one")
    chat.check_clean()


MARKDOWN = """## Boats in the harbour

- a sailing boat
- a **ferry**
- two kayaks

1. first
2. second

| boat | count |
|------|------:|
| ferry | 1 |
| kayak | 2 |

```python
print("hello harbour")
```

See [the docs](https://example.com/docs) or [this file](files/{name}).
![the capture](files/{name}) ![elsewhere](http://127.0.0.2:9/tracker.png)

<script>window.__pwned = 'script'</script>
<img src="x" onerror="window.__pwned = 'onerror'">
<b onmouseover="window.__pwned = 'hover'">bold?</b>
[click me](javascript:window.__pwned='link')
"""


def test_markdown_renders_and_raw_html_does_nothing(chat: Page) -> None:
    from playwright.sync_api import expect

    chat.open()
    sid = chat.sid()
    name = httpx.post(f"{chat.base}/api/sessions/{sid}/files",
                      files={"file": ("capture.jpg", jpeg(), "image/jpeg")}).json()["name"]
    chat.llm.script("show-markdown", [Text(MARKDOWN.replace("{name}", name))])
    chat.send("show-markdown now")
    reply = chat.role("assistant").last
    expect(reply.locator("h2")).to_have_text("Boats in the harbour")
    expect(reply.locator("ul > li")).to_have_count(3)
    expect(reply.locator("ol > li")).to_have_count(2)
    expect(reply.locator("ul strong")).to_have_text("ferry")
    expect(reply.locator("table th")).to_have_text(["boat", "count"])
    expect(reply.locator("table tbody tr")).to_have_count(2)
    expect(reply.locator("pre code")).to_have_text('print("hello harbour")')
    docs = reply.get_by_role("link", name="the docs")
    assert docs.get_attribute("href") == "https://example.com/docs"
    assert docs.get_attribute("target") == "_blank" and docs.get_attribute("rel") == "noopener"
    file_link = reply.get_by_role("link", name="this file")
    assert file_link.get_attribute("href") == f"/api/sessions/{sid}/files/{name}"
    images = reply.locator("img")
    expect(images).to_have_count(1)  # the session's file only; the other site's is text
    assert images.get_attribute("src") == f"/api/sessions/{sid}/files/{name}"
    chat.page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                                arg=images.element_handle())
    assert "[image: elsewhere]" in reply.inner_text()
    # raw HTML is shown as text, and none of it ran
    text = reply.inner_text()
    assert "<script>window.__pwned = 'script'</script>" in text
    assert 'onerror="window.__pwned' in text
    assert reply.locator("script, [onerror], [onmouseover], iframe").count() == 0
    assert reply.locator('a[href^="javascript:"]').count() == 0
    chat.page.mouse.move(300, 300)
    assert chat.page.evaluate("window.__pwned") is None
    # the code's Copy button copies it
    chat.context.grant_permissions(["clipboard-read", "clipboard-write"])
    copy = reply.get_by_role("button", name="Copy code")
    copy.click()
    expect(copy).to_have_text("Copied")
    assert chat.page.evaluate("navigator.clipboard.readText()") == 'print("hello harbour")'
    chat.shot("markdown.png")
    # the same after a reload, from the history
    chat.page.reload()
    expect(chat.role("assistant").last.locator("table th")).to_have_count(2)
    expect(chat.role("assistant").last.locator("pre code")).to_have_count(1)
    assert chat.page.evaluate("window.__pwned") is None
    assert not any("127.0.0.2" in u for u in chat.requests)
    chat.check_clean()


def test_upload_by_paperclip_and_drop_and_a_tool_image(chat: Page) -> None:
    from playwright.sync_api import expect

    chat.open()
    sid = chat.sid()
    # the paperclip: a JPEG goes into the session's files, shown as a chip
    chat.page.locator("#file-input").set_input_files(
        files=[{"name": "harbour photo.jpg", "mimeType": "image/jpeg", "buffer": jpeg()}])
    chip = chat.page.get_by_test_id("attachments").locator(".chip[data-file]")
    expect(chip).to_have_count(1)
    name = chip.get_attribute("data-file")
    assert name.startswith("upload_") and name.endswith(".jpg")
    files = httpx.get(f"{chat.base}/api/sessions/{sid}/files").json()
    assert [(f["name"], f["kind"]) for f in files] == [(name, "upload")]
    # drag-and-drop: a PNG from the desktop
    png = io.BytesIO()
    Image.new("RGB", (200, 120), (200, 60, 60)).save(png, "PNG")
    chat.page.evaluate("""([data, name]) => {
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], name, {type: 'image/png'}));
        const chat = document.getElementById('chat');
        for (const type of ['dragenter', 'dragover', 'drop']) {
            chat.dispatchEvent(new DragEvent(type, {dataTransfer: dt, bubbles: true,
                                                    cancelable: true}));
        }
    }""", [base64.b64encode(png.getvalue()).decode(), "dropped.png"])
    expect(chip).to_have_count(2)
    dropped = chip.nth(1).get_attribute("data-file")
    assert dropped.endswith(".jpg") and "dropped" in dropped
    chat.shot("upload_attached.png")
    # what is not an image is refused, with a clear message
    chat.page.locator("#file-input").set_input_files(
        files=[{"name": "fake.png", "mimeType": "image/png", "buffer": b"not a picture"}])
    expect(chat.page.get_by_test_id("toast").filter(has_text="fake.png is not a JPEG or PNG"))\
        .to_be_visible()
    expect(chip).to_have_count(2)

    # the message names both files; the model sees their names
    chat.llm.script("look-at-mine", [Text("Nice pictures.")])
    chat.send("look-at-mine please")
    user = chat.role("user").last
    expect(user.locator(".user-text")).to_have_text("look-at-mine please")
    expect(user.locator("img")).to_have_count(2)
    for img in (user.locator("img").nth(0), user.locator("img").nth(1)):
        chat.page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                                    arg=img.element_handle())
    expect(chip).to_have_count(0)
    asked = [r for r in chat.llm.requests if "look-at-mine" in json.dumps(r["messages"])][0]
    content = asked["messages"][-1]["content"]
    assert f"files/{name}" in content and f"files/{dropped}" in content

    # a tool that makes an image: the page says it runs, and shows the image with its result
    chat.page.evaluate("""() => {
        window.__activity = [];
        new MutationObserver(() => {
            const a = document.querySelector('[data-testid="activity"]');
            if (a && a.isConnected) window.__activity.push(a.textContent);
        }).observe(document.getElementById('messages'),
                   {childList: true, subtree: true, characterData: true});
    }""")
    chat.llm.script("snap-porvoo", [ToolCalls([Call("cap", {"key": "Porvoo"})]),
                                    Text("Here it is.", chunk_delay=0.5)])
    chat.type_and_send("snap-porvoo for me")
    tool = chat.page.locator('[data-role="tool"][data-tool="cap"]')
    picture = tool.get_by_test_id("tool-images").locator("img")
    expect(picture).to_have_count(1)
    expect(chat.role("assistant").last).not_to_have_text("Here it is.")  # result came first
    chat.page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                                arg=picture.element_handle())
    assert picture.get_attribute("src").startswith(f"/api/sessions/{sid}/files/cap_")
    assert "Running cap…" in chat.page.evaluate("window.__activity")
    expect(chat.send_button).to_be_enabled()
    chat.shot("tool_image.png")
    chat.check_clean()


def test_your_chats_switch_and_forget(chat: Page) -> None:
    from playwright.sync_api import expect

    chat.open()
    first = chat.sid()
    chat.send("alpha-question about Porvoo")
    chat.page.get_by_role("button", name="New chat").click()
    expect(chat.role("user")).to_have_count(0)
    expect(chat.page.get_by_test_id("chat")).to_have_count(2)
    second = chat.sid()
    assert second != first
    chat.send("beta-question about Oulu")
    items = chat.page.get_by_test_id("chat")
    expect(items.locator(".chat-title")).to_have_text(["beta-question about Oulu",
                                                       "alpha-question about Porvoo"])
    expect(items.locator(".chat-date").first).not_to_be_empty()
    expect(items.nth(0)).to_have_class("chat-item current")
    chat.shot("chats_list.png")

    # switching shows each chat's own history
    items.nth(1).locator(".chat-open").click()
    expect(chat.role("user")).to_have_text(["alpha-question about Porvoo"])
    expect(chat.role("assistant")).to_have_text(["echo: alpha-question about Porvoo"])
    assert chat.sid() == first
    items.nth(0).locator(".chat-open").click()
    expect(chat.role("user")).to_have_text(["beta-question about Oulu"])
    expect(chat.role("assistant")).to_have_text(["echo: beta-question about Oulu"])
    # a reload opens the chat that was open, and still lists both
    chat.page.reload()
    expect(chat.role("user")).to_have_text(["beta-question about Oulu"])
    expect(items).to_have_count(2)

    # forget the first one, deleting it on the server
    items.nth(1).get_by_role("button", name="Forget chat: alpha-question about Porvoo").click()
    dialog = chat.page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    dialog.get_by_label("Also delete it on the server").check()
    chat.shot("forget_dialog.png")
    dialog.get_by_role("button", name="Forget").click()
    expect(items).to_have_count(1)
    assert httpx.get(f"{chat.base}/api/sessions/{first}").status_code == 404
    # forget the open one, keeping it on the server: a fresh chat takes its place
    items.nth(0).get_by_role("button", name="Forget chat: beta-question about Oulu").click()
    dialog.get_by_role("button", name="Forget").click()
    expect(chat.role("user")).to_have_count(0)
    expect(items).to_have_count(1)
    expect(items.locator(".chat-title")).to_have_text("New chat")
    assert chat.sid() not in (first, second)
    assert httpx.get(f"{chat.base}/api/sessions/{second}").status_code == 200
    assert [c["id"] for c in chat.chats()] == [chat.sid()]
    chat.check_clean()
