"""Boxes and labels drawn on a batch's frames with tensor indexing, on the frames' device (no
round trip through the CPU on a GPU). Runs inside the detector's replica (torch, OpenCV)."""

from __future__ import annotations

from typing import Any

MAX_DRAWN = 100  # boxes drawn per image (all are counted)
PALETTE = ("FF3838", "FF9D97", "FF701F", "FFB21D", "CFD231", "48F90A", "92CC17", "3DDB86",
           "1A9334", "00D4BB", "2C99A8", "00C2FF", "344593", "6473FF", "0018EC", "8438FF",
           "520085", "CB38FF", "FF95C8", "FF37C7")  # ultralytics' colours


def draw(frame: Any, boxes: Any, classes: Any, palette: Any, labels: LabelSprites) -> Any:
    """Box outlines and class labels, drawn with tensor indexing on the frame's device."""
    import torch

    if not len(boxes):
        return frame
    height, width = int(frame.shape[1]), int(frame.shape[2])
    boxes, classes = boxes[:MAX_DRAWN].flip(0), classes[:MAX_DRAWN].flip(0)  # best on top
    limit = torch.tensor([width - 1, height - 1, width - 1, height - 1], device=boxes.device)
    xyxy = boxes.round().long().clamp(min=0).minimum(limit)
    x1, y1, x2, y2 = xyxy.unbind(1)
    colors = palette[classes % len(palette)]
    thick = max(2, round(min(height, width) / 360))
    span = int((xyxy[:, 2:] - xyxy[:, :2]).max()) + 1
    step = torch.arange(span, device=boxes.device)
    band = torch.arange(thick, device=boxes.device)
    along_x = x1[:, None] + step  # (K, span)
    along_y = y1[:, None] + step
    ok_x = (step <= (x2 - x1)[:, None])[:, None, :]
    ok_y = (step <= (y2 - y1)[:, None])[:, None, :]
    rows = torch.cat([y1[:, None] + band, y2[:, None] - band], 1)[:, :, None]  # (K, 2t, 1)
    cols = torch.cat([x1[:, None] + band, x2[:, None] - band], 1)[:, :, None]
    shape = (len(xyxy), 2 * thick, span)
    ys = torch.cat([rows.expand(shape)[ok_x.expand(shape)],
                    along_y[:, None, :].expand(shape)[ok_y.expand(shape)]])
    xs = torch.cat([along_x[:, None, :].expand(shape)[ok_x.expand(shape)],
                    cols.expand(shape)[ok_y.expand(shape)]])
    which = torch.arange(len(xyxy), device=boxes.device)[:, None, None].expand(shape)
    owner = torch.cat([which[ok_x.expand(shape)], which[ok_y.expand(shape)]])
    keep = (ys >= 0) & (ys < height) & (xs >= 0) & (xs < width)
    frame[:, ys[keep], xs[keep]] = colors[owner[keep]].T
    labels.paste(frame, x1, y1, classes, colors)
    return frame


class LabelSprites:
    """Each class's label (its name, white on the class colour) rendered once with OpenCV,
    kept as pixel offsets, so labels are pasted with one indexing op per image."""

    def __init__(self, names: dict[int, str], palette: Any, device: Any) -> None:
        import cv2
        import numpy as np
        import torch

        sprites = []
        for index in range(max(names) + 1 if names else 0):
            text = names.get(index, str(index))
            (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
            mask = np.zeros((th + base + 4, tw + 4), np.uint8)
            cv2.putText(mask, text, (2, th + 2), cv2.FONT_HERSHEY_SIMPLEX, 0.5, 255, 1,
                        cv2.LINE_AA)
            sprites.append(mask)
        size = max((m.size for m in sprites), default=1)
        count = len(sprites)
        self.dy = torch.zeros((count, size), dtype=torch.long)
        self.dx = torch.zeros((count, size), dtype=torch.long)
        self.text = torch.zeros((count, size), dtype=torch.bool)
        self.valid = torch.zeros((count, size), dtype=torch.bool)
        self.height = torch.zeros(count, dtype=torch.long)
        for index, mask in enumerate(sprites):
            ys, xs = np.indices(mask.shape)
            n = mask.size
            self.dy[index, :n] = torch.from_numpy(ys.ravel())
            self.dx[index, :n] = torch.from_numpy(xs.ravel())
            self.text[index, :n] = torch.from_numpy(mask.ravel() > 127)
            self.valid[index, :n] = True
            self.height[index] = mask.shape[0]
        for name in ("dy", "dx", "text", "valid", "height"):
            setattr(self, name, getattr(self, name).to(device))

    def paste(self, frame: Any, x1: Any, y1: Any, classes: Any, colors: Any) -> None:
        import torch

        if not len(classes) or not self.valid.shape[0]:
            return
        height, width = int(frame.shape[1]), int(frame.shape[2])
        classes = classes.clamp(0, self.valid.shape[0] - 1)
        top = y1 - self.height[classes]
        top = torch.where(top < 0, y1, top)  # no room above the box: inside it
        ys = top[:, None] + self.dy[classes]
        xs = x1[:, None] + self.dx[classes]
        keep = self.valid[classes] & (ys < height) & (xs < width)
        white = torch.full_like(colors, 255)
        pixel = torch.where(self.text[classes][..., None], white[:, None, :],
                            colors[:, None, :])
        frame[:, ys[keep], xs[keep]] = pixel[keep].T
