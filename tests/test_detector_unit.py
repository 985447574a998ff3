"""The detector's batch arithmetic without Ray or Serve: letterboxing, boxes back to the frame, NMS
and drawing (tests/test_detector.py runs it on Serve)."""

from __future__ import annotations

import pytest

from actors.detector import replica
from actors.detector.draw import draw
from tests.helpers import jpeg_frame


def test_batch_math_boxes_nms_and_drawing() -> None:
    """The replica's own steps, on the CPU in this process, with made-up network outputs:
    letterbox scale and offsets, per-image confidence, NMS by image and class, boxes in each
    frame's pixels, and boxes drawn."""
    import torch

    model = replica.Detector.func_or_class("yolov8n.yaml")
    frames = model._decode([jpeg_frame(1280, 720), jpeg_frame(640, 360)])
    batch, scale = model._letterbox(frames)
    assert tuple(batch.shape) == (2, 3, 384, 640)  # 640x360 fits in 640x384 (stride 32)
    assert scale.tolist() == [[0.5, 0.0, 12.0], [1.0, 0.0, 12.0]]  # ratio, left, top
    assert float(batch[0, 0, 0, 0]) == pytest.approx(114 / 255)  # grey padding above
    tall, _ = model._letterbox(model._decode([jpeg_frame(1280, 720), jpeg_frame(720, 1280)]))
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
