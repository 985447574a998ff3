"""Confirming a tool call in the chat page (API.md "Confirming a tool call"), in a real browser
(Debian's Chromium through Playwright) on the real gateway under its Content-Security-Policy:
the call is shown with its arguments as text, Allow runs it, Deny does not, a reload mid-turn
replays the prompt (with its buttons while it waits, without them once answered), and an answer
that comes too late says so."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from actors.confirm import DECLINED
from testing.standins import Call, OpenAIServer, Text, ToolCalls
from tests.helpers import BROWSER, SLOW, STORY, Gateway, Gateways, Page

pytestmark = BROWSER

EVIL = "<img src=x onerror=alert(1)>"
STARTED = "Notification stream started with ID"


@pytest.fixture(scope="module")
def confirm_gateway(gateways: Gateways) -> Gateway:
    return gateways(spare_sessions=1, confirm_seconds=30,
                    confirm_tools=["start_notification_stream", "add_function_tools"])


class ConfirmPage(Page):
    """The chat page, with the dialogs it opened (none expected) and what a test asks of a
    confirm prompt."""

    def __init__(self, browser: Any, gateway: Gateway, llm: OpenAIServer) -> None:
        super().__init__(browser, gateway, llm)
        self.dialogs: list[str] = []
        self.sids: set[str] = set()

        def on_dialog(dialog: Any) -> None:
            self.dialogs.append(dialog.message)
            dialog.dismiss()

        self.page.on("dialog", on_dialog)

    def open(self) -> None:
        super().open()
        self.sids.add(self.sid())

    @property
    def prompt(self) -> Any:
        return self.role("confirm")

    def ask_to_watch(self, task: str, after: list[Any]) -> None:
        """The user's message; the stand-in model calls start_notification_stream with `task`,
        then answers with `after`."""
        marker = f"watch-{uuid.uuid4().hex[:8]}"
        # The stream's own rounds (they start before the tool answers) have their own replies,
        # so that they never take the chat's: only their first message says what they are.
        self.llm.script("You are llmcam's notification stream",
                        [Text("Nothing to report.") for _ in range(20)])
        self.llm.script(marker, [ToolCalls([Call("start_notification_stream",
                                                 {"task": task, "interval_seconds": 5})]),
                                 *after])
        self.type_and_send(f"please watch the harbour ({marker})")

    def start(self, task: str, after: list[Any]) -> str:
        """Open the page, ask to watch `task` and see the call's prompt: the session's ID."""
        self.open()
        sid = self.sid()
        self.ask_to_watch(task, after)
        self.see_prompt(task)
        return sid

    def check_clean(self) -> None:
        """No dialog opened, besides what every page test checks."""
        assert self.dialogs == []
        super().check_clean()

    def see_prompt(self, task: str) -> None:
        """The call is shown, waiting, with its arguments as text (and nothing of them ran)."""
        from playwright.sync_api import expect

        expect(self.prompt).to_have_count(1)
        expect(self.prompt.locator(".tool-name")).to_have_text("start_notification_stream")
        args = self.prompt.get_by_test_id("confirm-args")
        expect(args).to_contain_text(EVIL)
        # pretty-printed JSON, as text
        assert json.loads(args.inner_text()) == {"task": task, "interval_seconds": 5}
        assert "\n" in args.inner_text() and '"task": ' in args.inner_text()
        expect(self.prompt.get_by_role("button", name="Allow")).to_be_enabled()
        expect(self.prompt.get_by_role("button", name="Deny")).to_be_enabled()
        assert self.page.locator("#messages img").count() == 0
        assert self.page.locator("[onerror]").count() == 0
        assert self.dialogs == []

    def watch_buttons(self) -> None:
        """Record, at the click, whether both buttons were disabled by the page's handler."""
        self.page.evaluate("""() => {
            const prompt = document.querySelector('[data-role="confirm"].waiting');
            const buttons = [...prompt.querySelectorAll('button')];
            window.__disabledAtClick = null;
            for (const b of buttons) b.addEventListener('click', () => {
                window.__disabledAtClick = buttons.map((x) => x.disabled);
            });
        }""")

    def streams(self, sid: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.base}/api/sessions/{sid}/notifications")
        assert response.status_code == 200, response.text
        return response.json()

    def close(self) -> None:
        super().close()
        for sid in self.sids:  # the streams started go with their sessions
            assert httpx.delete(f"{self.base}/api/sessions/{sid}").status_code in (204, 404)


@pytest.fixture()
def chat(browser: Any, confirm_gateway: Gateway, llm: OpenAIServer) -> Iterator[ConfirmPage]:
    llm.reset()
    with ConfirmPage(browser, confirm_gateway, llm) as page:
        yield page


