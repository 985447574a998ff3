"""A gateway restart seen from the chat page, in a real browser (Debian's Chromium): while the
gateway is down the page says it is disconnected and reconnecting; the session's notification
stream runs on meanwhile (its child actor does not need the gateway, nor the session's actor);
once a gateway is back on the same address the page reconnects by itself, clears the notice,
and shows what was sent meanwhile, once."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from actors.session.names import session_key
from actors.store import open_store
from testing.standins import Call, OpenAIServer, ToolCalls
from tests.helpers import BROWSER, Gateway, Page, make_settings, send

pytestmark = BROWSER


def test_the_page_says_it_is_disconnected_and_reconnects_by_itself(
        ray_address: str, llm: OpenAIServer, browser: Any,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    from playwright.sync_api import expect

    settings = make_settings(tmp_path_factory.mktemp("reconnect"), llm, spare_sessions=0)
    first = Gateway(settings, graceful_s=2).__enter__()
    port = first.port
    page = Page(browser, first, llm)
    task = f"watch-reconnect-{uuid.uuid4().hex[:6]}"
    marker = f"start-{uuid.uuid4().hex[:6]}"
    llm.script(marker, [ToolCalls([Call("start_notification_stream",
                                        {"task": task, "interval_seconds": 1})])])
    llm.script(task, send("before the restart"))
    second = None
    try:
        page.open()
        page.send(f"watch the harbour ({marker})")
        notifications = page.page.get_by_test_id("notifications")
        expect(notifications).to_contain_text("before the restart")
        problem = page.page.get_by_test_id("events-problem")
        expect(problem).to_be_hidden()
        sid = page.sid()

        first.__exit__(None, None, None)  # the gateway goes away (the cluster stays)
        expect(problem).to_be_visible()
        expect(problem).to_contain_text("reconnecting")
        llm.script(task, send("while the gateway was down"))
        store = open_store(settings.db_url, migrate=False)
        try:  # stored by the stream's child while no gateway runs
            deadline = time.monotonic() + 90
            while store.streams(session_key(sid))[0]["sent"] < 2:
                assert time.monotonic() < deadline, "the stream stopped with the gateway"
                time.sleep(0.2)
        finally:
            store.close()
        expect(problem).to_be_visible()

        second = Gateway(settings, port=port, graceful_s=2).__enter__()
        expect(problem).to_be_hidden()
        expect(notifications).to_contain_text("while the gateway was down")
        texts = notifications.locator(".noti-message").all_inner_texts()
        assert texts.count("before the restart") == 1
        assert texts.count("while the gateway was down") == 1
        with second.client() as c:  # its stream stops with it
            assert c.delete(f"/api/sessions/{sid}").status_code == 204
    finally:
        page.context.close()
        if second is not None:
            second.__exit__(None, None, None)
        else:
            first.__exit__(None, None, None)
