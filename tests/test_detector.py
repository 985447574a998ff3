"""The detector deployment: batches across sessions, images of any size in one batch, one bad
image failing alone, the batch math, and a redeploy that changes nothing."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import cv2
import httpx
import numpy as np
import pytest

from actors.detector import client as detector
from actors.detector import replica
from actors.detector.draw import draw
from testing.standins import Call, DigitrafficServer, OpenAIServer, ToolCalls
from tests.conftest import Gateway, make_settings

SESSIONS = 8
CALLS_PER_SESSION = 2


@pytest.fixture(scope="module")
def gateway(ray_address: str, llm: OpenAIServer, digitraffic: DigitrafficServer,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    settings = make_settings(tmp_path_factory.mktemp("detector"), llm,
                             allow_hosts=["127.0.0.1"], weathercam_url=digitraffic.base_url,
                             spare_sessions=0)
    with Gateway(settings, deploy_detector=True) as gw:
        yield gw


@pytest.fixture(scope="module")
def handle(gateway: Gateway) -> Any:
    """The deployment's handle, once the gateway's background deploy has finished."""
    deadline = time.monotonic() + 180
    while (found := detector._ready_handle()) is None or found is detector.ABSENT:
        assert time.monotonic() < deadline, "the detector did not start"
        time.sleep(0.5)
    return found


def jpeg(width: int, height: int, bgr: tuple[int, int, int] = (60, 130, 90)) -> bytes:
    frame = np.full((height, width, 3), bgr, np.uint8)
    cv2.rectangle(frame, (width // 4, height // 4), (width // 2, height // 2), (0, 230, 255), -1)
    ok, data = cv2.imencode(".jpg", frame)
    assert ok
    return data.tobytes()


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
    inputs = [jpeg(640, 360), jpeg(1280, 720), jpeg(1920, 1080), png.tobytes(),
              b"definitely not an image", jpeg(720, 1280)]
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


def test_batch_math_boxes_nms_and_drawing() -> None:
    """The replica's own steps, on the CPU in this process, with made-up network outputs:
    letterbox scale and offsets, per-image confidence, NMS by image and class, boxes in each
    frame's pixels, and boxes drawn."""
    import torch

    model = replica.Detector.func_or_class("yolov8n.yaml")
    frames = model._decode([jpeg(1280, 720), jpeg(640, 360)])
    batch, scale = model._letterbox(frames)
    assert tuple(batch.shape) == (2, 3, 384, 640)  # 640x360 fits in 640x384 (stride 32)
    assert scale.tolist() == [[0.5, 0.0, 12.0], [1.0, 0.0, 12.0]]  # ratio, left, top
    assert float(batch[0, 0, 0, 0]) == pytest.approx(114 / 255)  # grey padding above
    tall, _ = model._letterbox(model._decode([jpeg(1280, 720), jpeg(720, 1280)]))
    assert tuple(tall.shape) == (2, 3, 640, 640)  # landscape and portrait: both fit

    def at(box: list[float], ratio: float) -> torch.Tensor:  # frame pixels -> (cx, cy, w, h)
        x1, y1, x2, y2 = (v * ratio for v in box)
        return torch.tensor([(x1 + x2) / 2, (y1 + y2) / 2 + 12, x2 - x1, y2 - y1])

    classes = len(model._names)
    preds = torch.zeros(2, 4 + classes, 6)
    preds[0, :4, 0], preds[0, 4, 0] = at([540, 310, 740, 410], 0.5), 0.9
    preds[0, :4, 1], preds[0, 4, 1] = at([544, 312, 744, 412], 0.5), 0.8  # the same object
    preds[0, :4, 2], preds[0, 4 + 2, 2] = at([544, 312, 744, 412], 0.5), 0.7  # other class
    preds[0, :4, 3], preds[0, 4 + 3, 3] = at([100, 100, 180, 180], 0.5), 0.2  # too unsure
    preds[1, :4, 0], preds[1, 4 + 5, 0] = at([0, 90, 640, 270], 1.0), 0.95
    preds[1, :4, 1], preds[1, 4 + 7, 1] = at([90, 290, 110, 310], 1.0), 0.3  # < its 0.5
    found = model._postprocess(preds, torch.tensor([0.25, 0.5]), scale)
    boxes, scores, labels = found[0]
    assert labels.tolist() == [0, 2] and scores.tolist() == pytest.approx([0.9, 0.7])
    assert boxes[0].tolist() == pytest.approx([540, 310, 740, 410])
    boxes, scores, labels = found[1]
    assert labels.tolist() == [5] and boxes[0].tolist() == pytest.approx([0, 90, 640, 270])
    before = frames[0].clone()
    drawn = draw(frames[0], *found[0][::2], model._palette, model._labels)
    changed = (drawn != before).any(0)
    assert bool(changed[310, 540:741].all()) and bool(changed[310:411, 740].all())
    assert not bool(changed[360, 640])  # inside the box: untouched
    result = model._result(drawn, *found[0], b"jpeg")
    assert result["counts"] == {model._names[0]: 1, model._names[2]: 1}