def tool_block(chat: Page) -> Any:
    return chat.page.locator('[data-role="tool"][data-tool="start_notification_stream"]')


def test_allow_runs_the_call_and_a_reload_shows_it_answered(chat: ConfirmPage) -> None:
    from playwright.sync_api import expect

    task = f"Tell me when a boat arrives {EVIL} ({uuid.uuid4().hex[:6]})"
    sid = chat.start(task, [Text("Watching now. " + STORY, chunk_delay=SLOW)])
    expect(chat.page.get_by_test_id("activity")).to_have_text("Waiting for your answer…")
    assert chat.streams(sid) == []  # nothing runs before the user allows it
    chat.shot("confirm_prompt.png")

    chat.watch_buttons()
    chat.prompt.get_by_role("button", name="Allow").click()
    assert chat.page.evaluate("window.__disabledAtClick") == [True, True]
    expect(chat.prompt.get_by_test_id("confirm-status")).to_have_text("Allowed")
    expect(tool_block(chat).locator(".tool-result")).to_contain_text(STARTED)
    expect(chat.prompt.locator("button")).to_have_count(0)  # the call has its result
    expect(chat.role("assistant").last).to_contain_text("Line 1 of")
    chat.shot("confirm_allowed.png")

    # a reload mid-reply replays the turn from its start: the prompt, answered, no buttons
    chat.page.reload()
    expect(chat.prompt).to_have_count(1)
    expect(tool_block(chat).locator(".tool-result")).to_contain_text(STARTED)
    expect(chat.prompt.locator("button")).to_have_count(0)
    expect(chat.prompt.get_by_test_id("confirm-status")).to_have_text("Allowed")
    expect(chat.send_button).to_be_enabled()
    expect(chat.role("assistant").last).to_contain_text("Line 11 of")
    streams = chat.streams(sid)
    assert [s["status"] for s in streams] == ["running"]
    expect(chat.page.get_by_test_id("streams").locator("li")).to_have_count(1)
    assert chat.page.locator("#messages img").count() == 0
    chat.check_clean()


def test_deny_does_not_run_the_call(chat: ConfirmPage) -> None:
    from playwright.sync_api import expect

    task = f"Count the ferries {EVIL}"
    sid = chat.start(task, [Text("Alright, I will not watch.")])
    chat.watch_buttons()
    chat.prompt.get_by_role("button", name="Deny").click()
    assert chat.page.evaluate("window.__disabledAtClick") == [True, True]
    expect(chat.prompt.get_by_test_id("confirm-status")).to_have_text("Denied")
    expect(tool_block(chat).locator(".tool-result")).to_have_text(DECLINED)
    expect(chat.prompt.locator("button")).to_have_count(0)
    expect(chat.role("assistant").last).to_have_text("Alright, I will not watch.")
    expect(chat.send_button).to_be_enabled()
    assert chat.streams(sid) == []
    chat.shot("confirm_denied.png")
    chat.check_clean()


def test_an_answer_too_late_says_the_call_no_longer_waits(chat: ConfirmPage) -> None:
    from playwright.sync_api import expect

    task = f"Watch the bridge {EVIL}"
    sid = chat.start(task, [Text("Not watching, then.")])
    # a reload while the call waits: the prompt again, still with its buttons
    chat.page.reload()
    chat.see_prompt(task)
    call_id = chat.prompt.get_attribute("data-call-id")
    assert call_id
    # the call no longer waits when the page's answer arrives (timed out, answered elsewhere)
    chat.page.route("**/turn/confirm", lambda route: route.fulfill(
        status=404, content_type="application/json",
        body=json.dumps({"detail": "no tool call with that call_id waits for an answer"})))
    chat.prompt.get_by_role("button", name="Allow").click()
    status = chat.prompt.get_by_test_id("confirm-status")
    expect(status).to_have_text("This call is no longer waiting")
    expect(chat.prompt.locator("button")).to_have_count(0)
    chat.page.unroute("**/turn/confirm")
    # another tab declines it: the page learns so from the call's result
    answer = httpx.post(f"{chat.base}/api/sessions/{sid}/turn/confirm",
                        json={"call_id": call_id, "allow": False})
    assert answer.status_code == 204, answer.text
    expect(tool_block(chat).locator(".tool-result")).to_have_text(DECLINED)
    expect(status).to_contain_text("This call is no longer waiting")
    expect(status).to_contain_text("Not run")
    expect(chat.role("assistant").last).to_have_text("Not watching, then.")
    expect(chat.send_button).to_be_enabled()
    assert chat.streams(sid) == []
    chat.check_clean()
