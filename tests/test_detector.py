"""The detector deployment: batches across sessions, images of any size in one batch, one bad
image failing alone, the batch math, and a redeploy that changes nothing."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import cv2
import httpx
import numpy as np
import pytest

from actors.detector import client as detector
from actors.detector import replica
from testing.standins import Call, DigitrafficServer, OpenAIServer, ToolCalls
from tests.helpers import Gateway, jpeg_frame

GATEWAY = "tools"  # conftest: the tool tests' gateway

SESSIONS = 8
CALLS_PER_SESSION = 2


@pytest.fixture(scope="module")
def handle(gateway: Gateway) -> Any:
    """The deployment's handle, once the gateway's background deploy has finished."""
    deadline = time.monotonic() + 180
    while (found := detector._ready_handle()) is None or found is detector.ABSENT:
        assert time.monotonic() < deadline, "the detector did not start"
        time.sleep(0.5)
    return found


def test_sessions_requests_are_batched(gateway: Gateway, handle: Any, fresh_llm: OpenAIServer,
                                       digitraffic: DigitrafficServer) -> None:
    """Eight sessions detect at the same time: every one gets its own results and files, and
    the replica served them in batches of more than one request."""
    presets = ["C0150301", "C0150302", "C0160401", "C0166901", "C0166902", "C0168001",
               "C0168002", "C1250001", "C1250002", "C0450701"]
    async def create() -> list[str]:
        async with gateway.async_client() as c:
            responses = await asyncio.gather(*(c.post("/api/sessions") for _ in range(SESSIONS)))
        return [r.json()["session_id"] for r in responses]

    sids = asyncio.run(create())
    for i in range(SESSIONS):
        fresh_llm.script(f"detect batch {i}", [ToolCalls([
            Call("detect_objects", {"image_path": digitraffic.image_url(
                presets[(i + k) % len(presets)])}) for k in range(CALLS_PER_SESSION)])])
    handle.reset_stats.remote().result()

    async def chat(c: httpx.AsyncClient, i: int) -> dict:
        response = await c.post(f"/api/sessions/{sids[i]}/messages",
                                json={"content": f"detect batch {i}"})
        assert response.status_code == 200, response.text
        return response.json()

    async def all_sessions() -> list[dict]:
        async with gateway.async_client() as c:
            return await asyncio.gather(*(chat(c, i) for i in range(SESSIONS)))

    bodies = asyncio.run(all_sessions())
    stats = handle.stats.remote().result()
    with gateway.client() as c:
        for sid, body in zip(sids, bodies, strict=True):
            results = [json.loads(m["content"]) for m in body["messages"] if m["role"] == "tool"]
            assert len(results) == CALLS_PER_SESSION
            assert all(r["url"].startswith("files/detection_") and sid not in r["url"]
                       for r in results)
            files = {f["name"] for f in c.get(f"/api/sessions/{sid}/files").json()}
            assert files == {r["file"] for r in results}  # its own, and only those
    assert stats["images"] == SESSIONS * CALLS_PER_SESSION
    assert max(stats["batch_sizes"]) > 1, stats
    assert stats["batches"] < stats["images"]
    assert stats["device"] == "cpu" and stats["max_batch_size"] >= 8


def test_one_batch_mixes_sizes_and_isolates_a_bad_image(handle: Any) -> None:
    handle.reset_stats.remote().result()
    ok, png = cv2.imencode(".png", np.zeros((300, 400, 3), np.uint8))
    inputs = [jpeg_frame(640, 360), jpeg_frame(1280, 720), jpeg_frame(1920, 1080), png.tobytes(),
              b"definitely not an image", jpeg_frame(720, 1280)]
    responses = [handle.detect.remote(data, 0.25) for data in inputs]
    outcomes: list[Any] = []
    for response in responses:
        try:
            outcomes.append(response.result())
        except replica.DetectionError as exc:
            outcomes.append(exc)
    assert isinstance(outcomes[4], replica.DetectionError)
    assert "not an image" in str(outcomes[4])
    sizes = [(640, 360), (1280, 720), (1920, 1080), (400, 300), None, (720, 1280)]
    for outcome, size in zip(outcomes, sizes, strict=True):
        if size is None:
            continue
        assert (outcome["width"], outcome["height"]) == size
        picture = cv2.imdecode(np.frombuffer(outcome["image"], np.uint8), cv2.IMREAD_COLOR)
        assert picture.shape[:2] == (size[1], size[0])
        assert isinstance(outcome["counts"], dict) and isinstance(outcome["detections"], list)
    stats = handle.stats.remote().result()
    assert stats["images"] == len(inputs) and max(stats["batch_sizes"]) > 1, stats


def test_redeploy_with_same_settings_keeps_the_replica(gateway: Gateway, handle: Any) -> None:
    before = handle.stats.remote().result()["pid"]
    detector.deploy(gateway.settings)
    assert handle.stats.remote().result()["pid"] == before


