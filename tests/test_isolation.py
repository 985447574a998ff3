"""Many sessions at once: nothing of one is visible to another."""

from __future__ import annotations

import asyncio

import httpx

from testing.standins import Call, ToolCalls
from tests.helpers import Gateway

SESSIONS = 30


async def _one_user(c: httpx.AsyncClient, i: int, llm) -> tuple[str, int]:
    sid = (await c.post("/api/sessions")).json()["session_id"]
    llm.script(f"user-{i}-adds", [ToolCalls([Call("add_function_tools", {
        "service_name": f"svc{i}", "function_names": ["tests.sample_tools.add_numbers"]})])])
    for turn in range(2):
        r = await c.post(f"/api/sessions/{sid}/messages",
                         json={"content": f"user-{i}-says-{turn}"})
        assert r.status_code == 200, r.text
        assert r.json()["reply"] == f"echo: user-{i}-says-{turn}"
    r = await c.post(f"/api/sessions/{sid}/messages", json={"content": f"user-{i}-adds"})
    assert r.status_code == 200, r.text
    return sid, i


async def test_concurrent_sessions_are_isolated(gateway: Gateway, fresh_llm) -> None:
    async with gateway.async_client(limits=httpx.Limits(max_connections=100)) as c:
        results = await asyncio.gather(*(_one_user(c, i, fresh_llm) for i in range(SESSIONS)))
        for sid, i in results:
            history = (await c.get(f"/api/sessions/{sid}/messages")).json()
            texts = " ".join(str(m.get("content")) for m in history)
            assert f"user-{i}-says-0" in texts and f"user-{i}-says-1" in texts
            others = [j for j in range(SESSIONS) if j != i and f"user-{j}-" in texts]
            assert not others, f"session {i} sees messages of sessions {others}"
            tools = (await c.get(f"/api/sessions/{sid}/tools")).json()
            services = [t for t in tools if t["function"]["name"] == "add_numbers"]
            assert len(services) == 1  # its own added service, exactly once
        # a session that added nothing has no added tools
        sid = (await c.post("/api/sessions")).json()["session_id"]
        names = {t["function"]["name"] for t in (await c.get(f"/api/sessions/{sid}/tools")).json()}
        assert "add_numbers" not in names
