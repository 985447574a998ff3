"""A whole-cluster restart on the same PostgreSQL: `llmcam serve` with its embedded Ray (the
whole cluster) is stopped and another one started on the same database. With no request for
the session, its stream runs again (the registry's supervision, once, not twice); every session
answers whole; an `/events` listener that reconnects with Last-Event-ID sees every event once."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import psutil

from actors.session.names import session_key
from actors.store import open_store
from testing.standins import OpenAIServer
from tests.helpers import (
    Listener,
    chat,
    fresh_database,
    send,
    serve_embedded,
    start_streams,
    stream_requests,
)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(90) == 0


def sent(db: str, sid: str) -> int:
    store = open_store(db, migrate=False)
    try:
        return store.streams(session_key(sid))[0]["sent"]
    finally:
        store.close()


def stream_processes(gateway_pid: int) -> list[psutil.Process]:
    return [p for p in psutil.Process(gateway_pid).children(recursive=True)
            if p.is_running() and "NotificationActor" in " ".join(p.cmdline())]


async def test_a_whole_cluster_restart_brings_back_every_session_and_stream(
        postgres: str, llm: OpenAIServer, tmp_path: Path) -> None:
    db = fresh_database(postgres)
    env = {"LLMCAM_DB": db, "OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": "k",
           "LLMCAM_MIN_STREAM_INTERVAL": "1", "LLMCAM_CONFIRM_TOOLS": "",
           "LLMCAM_DETECTOR_GPUS": "0"}
    log = tmp_path / "serve.log"
    task = f"watch-restart-{uuid.uuid4().hex[:6]}"
    first, url = serve_embedded(tmp_path / "a", log, **env)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            sid = (await c.post("/api/sessions")).json()["session_id"]
            await chat(c, sid, "before the restart")
            llm.script(task, send("one"))
            tab = await Listener(url, sid).opened()
            try:
                [noti_id] = await start_streams(c, llm, sid, [task])
                [seen] = await tab.wait_for(1)
            finally:
                await tab.close()
        stop(first)  # the whole cluster goes: its Ray, every actor, every stream's process
    finally:
        if first.poll() is None:
            first.kill()

    llm.script(task, [*send("two"), *send("three")])
    second, url = serve_embedded(tmp_path / "b", log, **env)
    try:
        deadline = time.monotonic() + 120  # nobody asks for the session: it runs anyway
        while sent(db, sid) < 3:
            assert time.monotonic() < deadline, "the stream did not come back by itself"
            await asyncio.sleep(0.5)
        assert len(stream_processes(second.pid)) == 1

        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            history = (await c.get(f"/api/sessions/{sid}/messages")).json()
            assert [m["content"] for m in history][:2] == ["before the restart",
                                                           "echo: before the restart"]
            listing = (await c.get(f"/api/sessions/{sid}/notifications")).json()
            assert [(s["noti_id"], s["status"]) for s in listing] == [(noti_id, "running")]
            # the page's reconnect: from the last event it saw
            tab = await Listener(url, sid, last_event_id=seen["id"]).opened()
            try:
                later = await tab.wait_for(2)
            finally:
                await tab.close()
            assert [(e["id"], e["message"]) for e in later] == [(2, "two"), (3, "three")]
            # once, not twice: one schedule (a 1 s interval, the model answers at once)
            before = len(stream_requests(llm, noti_id))
            await asyncio.sleep(4.5)
            assert 2 <= len(stream_requests(llm, noti_id)) - before <= 7
            assert (await c.delete(f"/api/sessions/{sid}")).status_code == 204
        stop(second)
    finally:
        if second.poll() is None:
            second.kill()
