"""A database written before the modules moved (actors/session/, actors/detector/, 2026-12-06)
still serves its session: messages, the function tools it added (stored by dotted path, here
`tests.sample_tools.*`), its files, and a retried turn that was finished then.

tests/data/before-house.sqlite3 was written by the code of commit 2264e30 (before the move)
through its own store API: a session whose ID is SID, one finished turn `turn-1` that added the
service `math`, and one uploaded PNG. No stored format names a module that moved (the built-in
tools stay in actors/tools/), so no migration nor alias is needed; this test is what says so.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import ray

from actors.session.names import NAMESPACE, actor_name
from testing.standins import Call, ToolCalls
from tests.helpers import Gateway, make_settings

SID = "stored-before-the-house-move-0123456789abcdef"
BEFORE = Path(__file__).parent / "data" / "before-house.sqlite3"


def test_a_database_written_before_the_move_still_serves(ray_address: str, llm,
                                                         tmp_path: Path) -> None:
    db = tmp_path / "llmcam.sqlite3"
    shutil.copy(BEFORE, db)
    with Gateway(make_settings(tmp_path, llm, db=str(db))) as gw, gw.client() as c:
        messages = c.get(f"/api/sessions/{SID}/messages")
        assert messages.status_code == 200, messages.text
        assert [m["role"] for m in messages.json()] == ["user", "assistant", "tool", "assistant"]
        assert messages.json()[-1]["content"] == "Added add_numbers and shout."

        names = {t["function"]["name"] for t in c.get(f"/api/sessions/{SID}/tools").json()}
        assert {"add_numbers", "shout"} <= names  # restored from their dotted paths

        files = c.get(f"/api/sessions/{SID}/files").json()
        assert [f["name"] for f in files] == ["upload_2026.12.06_05.00.00_before.png"]
        image = c.get(f"/api/sessions/{SID}/files/upload_2026.12.06_05.00.00_before.png")
        assert image.status_code == 200 and image.content.startswith(b"\x89PNG")

        llm.script("use the stored tool", [ToolCalls([Call("add_numbers", {"a": 2, "b": 3})])])
        reply = c.post(f"/api/sessions/{SID}/messages", json={"content": "use the stored tool"})
        assert reply.status_code == 200, reply.text
        results = [m["content"] for m in reply.json()["messages"] if m["role"] == "tool"]
        assert results == ["5"]  # the restored function ran

        # A retry of the turn finished before the move (the gateway retries by turn ID):
        # answered from the store, recorded nothing twice.
        count = len(c.get(f"/api/sessions/{SID}/messages").json())
        actor = ray.get_actor(actor_name(SID), namespace=NAMESPACE)
        items = [ray.get(ref) for ref in actor.chat.remote("turn-1", "add my math functions")]
        assert items[-1]["event"] == "done", items
        assert items[-1]["data"]["reply"] == "Added add_numbers and shout."
        assert len(c.get(f"/api/sessions/{SID}/messages").json()) == count
